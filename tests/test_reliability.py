"""Reliability with real processes and a real database: concurrent `purestep tune` workers on one
study in PostgreSQL and in a journal file, a worker killed with SIGKILL (heartbeat, then a retry),
a worker paused past the grace period (SIGSTOP, SIGCONT), SIGTERM, and database URLs that cannot
be used.

The PostgreSQL tests need a server: `PURESTEP_TEST_POSTGRES` is the URL of a role that may create
databases (`.ci/run` starts one with `.ci/postgres.sh`); each test creates its own database and drops it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pickle
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from test_tune_cli import FAST, PURESTEP, finished, invoke, one_line_error, one_line_error_tail, trials

from purestep import load_dataset
from purestep.search import runner
from purestep.search.heartbeat import fail_stale_trials, start_heartbeat
from purestep.search.objective import ConfigError, make_splits
from purestep.search.runner import run_trial_batches, run_trials
from purestep.search.space import parse_space
from purestep.search.storage import HeartbeatRDBStorage, open_storage, parse_storage

N = 6
WORKERS = 3


def _slow(out: Path) -> list[str]:
    """Trials long enough to catch mid-way and signal before they end, whatever their sampled
    optimizer: 40 epochs at batch 32 (about 1440 steps, a second or more on one thread, where a
    watcher polls every 0.2 s); a sampled batch of 256 left a 20-epoch trial 0.1-0.6 s, less than
    a loaded machine takes to see it and signal."""
    space = out / "slow.toml"
    space.write_text("[batch_size]\nvalue = 32\n")
    return ["--epochs", "40", "--pruner", "none", "--space", str(space)]


# Seconds: short, so that a dead worker's trial is found within a test; the grace is 3 beats.
HEARTBEAT = {"PURESTEP_HEARTBEAT_INTERVAL": "1", "PURESTEP_HEARTBEAT_GRACE": "3"}
GRACE = int(HEARTBEAT["PURESTEP_HEARTBEAT_GRACE"])


def _tune(storage: str, out: Path, *args: str) -> list[str]:
    return [*PURESTEP, *FAST, "--impl", "eager", "--no-final", "--storage", storage, "--out", str(out), *args]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _watch(storage: str) -> Callable[[], list[FrozenTrial]]:
    """The study's trials, read through one storage object: opening one per read (`trials`) costs
    ~65 ms of CPU, and a test polling that way takes a core from the workers it watches."""
    opened = optuna.storages.RDBStorage(storage)
    return lambda: optuna.load_study(study_name="purestep-digits", storage=opened).get_trials()


def _left_open(ts: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.fixture
def postgres() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    base = os.environ.get("PURESTEP_TEST_POSTGRES")
    if not base:
        pytest.skip("PURESTEP_TEST_POSTGRES is unset: no PostgreSQL server to test against (.ci/postgres.sh)")
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"purestep_test_{uuid.uuid4().hex[:12]}"
    admin = make_url(base).set(drivername="postgresql")
    dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return [r[0] for r in rows]


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_three_worker_processes_on_one_study_stop_at_exactly_n(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    storage = request.getfixturevalue("postgres") if kind == "postgresql" else f"journal:{tmp_path / 'j.log'}"
    cmd = _tune(storage, tmp_path, "--n-trials", str(N))
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for _ in range(WORKERS)
    ]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    # Every worker's stderr on a failure: the one that fails is often not the one that went wrong.
    errs = "\n".join(f"worker {i} exit {p.returncode}: {e}" for i, (p, (_, e)) in enumerate(zip(procs, outs)))
    assert all(p.returncode == 0 for p in procs) and "Traceback" not in errs, errs
    ts = trials(storage)
    done = finished(ts)
    assert len(done) == N and len({t.number for t in done}) == N
    assert len({t.number for t in ts}) == len(ts)
    assert not _left_open(ts)
    assert all(t.user_attrs.get("reason", "").startswith("surplus") for t in ts if t.state == TrialState.FAIL)


def _mid_trial(storage: str) -> Callable[[], bool]:
    watch = _watch(storage)

    def check() -> bool:
        ts = watch()
        running = [t for t in ts if t.state == TrialState.RUNNING]
        return len(finished(ts)) >= 1 and bool(running) and len(running[0].intermediate_values) >= 2

    return check


def _start_and_catch_mid_trial(cmd: list[str], storage: str, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    ready, _, _ = select.select([proc.stderr], [], [], 240)
    assert ready and "(new study)" in proc.stderr.readline()  # the study exists from here on
    end = time.monotonic() + 240
    check = _mid_trial(storage)
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"tune ended early with {proc.returncode}: {proc.stderr.read()}")
        assert time.monotonic() < end, "timed out waiting for a trial mid-way"
        time.sleep(0.2)
    return proc


def test_a_worker_killed_mid_trial_is_failed_by_heartbeat_and_its_trial_retried(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On PostgreSQL when there is a server to test against, else on SQLite (the same storage class)."""
    if os.environ.get("PURESTEP_TEST_POSTGRES"):
        storage = request.getfixturevalue("postgres")
    else:
        storage = f"sqlite:///{tmp_path / 's.db'}"
    n = 2  # one finished before the kill, the retry after it
    cmd = _tune(storage, tmp_path, "--n-trials", str(n), *_slow(tmp_path))
    proc = _start_and_catch_mid_trial(cmd, storage, _env(**HEARTBEAT))
    try:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    (dead,) = [t for t in trials(storage) if t.state == TrialState.RUNNING]  # nobody failed it: it died
    time.sleep(GRACE + 2)  # its last stamp is now older than the grace (+1 s: SQLite stamps whole seconds)
    assert trials(storage)[dead.number].state == TrialState.RUNNING  # stale is failed only by a worker

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(**HEARTBEAT))
    assert rerun.returncode == 0, rerun.stderr
    ts = trials(storage)
    assert ts[dead.number].state == TrialState.FAIL
    (retry,) = [t for t in ts if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.params == dead.params and retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retry.number == dead.number + 1  # the next worker ran the retry first
    assert len(finished(ts)) == n and not _left_open(ts)


_BUSY = """
import sys, time, optuna
from pathlib import Path
from purestep.search.storage import open_storage, parse_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="s", storage=open_storage(parse_storage(sys.argv[1]), create=False))
print("ready", flush=True)
stop, done = Path(sys.argv[2]), 0
while not stop.exists():
    trial = study.ask()
    for step in range(20):
        trial.report(0.5, step)
        study.get_trials(deepcopy=False)
        done += 1
    study.tell(trial, 1.0)
print(done, flush=True)
"""


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_live_trial_keeps_its_heartbeat_and_is_never_stale(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Two grace periods with two other processes writing and reading the study as fast as they can
    (what held a SQLite heartbeat up for over a second in rollback-journal mode) and a worker
    failing stale trials every half second: the live trial is never failed."""
    for name, value in HEARTBEAT.items():
        monkeypatch.setenv(name, value)
    url = request.getfixturevalue("postgres") if kind == "postgresql" else f"sqlite:///{tmp_path / 's.db'}"
    rdb = open_storage(parse_storage(url), create=True)
    assert isinstance(rdb, HeartbeatRDBStorage)
    study = optuna.create_study(storage=rdb, study_name="s")
    stop = tmp_path / "stop"
    busy = [
        subprocess.Popen([sys.executable, "-c", _BUSY, url, str(stop)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        for p in busy:  # started (imports take seconds on a loaded machine) and using the study
            ready, _, _ = select.select([p.stdout], [], [], 240)
            assert ready and p.stdout.readline().strip() == "ready"
        trial = study.ask()
        beat = start_heartbeat(trial)
        assert beat is not None
        end = time.monotonic() + 2 * GRACE
        while time.monotonic() < end:
            fail_stale_trials(study)
            assert study.get_trials(deepcopy=False)[trial.number].state == TrialState.RUNNING
            time.sleep(0.5)
        stop.touch()
        outs = [p.communicate(timeout=120)[0] for p in busy]
    finally:
        stop.touch()
        for p in busy:
            p.kill()
    assert all(p.returncode == 0 for p in busy)
    assert all(int(out.split()[-1]) > 0 for out in outs)  # both wrote to the study meanwhile
    beat.stop()
    study.tell(trial, 1.0)
    assert study.get_trials(deepcopy=False)[trial.number].state == TrialState.COMPLETE
    clone = pickle.loads(pickle.dumps(rdb))  # e.g. to a process pool
    assert clone.get_trial(trial._trial_id).state == TrialState.COMPLETE


def test_one_thread_stamps_every_trial_a_process_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight trials running at once (a pool) are stamped by one heartbeat thread, each again and
    again; a stopped one is no longer stamped; the thread ends with the last."""
    for name, value in HEARTBEAT.items():
        monkeypatch.setenv(name, value)
    storage_url = parse_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=open_storage(storage_url, create=True))
    trials = [study.ask() for _ in range(8)]
    storage = trials[0].storage
    stamps: collections.Counter[int] = collections.Counter()
    record = storage.record_heartbeat

    def counted(trial_id: int) -> None:
        record(trial_id)
        stamps[trial_id] += 1

    monkeypatch.setattr(storage, "record_heartbeat", counted)

    def beaters() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "purestep-heartbeat"]

    assert not beaters()
    beats = [start_heartbeat(trial) for trial in trials]
    assert all(beat is not None for beat in beats) and len(beaters()) == 1
    _poll(lambda: len(stamps) == 8 and min(stamps.values()) >= 3, 60, "every trial stamped 3 times")
    stopped = beats[0]
    stopped.stop()
    after_stop = stamps[stopped.trial_id]
    others = {b.trial_id: stamps[b.trial_id] for b in beats[1:]}
    _poll(lambda: all(stamps[i] >= n + 2 for i, n in others.items()), 60, "the others stamped twice more")
    assert stamps[stopped.trial_id] <= after_stop + 1  # at most a write already under way
    assert len(beaters()) == 1
    for beat in beats[1:]:
        beat.stop()
    _poll(lambda: not beaters(), 30, "the heartbeat thread to end")
    for trial in trials:
        study.tell(trial, 1.0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_stamps_its_own_trials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked while the parent stamps a trial has no heartbeat thread (fork copies only the
    forking thread): a trial it starts gets a thread of its own, and is stamped."""
    for name, value in HEARTBEAT.items():
        monkeypatch.setenv(name, value)
    storage_url = parse_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=open_storage(storage_url, create=True))
    parents = study.ask()
    beat = start_heartbeat(parents)
    assert beat is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: fork with threads running
        pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its trial has a running thread that stamps it
        code = 1
        try:
            reopened = open_storage(storage_url, create=False)
            child = optuna.load_study(study_name=study.study_name, storage=reopened)
            trial = child.ask()
            stamps: list[int] = []
            record = trial.storage.record_heartbeat
            trial.storage.record_heartbeat = lambda i: (record(i), stamps.append(i))  # type: ignore[method-assign]
            mine = start_heartbeat(trial)
            time.sleep(3.5)
            running = [t for t in threading.enumerate() if t.name == "purestep-heartbeat"]
            code = 0 if len(running) == 1 and len(stamps) >= 3 else 2
            assert mine is not None
            mine.stop()
            child.tell(trial, 1.0)
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    if done[0] == 0:  # stuck (on a lock another thread held at the fork): stop it, fail below
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    beat.stop()
    study.tell(parents, 1.0)
    assert done[0] == pid, "the forked child hung"
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_a_beat_held_up_past_its_interval_is_counted_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another connection holds SQLite's write lock for 2.5 intervals: the beat due meanwhile lands
    late, and is logged at debug level and counted."""
    for name, value in HEARTBEAT.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG, logger="purestep.search.heartbeat")
    path = tmp_path / "s.db"
    study = optuna.create_study(storage=open_storage(parse_storage(f"sqlite:///{path}"), create=True))
    trial = study.ask()
    beat = start_heartbeat(trial)
    assert beat is not None and beat.missed == 0
    holder = sqlite3.connect(path, isolation_level=None)
    assert holder.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # a new file: readers never block
    holder.execute("BEGIN IMMEDIATE")
    time.sleep(2.5)
    holder.execute("ROLLBACK")
    holder.close()
    _poll(lambda: beat.missed >= 1, 10, "the late beat to be counted")
    beat.stop()
    assert any(f"trial {trial.number}: heartbeat missed" in r.getMessage() for r in caplog.records)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "purestep.search.heartbeat")
    study.tell(trial, 1.0)
    assert study.get_trials()[0].state == TrialState.COMPLETE


