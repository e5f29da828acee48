import sys

from benchmarks.harness import command

sys.exit(command())
