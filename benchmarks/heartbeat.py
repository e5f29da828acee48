"""How late a heartbeat lands on SQLite while other processes use the study hard.

    python -m benchmarks.heartbeat --seconds 30 --rounds 2
    python -m benchmarks.heartbeat --seconds 30 --rounds 2 --trials 16   # a pool's 16 trials
    python -m benchmarks.heartbeat --compile     # beside a cold torch.compile in the same process
    python -m benchmarks.heartbeat --lookup      # what the public trial-ID lookup costs a trial

One live trial is stamped every second by `purestep.search.heartbeat.Heartbeat` while two
other processes ask, report 20 steps, read all trials after each report, and tell, as fast
as they can (far harder than real workers, which report once an epoch). Two storages,
alternated round by round on a fresh database each time: Optuna's plain `RDBStorage` (SQLite's
default rollback journal: a reader holds up a committing writer) and purestep's (WAL: readers
never hold up a writer). Prints the longest stamp write, the longest gap between two stamps,
the beats counted missed, and how many trials the busy processes finished. With `--trials K`,
K running trials are stamped (a pool's; all by the process's one heartbeat thread, one write
after another), and the figures are the worst over them.

With `--compile` there are no busy processes: the same process compiles the tutorial's MLP step
with a cold Inductor cache and trains 3 epochs (1 thread) while the trial is stamped, which
shows what the GIL costs the beat thread during a compile.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = """
import sys, time, warnings, optuna
from purestep.search.storage import HeartbeatRDBStorage, _engine_kwargs
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.simplefilter("ignore")
url, variant, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
if variant == "wal":
    storage = HeartbeatRDBStorage(url, engine_kwargs=_engine_kwargs("sqlite"), interval=1, grace=3)
else:
    storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs("sqlite"))
study = optuna.load_study(study_name="s", storage=storage)
end, done = time.monotonic() + seconds, 0
while time.monotonic() < end:
    trial = study.ask()
    for step in range(20):
        trial.report(0.5, step)
        study.get_trials(deepcopy=False)
    study.tell(trial, 1.0)
    done += 1