@pytest.mark.parametrize("write", ["report", "user attribute"])
def test_on_sqlite_a_write_checks_the_trial_is_running_in_the_same_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    """Another worker fails the trial as stale just after this one's report (or user attribute) has
    read that the trial is running: the other waits until the write has committed, so no write
    lands on a trial already failed (SQLite used to run the read outside the write's transaction)."""
    url = parse_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=open_storage(url, create=True))
    trial = study.ask()
    other = open_storage(url, create=False)  # another worker's connection
    trial_id = other.get_trial_id_from_study_id_trial_number(
        other.get_study_id_from_name(study.study_name), trial.number
    )
    failing = threading.Thread(target=lambda: other.set_trial_state_values(trial_id, TrialState.FAIL))
    check = HeartbeatRDBStorage.check_trial_is_updatable
    held_up: list[bool] = []

    def then_fail_it(self: HeartbeatRDBStorage, checked_id: int, state: TrialState) -> None:
        check(self, checked_id, state)
        if not held_up:  # the write's check passed; the other worker fails the trial now
            failing.start()
            failing.join(2)
            held_up.append(failing.is_alive())

    monkeypatch.setattr(HeartbeatRDBStorage, "check_trial_is_updatable", then_fail_it)
    if write == "report":
        trial.report(0.5, 1)
    else:
        trial.set_user_attr("val_loss", 0.5)
    failing.join(60)
    assert held_up == [True]  # the fail waited for the write's transaction
    assert not failing.is_alive() and other.get_trial(trial_id).state == TrialState.FAIL
    with pytest.raises(RuntimeError):  # and a write after the fail is refused
        trial.report(0.4, 2)


