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


def main(argv: list[str]) -> int:
    """Run one worker; the arguments are the parent's options (JSON), an index, a deadline (JSON)
    and the parent's pid. Torch and Optuna are imported once the handlers are in, torch with the
    signals held (`import_torch_held`): a Ctrl-C while workers start ends each as 130, no traceback."""
    from purestep.cli._app import ending_from_signal, import_torch_held, install_signal_handlers
    from purestep.core.errors import PurestepError, one_line

    install_signal_handlers()
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    index = int(argv[1])
    try:
        _die_with(int(argv[3]))
        import_torch_held(["tune"])  # a worker's share of `purestep tune`
        from purestep.search.tune import TuneOptions, run_worker

        run_worker(TuneOptions(**json.loads(argv[0])), index, json.loads(argv[2]))
    except KeyboardInterrupt:
        ending_from_signal()
        return 130
    except SystemExit as e:
        ending_from_signal()
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


PR_SET_PDEATHSIG = 1
"""prctl(2)'s option: the signal Linux sends a process when the thread that started it ends."""


def _die_with(parent: int) -> None:
    """Be sent SIGTERM when the parent process ends, on Linux (elsewhere, nothing): a parent killed
    with SIGKILL cannot pass a signal on, and its workers ran on. Terminated, a worker fails its
    running trial and exits 143. A parent already gone is the same signal, now."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):  # no libc to ask: the heartbeat fails its trials later
            return
    if os.getppid() != parent:
        raise SystemExit(143)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
