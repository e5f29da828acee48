"""`python -m purestep`: the command line."""

from purestep.cli import main

main()