@pytest.mark.parametrize("where", ["report", "tell"])
def test_a_trial_failed_by_another_worker_is_dropped_and_counted_once(tmp_path: Path, where: str) -> None:
    """What a worker paused past the grace period finds when it resumes: its trial was failed and a
    retry queued (here by a second handle on the study, as another worker's stale check does). It
    stops that trial at its next report or at its tell, does not count it, and goes on: the retry
    and the other trials make exactly n."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=open_storage(parse_storage(url), create=True), study_name="s")
    other = optuna.load_study(study_name="s", storage=open_storage(parse_storage(url), create=False))
    seen: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        seen.append(trial.number)
        if trial.number == 0:
            other.tell(0, state=TrialState.FAIL)
            other.enqueue_trial({"x": x})
            if where == "report":
                trial.report(x, 1)
                raise AssertionError("the report of a failed trial went through")
        return x

    assert run_trials(study, objective, n_trials=3) == 3
    ts = study.get_trials()
    assert seen == [0, 1, 2, 3] and ts[0].state == TrialState.FAIL and ts[0].value is None
    assert ts[0].intermediate_values == {}
    assert [t.state for t in ts[1:]] == [TrialState.COMPLETE] * 3 and ts[1].params == ts[0].params


_STABLE = (
    "[batch_size]\nvalue = 128\n[sgd_lr]\nhigh = 0.1\n[adam_lr]\nhigh = 0.01\n[rmsprop_lr]\nhigh = 0.001\n"
)
"""A space whose trials take one pool step an epoch on digits and never diverge, so each reports."""


def _pooled(study: optuna.Study, n: int, epochs: int = 1) -> int:
    """`tune --batch 2` on digits in this process: `n` trials of `epochs` epochs, 2 at a time."""
    splits = make_splits(load_dataset("digits"), 0.2, 0)
    space = parse_space(_STABLE)
    return run_trial_batches(study, space, splits, batch=2, epochs=epochs, seed=0, compiled=False, n_trials=n)


@pytest.mark.parametrize(
    ("pooled", "ending"),
    [(False, "complete"), (False, "pruned"), (False, "rejected"), (True, "complete"), (True, "rejected")],
    ids=["complete", "pruned", "rejected", "pooled-complete", "pooled-rejected"],
)
@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupt_between_a_trials_end_and_its_tell_leaves_no_trial_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pooled: bool, ending: str, when: str
) -> None:
    """SIGINT after a trial ended (a result, a prune, settings the optimizer rejects) and before
    the tell has held signals back (CPython runs a handler at a call, such as the tell's entry):
    the trial is failed with the reason and the interrupt goes on, so nothing is left RUNNING on
    a journal, where no heartbeat would ever fail it. Landing just after the tell, it leaves the
    trial as told, told once."""
    path = tmp_path / "study.log"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(storage=storage, direction="maximize", pruner=optuna.pruners.NopPruner())
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "rejected": TrialState.FAIL}
    state = states[ending]
    tell = runner._tell
    calls: list[TrialState] = []

    def interrupted(study: optuna.Study, trial: optuna.Trial, shield, told: TrialState, *args, **kwargs):
        calls.append(told)
        first = told == state and calls.count(state) == 1
        if first and when == "before":
            raise KeyboardInterrupt
        result = tell(study, trial, shield, told, *args, **kwargs)
        if first:
            raise KeyboardInterrupt
        return result

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if ending == "pruned":
            raise optuna.TrialPruned("pruned here")
        if ending == "rejected":
            raise ConfigError("rejected here")
        return x

    def rejected(*args, **kwargs):
        raise ConfigError("rejected here")

    monkeypatch.setattr(runner, "_tell", interrupted)
    if ending == "rejected" and pooled:
        monkeypatch.setattr(runner, "suggest_config", rejected)
    with pytest.raises(KeyboardInterrupt):
        if pooled:
            _pooled(study, 4)
        else:
            run_trials(study, objective, n_trials=4)
    ts = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    assert not _left_open(ts)
    first = ts[0]  # the first to end: in the pool, trials 0 and 1 end at the same step, 0 first
    if when == "before":
        assert first.state == TrialState.FAIL and first.user_attrs["reason"] == "interrupted (SIGINT)"
    else:
        assert first.state == state and first.user_attrs.get("reason") == {
            "complete": None, "pruned": "pruned here", "rejected": "rejected here"
        }[ending]  # fmt: skip
    assert first.value is None or (ending, when) == ("complete", "after")
    assert all(t.user_attrs["reason"] == "interrupted (SIGINT)" for t in ts[1:])  # the pool's other
    assert len(ts) == (2 if (pooled, ending) == (True, "complete") else 1)  # none asked after


@pytest.mark.parametrize("which", ["first", "last"])
def test_a_pooled_trial_failed_by_another_worker_is_dropped_and_its_retry_run_in_its_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, which: str
) -> None:
    """`test_a_trial_failed_by_another_worker_is_dropped_and_counted_once` for `tune --batch 2`, on
    SQLite with heartbeats: another worker fails a pooled trial as stale just before its report
    and queues the retry (as Optuna's stale check does). The pool drops that trial and refills the
    slot, with the retry first, also when the trial was the study's last to start (the pool
    had stopped asking: the study was full until the fail): exactly n finished."""
    for name, value in HEARTBEAT.items():
        monkeypatch.setenv(name, value)
    url = parse_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(
        storage=open_storage(url, create=True),
        study_name="s",
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.NopPruner(),
    )
    other = open_storage(url, create=False)  # another worker's
    n = 3
    target = 0 if which == "first" else n - 1  # trials 0 and 1 end together; 2 starts the study full
    report = runner.pruned_reason

    def failed_elsewhere_first(trial: optuna.Trial, *args, **kwargs):
        if trial.number == target and trial.storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            assert other.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            retry = getattr(other, "get_heartbeat_stale_trial_callback", other.get_failed_trial_callback)()
            retry(optuna.load_study(study_name="s", storage=other), other.get_trial(trial._trial_id))
        return report(trial, *args, **kwargs)

    monkeypatch.setattr(runner, "pruned_reason", failed_elsewhere_first)
    assert _pooled(study, n, epochs=2) == n
    ts = study.get_trials()
    assert len(finished(ts)) == n and not _left_open(ts)
    dropped = ts[target]
    assert dropped.state == TrialState.FAIL and dropped.value is None and dropped.intermediate_values == {}
    (retry,) = [t for t in ts if t.system_attrs.get("failed_trial") == target]
    assert retry.params == dropped.params and retry.state == TrialState.COMPLETE
    assert [t.number for t in ts if t.state == TrialState.FAIL] == [target]
    assert f"trial {target} was failed by another worker" in caplog.text


def _write_locked(storage: str) -> bool:
    """Whether some connection holds the database's write lock or an open transaction (a paused
    process caught in the middle of a write would hold up every other worker's writes)."""
    if storage.startswith("sqlite:///"):
        conn = sqlite3.connect(storage.removeprefix("sqlite:///"), timeout=0.1, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(storage, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')"
        ).fetchone()
        return bool(row and row[0])


def _stop(proc: subprocess.Popen) -> None:
    """SIGSTOP `proc` and wait until every thread of it has stopped: the signal is delivered
    asynchronously, and a thread still running after `kill` returns could begin a write."""
    proc.send_signal(signal.SIGSTOP)
    tasks = Path(f"/proc/{proc.pid}/task")
    end = time.monotonic() + 30
    while tasks.is_dir() and time.monotonic() < end:
        states = []
        for stat in tasks.glob("*/stat"):
            try:
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue
        if states and all(state in ("T", "t") for state in states):
            return
        time.sleep(0.01)
    if not tasks.is_dir():
        time.sleep(0.5)  # no /proc here: give the signal time to land


def _pause_between_writes(proc: subprocess.Popen, storage: str) -> None:
    end = time.monotonic() + 60
    while True:
        _stop(proc)
        if not _write_locked(storage):
            return
        proc.send_signal(signal.SIGCONT)
        assert time.monotonic() < end, "the worker never paused outside a write"
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_worker_paused_past_the_grace_drops_its_trial_and_the_study_stays_consistent(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    """SIGSTOP a worker mid-trial until a second worker has failed its trial as stale and started
    the retry, then SIGCONT: the first notices at its next report, stops that trial, drops its
    result (nothing reported after the pause), and both go on to exactly n finished trials."""
    storage = (
        request.getfixturevalue("postgres") if kind == "postgresql" else f"sqlite:///{tmp_path / 's.db'}"
    )
    n = 3
    env = _env(**HEARTBEAT)
    first = _start_and_catch_mid_trial(
        _tune(storage, tmp_path / "a", "--n-trials", str(n), *_slow(tmp_path)), storage, env
    )
    second = None
    try:
        _pause_between_writes(first, storage)
        watch = _watch(storage)
        (paused,) = [t for t in watch() if t.state == TrialState.RUNNING]
        # The second worker starts once the paused trial's stamp is past the grace (SQLite stamps
        # whole seconds): started sooner, it could finish its one trial, find the study full with
        # the paused trial not yet stale, and end as designed ("re-run the command to continue").
        time.sleep(GRACE + 2)
        second = subprocess.Popen(
            _tune(storage, tmp_path / "b", "--n-trials", str(n), *_slow(tmp_path)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

        def failed_or_second_gone() -> bool:
            if watch()[paused.number].state == TrialState.FAIL:
                return True
            assert second.poll() is None, f"the second worker ended first: {second.communicate()[1][-2000:]}"
            return False

        _poll(failed_or_second_gone, 240, "the paused trial to fail")
        _poll(
            lambda: any(t.system_attrs.get("failed_trial") == paused.number for t in _taken(watch())),
            240,
            "the retry to start",
        )
        first.send_signal(signal.SIGCONT)
        _, first_err = first.communicate(timeout=300)
        _, second_err = second.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        if second is not None:
            second.kill()
    assert first.returncode == 0 and second.returncode == 0, (first_err, second_err)
    assert "Traceback" not in first_err + second_err
    assert f"trial {paused.number} was failed by another worker" in first_err
    ts = trials(storage)
    assert ts[paused.number].state == TrialState.FAIL
    assert ts[paused.number].intermediate_values == paused.intermediate_values  # nothing after the pause
    (retry,) = [t for t in ts if t.system_attrs.get("failed_trial") == paused.number]
    assert retry.params == paused.params and retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert len(finished(ts)) == n and not _left_open(ts)
    assert len({t.number for t in ts}) == len(ts)


def _taken(ts: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in ts if t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)]


def test_sigterm_fails_the_running_trial_exits_143_and_a_rerun_completes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    n = 2
    cmd = _tune(storage, tmp_path, "--n-trials", str(n), *_slow(tmp_path))
    proc = _start_and_catch_mid_trial(cmd, storage, _env())
    try:
        done_before = {t.number: t.value for t in finished(trials(storage))}
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    ts = trials(storage)
    assert not _left_open(ts)
    (failed,) = [t for t in ts if t.state == TrialState.FAIL]
    assert failed.user_attrs["reason"] == "terminated (exit 143)"
    assert {t.number: t.value for t in finished(ts)} == done_before

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert rerun.returncode == 0, rerun.stderr
    ts = trials(storage)
    assert len(finished(ts)) == n and not _left_open(ts)
    assert {t.number: t.value for t in finished(ts) if t.number in done_before} == done_before


def test_a_wrong_password_or_missing_database_is_one_line_and_writes_nothing(
    postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine import make_url

    monkeypatch.chdir(tmp_path)
    url = make_url(postgres)
    wrong = url.set(password="not-the-password").render_as_string(hide_password=False)
    line = one_line_error(invoke("--storage", wrong), 1)
    assert "password authentication failed" in line and "not-the-password" not in line
    assert f"{url.username}:***@" in line
    missing = url.set(database=f"{url.database}_missing").render_as_string(hide_password=False)
    line = one_line_error(invoke("--storage", missing), 1)
    assert "does not exist" in line and f":{url.password}@" not in line
    assert _tables(postgres) == []  # the server was reached, and nothing was written to it
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_database_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_line_error(invoke("--storage", "postgresql://me:secret@127.0.0.1:1/db"), 1)
    assert "postgresql://me:***@127.0.0.1:1/db" in line and "secret" not in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "text", [b"garbage\n", b"garbage", b'{"name": "x"}\n', b"SQLite format 3\x00\xff\xfe"], ids=repr
)
def test_a_file_that_is_not_a_journal_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: bytes
) -> None:
    """Optuna takes an unparsable last line for a half-written record and appends after it: such a
    file must be refused before anything is written to it."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "notes.txt"
    path.write_bytes(text)
    result = invoke("--n-trials", "1", "--storage", f"journal:{path}")
    assert path.read_bytes() == text
    assert list(tmp_path.iterdir()) == [path]
    assert one_line_error(result, 1) == f"Error: cannot read journal:{path}: not an Optuna journal"


def test_a_journal_resumes_and_one_with_a_half_written_last_line_opens(tmp_path: Path) -> None:
    """The check that refuses other files lets real journals through: one tune wrote, and one whose
    last record a crash cut off (which Optuna reads as written up to there)."""
    path = tmp_path / "study.log"
    storage = f"journal:{path}"
    first = invoke("--n-trials", "1", "--storage", storage, "--out", str(tmp_path), "--no-final")
    assert first.exit_code == 0, first.output
    (done,) = finished(trials(storage))
    more = invoke("--n-trials", "2", "--storage", storage, "--out", str(tmp_path), "--no-final")
    assert more.exit_code == 0, more.output
    assert len(finished(trials(storage))) == 2
    assert trials(storage)[0].value == done.value

    crashed = tmp_path / "crashed.log"
    text = path.read_bytes() + b'{"op_code":4,"worker_id":"cut-off'
    crashed.write_bytes(text)
    opened = open_storage(parse_storage(f"journal:{crashed}"), create=False)
    assert len(finished(optuna.load_study(study_name="purestep-digits", storage=opened).get_trials())) == 2
    assert crashed.read_bytes() == text


def test_a_journal_whose_last_record_a_crash_cut_off_resumes_and_keeps_every_finished_record(
    tmp_path: Path,
) -> None:
    """A writer killed mid-record leaves a last line without its newline, which Optuna's reader
    skips. Resuming cuts it before the next record instead of appending to it (the two made one
    line no reader could parse, and the new trial was lost): the file up to its last newline is
    kept byte for byte, and the new trials are appended and read back."""
    path = tmp_path / "study.log"
    storage = f"journal:{path}"
    args = ["--storage", storage, "--out", str(tmp_path / "out"), "--no-final", "--impl", "eager"]
    assert invoke("--n-trials", "2", *args).exit_code == 0
    data = path.read_bytes()
    last = data.rindex(b"\n", 0, len(data) - 1) + 1
    path.write_bytes(data[: (last + len(data)) // 2])  # the last record (trial 1's end) cut mid-write
    before = {t.number: (t.state, t.value, t.params) for t in trials(storage)}
    assert [state for state, _, _ in before.values()] == [TrialState.COMPLETE, TrialState.RUNNING]

    result = invoke("--n-trials", "4", *args)
    assert result.exit_code == 0, result.output
    after = path.read_bytes()
    assert after[:last] == data[:last] and after.endswith(b"\n")
    assert all(isinstance(json.loads(line), dict) for line in after.splitlines())
    ts = trials(storage)
    assert {t.number: (t.state, t.value, t.params) for t in ts if t.number in before} == before
    assert [t.number for t in finished(ts)] == [0, 2, 3]  # trial 1 stays RUNNING: no heartbeat there


def test_a_journal_holding_only_a_cut_off_first_record_starts_the_study(tmp_path: Path) -> None:
    """A crash during a journal's very first record left nothing finished: the study starts anew."""
    path = tmp_path / "study.log"
    path.write_bytes(b'{"op_code":0,"worker_id":"cut-off')
    args = ["--storage", f"journal:{path}", "--out", str(tmp_path / "out"), "--no-final", "--impl", "eager"]
    result = invoke("--n-trials", "2", *args)
    assert result.exit_code == 0, result.output
    assert "(new study)" in result.stderr and b"cut-off" not in path.read_bytes()
    assert len(finished(trials(f"journal:{path}"))) == 2


def test_a_journal_optuna_cannot_replay_is_one_line_naming_it(tmp_path: Path) -> None:
    """A file that begins like a journal and holds a whole line that is no record, which Optuna
    opens and appends to, then fails to read back; the message ends the output, after the study's
    status line."""
    path = tmp_path / "study.log"
    storage = f"journal:{path}"
    first = invoke("--n-trials", "1", "--storage", storage, "--out", str(tmp_path), "--no-final")
    assert first.exit_code == 0, first.output
    path.write_bytes(path.read_bytes() + b"garbage\n")
    line = one_line_error_tail(invoke("--n-trials", "2", "--storage", storage, "--out", str(tmp_path)))
    assert line.startswith(f"Error: cannot read {storage}: ")


@pytest.mark.parametrize(("interval", "grace"), [("0", "60"), ("five", "60"), ("5", "9")])
def test_a_bad_heartbeat_setting_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: str, grace: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PURESTEP_HEARTBEAT_INTERVAL", interval)
    monkeypatch.setenv("PURESTEP_HEARTBEAT_GRACE", grace)
    line = one_line_error(invoke("--storage", f"sqlite:///{tmp_path / 's.db'}"), 1)
    assert "PURESTEP_HEARTBEAT_" in line
    assert list(tmp_path.iterdir()) == []


_POP = """
import sys, time, optuna
from purestep.search.storage import open_storage, parse_storage
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = open_storage(parse_storage(sys.argv[1]), create=False)
study = optuna.load_study(study_name="queue", storage=storage)
while time.time() < float(sys.argv[2]):
    pass
for _ in range(int(sys.argv[3])):
    trial = study.ask()
    print(trial.number, flush=True)
    study.tell(trial, 0.0)
"""


def test_workers_racing_for_queued_trials_on_sqlite_never_share_one(tmp_path: Path) -> None:
    """Optuna claims a queued trial by reading, then writing its state; on SQLite, which has no
    row locks, two workers could both read WAITING and run the same trial. The claim here is
    one conditional UPDATE."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="queue", storage=open_storage(parse_storage(url), create=True))
    queued = 40
    for i in range(queued):
        study.enqueue_trial({"x": float(i)})
    start = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _POP, url, str(start), str(queued // 4 + 5)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    numbers = [int(n) for out, _ in outs for n in out.split()]
    assert len(numbers) == len(set(numbers)) == 4 * (queued // 4 + 5)
    assert set(range(queued)) <= set(numbers)


# A model whose forward calls a custom op implemented in Python: a compiled package calls it from
# native code, which turns what it raises into a RuntimeError. At its POKE_AT-th call it signals
# its own process, so the signal arrives inside the op, as Ctrl-C does when a compiled step's
# Python kernel is running.
_POKED = """
import os, signal, time
import torch
from torch import nn

calls = [0]


@torch.library.custom_op("poked::poke", mutates_args=())
def poke(x: torch.Tensor) -> torch.Tensor:
    calls[0] += 1
    if calls[0] == int(os.environ["POKE_AT"]):
        os.kill(os.getpid(), getattr(signal, os.environ["POKE_SIGNAL"]))
        time.sleep(2)  # the op still running when the handler's turn comes (30 s cost a minute a run)
    return x.clone()


@poke.register_fake
def _(x):
    return torch.empty_like(x)


class Net(nn.Module):
    def __init__(self, in_features, classes):
        super().__init__()
        self.lin = nn.Linear(in_features, classes)

    def forward(self, x):
        return self.lin(poke(x.flatten(1)))
"""


@pytest.fixture(scope="module")
def poked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`_POKED` in one file for every test: a model file is known by its path, so the second test
    loads the packages the first saved."""
    model = tmp_path_factory.mktemp("poked") / "poked.py"
    model.write_text(_POKED)
    return model


@pytest.mark.compile
@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_inside_a_compiled_packages_python_kernel_ends_the_run_as_that_signal(
    tmp_path: Path, poked: Path, name: str, code: int
) -> None:
    """The package wraps the handler's exception in a RuntimeError; `train` and `tune` still exit
    130 or 143, and the trial's reason is the signal's, not a failure."""
    model = poked
    env = _env(POKE_AT="3", POKE_SIGNAL=name)
    storage, out = f"sqlite:///{tmp_path / 's.db'}", str(tmp_path)
    runs = {
        "train": [*PURESTEP, "train", "--dataset", "digits", "--epochs", "1"],
        "tune": [*PURESTEP, *FAST, "--n-trials", "1", "--no-final", "--storage", storage, "--out", out],
    }
    for command, cmd in runs.items():
        cmd = [*cmd, "--model", f"{model}:Net", "--impl", "compiled"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == code, (command, done.stderr)
        assert "Error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    (failed,) = trials(storage)
    reason = "interrupted (SIGINT)" if name == "SIGINT" else "terminated (exit 143)"
    assert failed.state == TrialState.FAIL and failed.user_attrs["reason"] == reason


@pytest.mark.parametrize("workers", [1, 2])
def test_a_resumed_study_proposes_new_points_and_the_same_ones_for_the_same_rerun(
    tmp_path, monkeypatch, workers
):
    """A re-run for more trials (or after Ctrl-C) seeds its samplers from `--seed` and the trials the
    study holds: it draws none of the first run's points again (every sampler starts from seeded
    random draws, so the same seed proposed them one for one), and one process's same re-run draws
    the same."""
    monkeypatch.chdir(tmp_path)  # best.json
    runs = []
    for copy in ("a", "b"):
        storage = f"sqlite:///{tmp_path / copy}.db"
        args = ["--epochs", "1", "--sampler", "random", "--pruner", "none", "--no-final"]
        args += ["--storage", storage, "--out", copy]  # a study of its own: its own folder
        for n in (4, 8):
            result = invoke(*args, "--n-trials", str(n), "--workers", str(workers))
            assert result.exit_code == 0, result.output
        points = {t.number: tuple(sorted(t.params.items())) for t in finished(trials(storage))}  # no surplus
        assert len(points) == 8 and len(set(points.values())) == 8, points
        runs.append(points)
    if workers == 1:  # with workers, how many trials each one draws depends on timing
        assert runs[0] == runs[1]


@pytest.mark.parametrize("write", ["replacing", "write_json"])
def test_a_write_then_rename_never_replaces_a_fifo_or_a_folder(tmp_path: Path, write: str) -> None:
    """The one write-then-rename helper refuses a target that is not a regular file (as root,
    `/dev/null`): the node stays as it was and no temporary file is left beside it."""
    import stat

    from purestep.core.files import NotRegularFile, replacing, write_json

    fifo, folder = tmp_path / "fifo", tmp_path / "folder"
    os.mkfifo(fifo)
    folder.mkdir()
    for target in (fifo, folder, tmp_path / "link"):
        if target.name == "link":
            target.symlink_to(fifo)
        with pytest.raises(NotRegularFile, match="is not a regular file; it is not replaced"):
            if write == "write_json":
                write_json(target, {"a": 1})
            else:
                with replacing(target) as tmp:
                    tmp.write_text("x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir() and (tmp_path / "link").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "link"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_write_json_writes_strict_json(tmp_path: Path, value: float) -> None:
    from purestep.core.files import write_json

    path = write_json(tmp_path / "v.json", {"r2": value, "history": [{"loss": value}, (1.0, value)]})
    parsed = json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(token))
    assert parsed == {"r2": None, "history": [{"loss": None}, [1.0, None]]}


_SIGNAL_AT_IMPORT = """
import os, signal, sys
name, target = sys.argv[1], sys.argv[2]
def hook(event, args):
    if event == "import" and args[0] == target and not os.environ.get("SENT"):
        os.environ["SENT"] = "1"
        print("sent", flush=True)
        os.kill(os.getpid(), getattr(signal, name))
sys.addaudithook(hook)
sys.argv = ["purestep", *sys.argv[3:]]
from purestep.cli import main
main()
"""


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_torch_imports_ends_the_run_as_that_signal(
    tmp_path: Path, name: str, code: int
) -> None:
    """A signal that lands while torch's native code imports numpy raised there and was cleared: the
    run went on to its end and exited 0 (elsewhere in that import, `std::terminate`: exit 134). The
    import runs with the signals held now, and the run ends as the signal says before it trains."""
    cmd = [sys.executable, "-c", _SIGNAL_AT_IMPORT, name, "numpy.lib"]
    cmd += ["train", "--dataset", "digits", "--impl", "eager", "--hidden", "8", "--epochs", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
    if "sent" not in done.stdout:
        pytest.skip("this torch imports numpy.lib before the command starts")
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Epoch" not in done.stdout and "Traceback" not in done.stderr, (done.stdout, done.stderr)


def test_a_commit_optuna_wraps_is_reported_by_the_databases_own_cause() -> None:
    """Optuna's wrapper said "invalid data in the commit, e.g. exceeding max length" where SQLite
    had said the file is read-only."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from purestep.search.storage import StorageError, storage_errors

    url = parse_storage("sqlite:///s.db")
    orig = sqlite3.OperationalError("attempt to write a readonly database")
    with pytest.raises(StorageError) as e, storage_errors(url):
        try:
            raise OperationalError("INSERT ...", {}, orig)
        except OperationalError as inner:
            raise optuna.exceptions.StorageInternalError("An exception is raised during commit.") from inner
    assert str(e.value) == "storage sqlite:///s.db: attempt to write a readonly database"


def _workers_of(parent: int) -> list[int]:
    """The pids of `parent`'s worker processes, from /proc (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_worker_signalled_alone_leaves_the_study_to_the_others_and_the_run_ends_well(
    tmp_path: Path,
) -> None:
    """SIGTERM to one worker (a scheduler, an OOM handler) ended the parent, never signalled, with
    exit 143 and no best.json, though the other worker went on to fill the study."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    cmd = _tune(storage, tmp_path, "--n-trials", "4", "--workers", "2", *_slow(tmp_path))
    proc = _start_and_catch_mid_trial(cmd, storage, _env())
    try:
        _poll(lambda: len(_workers_of(proc.pid)) == 2, 60, "both workers")
        os.kill(_workers_of(proc.pid)[0], signal.SIGTERM)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "by a signal sent to it alone; the other workers finished the study" in err, err
    ts = trials(storage)
    assert len(finished(ts)) == 4 and not _left_open(ts)
    assert [t.user_attrs["reason"] for t in ts if t.state == TrialState.FAIL] == ["terminated (exit 143)"]
    assert json.loads((tmp_path / "best.json").read_text())["study"] == "purestep-digits"


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_workers_end_with_a_parent_killed_by_sigkill_and_fail_their_trials(tmp_path: Path) -> None:
    """A parent killed with SIGKILL cannot pass a signal on: its workers ran on, trial after trial."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    cmd = _tune(storage, tmp_path, "--n-trials", "20", "--workers", "2", *_slow(tmp_path))
    proc = _start_and_catch_mid_trial(cmd, storage, _env())
    try:
        _poll(lambda: len(_workers_of(proc.pid)) == 2, 60, "both workers")
        workers = _workers_of(proc.pid)
        proc.kill()
        proc.wait(timeout=60)
        _poll(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), 120, "the workers to end")
    finally:
        proc.kill()
    ts = trials(storage)
    assert not _left_open(ts) and len(finished(ts)) < 20
    assert {t.user_attrs["reason"] for t in ts if t.state == TrialState.FAIL} == {"terminated (exit 143)"}


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_while_the_command_ends_from_one_exits_at_once_without_tracebacks(
    name: str, code: int
) -> None:
    """A second Ctrl-C while a command ended from the first raised in cleanup and exit handlers
    (SQLAlchemy's engine disposal): their tracebacks, and at times a death by the signal itself."""
    script = (
        "import os, signal, time\n"
        "from purestep.cli._app import ending_from_signal, install_signal_handlers\n"
        "install_signal_handlers()\n"
        "ending_from_signal()\n"
        f"os.kill(os.getpid(), signal.{name})\n"
        "time.sleep(30)\n"
        "print('went on')\n"
    )
    cmd = [sys.executable, "-c", script]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env())
    assert (done.returncode, done.stdout, done.stderr) == (code, "", "")
