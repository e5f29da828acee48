"""A worker process of `purestep tune --workers K`: `python -m purestep.search.worker OPTIONS INDEX DEADLINE`.

It joins the study the parent prepared and runs trials until the study is full. Exit codes
follow the CLI: 0 done, 1 a failure (one line on stderr), 130 SIGINT, 143 SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback

from purestep.core.errors import PurestepError, one_line, raise_for_signal
from purestep.search.tune import TuneOptions, run_worker


def main(argv: list[str]) -> int:
    """Run one worker; the arguments are the parent's options (JSON), an index and a deadline (JSON)."""
    signal.signal(signal.SIGTERM, raise_for_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, raise_for_signal)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    options = TuneOptions(**json.loads(argv[0]))
    index = int(argv[1])
    deadline = json.loads(argv[2])
    try:
        run_worker(options, index, deadline)
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except (PurestepError, ValueError, OSError) as e:
        print(f"Error: worker {index}: {one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: one line here too; the traceback with PURESTEP_DEBUG=1
        if os.environ.get("PURESTEP_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        print(f"Error: worker {index}: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