print(done)
"""


def one_round(variant: str, seconds: float, folder: Path, trials: int = 1) -> dict[str, float]:
    """Stamp `trials` trials for `seconds` beside two busy processes; the figures of that round."""
    import optuna

    from purestep.search.heartbeat import Heartbeat, trial_id
    from purestep.search.storage import HeartbeatRDBStorage, _engine_kwargs

    url = f"sqlite:///{folder / f'{variant}-{time.monotonic_ns()}.db'}"
    if variant == "wal":
        storage = HeartbeatRDBStorage(
            url, engine_kwargs=_engine_kwargs("sqlite"), interval=1, grace=3, wal=True
        )
    else:
        with_heartbeat = {"heartbeat_interval": 1, "grace_period": 3}
        storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs("sqlite"), **with_heartbeat)
    study = optuna.create_study(study_name="s", storage=storage)
    running = [study.ask() for _ in range(trials)]
    stamps: dict[int, list[float]] = {}
    writes: list[float] = []
    record = storage.record_heartbeat

    def timed(trial_id: int) -> None:
        began = time.monotonic()
        record(trial_id)
        stamps.setdefault(trial_id, []).append(time.monotonic())
        writes.append(stamps[trial_id][-1] - began)

    storage.record_heartbeat = timed  # type: ignore[method-assign]
    busy = [
        subprocess.Popen(
            [sys.executable, "-c", BUSY, url, variant, str(seconds)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    beats = [Heartbeat(storage, trial_id(trial), trial.number, 1).start() for trial in running]
    outs = [p.communicate()[0] for p in busy]
    for beat in beats:
        beat.stop()
    gaps = [b - a for each in stamps.values() for a, b in zip(each, each[1:])]
    return {
        "write": max(writes),
        "gap": max(gaps),
        "missed": sum(beat.missed for beat in beats),
        "busy trials": sum(int(out.split()[-1]) for out in outs),
    }


def beside_a_compile(folder: Path) -> dict[str, float]:
    """Stamp one trial while this process compiles (cold cache) and trains; the figures."""
    import os

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor")
    import optuna
    import torch

    from purestep.search.heartbeat import Heartbeat, trial_id
    from purestep.search.objective import TrialConfig, train
    from purestep.search.storage import HeartbeatRDBStorage, _engine_kwargs

    url = f"sqlite:///{folder / 'compile.db'}"
    storage = HeartbeatRDBStorage(url, engine_kwargs=_engine_kwargs("sqlite"), interval=1, grace=3, wal=True)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    stamps: list[float] = []
    record = storage.record_heartbeat

    def timed(trial_id: int) -> None:
        record(trial_id)
        stamps.append(time.monotonic())

    storage.record_heartbeat = timed  # type: ignore[method-assign]
    beat = Heartbeat(storage, trial_id(trial), trial.number, 1).start()
    torch.set_num_threads(1)
    x, y = torch.rand(4096, 784), torch.randint(0, 10, (4096,))
    began = time.monotonic()
    config = TrialConfig(momentum=0.9)
    train(config, x, y, (x[:512], y[:512]), in_features=784, classes=10, epochs=3, seed=0, compiled=True)
    seconds = time.monotonic() - began
    beat.stop()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"seconds": seconds, "beats": len(stamps), "gap": max(gaps), "missed": beat.missed}


def lookup_costs(folder: Path, calls: int = 200) -> dict[str, float]:
    """Milliseconds per call: the public trial-ID lookup, the private attribute, a stale check."""
    import optuna

    from purestep.search.heartbeat import fail_stale_trials, trial_id
    from purestep.search.storage import HeartbeatRDBStorage, _engine_kwargs

    url = f"sqlite:///{folder / 'lookup.db'}"
    storage = HeartbeatRDBStorage(url, engine_kwargs=_engine_kwargs("sqlite"), interval=1, grace=3, wal=True)
    study = optuna.create_study(study_name="s", storage=storage)
    for _ in range(50):
        study.tell(study.ask(), 1.0)
    trial = study.ask()
    ways = {
        "trial_id(trial), public": lambda: trial_id(trial),
        "trial._trial_id, private": lambda: trial._trial_id,
        "fail_stale_trials(study)": lambda: fail_stale_trials(study),
    }
    costs = {}
    for name, way in ways.items():
        began = time.perf_counter()
        for _ in range(calls):
            way()
        costs[name] = (time.perf_counter() - began) / calls * 1e3
    return costs


def main(argv: list[str] | None = None) -> None:
    """Alternate the two storages for `--rounds` rounds and print a Markdown table."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")  # Optuna's experimental-feature and ask-outside-optimize warnings
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=1, help="running trials stamped at once")
    parser.add_argument("--compile", action="store_true", help="beside a cold compile instead")
    parser.add_argument("--lookup", action="store_true", help="the cost of the public trial-ID lookup")
    args = parser.parse_args(argv)
    if args.lookup:
        with tempfile.TemporaryDirectory() as folder:
            for name, ms in lookup_costs(Path(folder)).items():
                print(f"{name}: {ms:.3f} ms a call")
        return
    if args.compile:
        with tempfile.TemporaryDirectory() as folder:
            f = beside_a_compile(Path(folder))
        print(f"compile + 3 epochs: {f['seconds']:.1f} s, {f['beats']} beats, ", end="")
        print(f"longest gap between stamps {f['gap']:.2f} s, {f['missed']} missed")
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            for variant in ("rollback", "wal"):
                rows.append((r + 1, variant, one_round(variant, args.seconds, Path(folder), args.trials)))
    print("| round | SQLite journal | longest stamp write (s) | longest gap (s) | missed | busy trials |")
    print("|---|---|---|---|---|---|")
    for r, variant, f in rows:
        print(f"| {r} | {variant} | {f['write']:.2f} | {f['gap']:.2f} | {f['missed']} | {f['busy trials']} |")


if __name__ == "__main__":
    main()
