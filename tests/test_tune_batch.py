"""`purestep tune --batch K`: trials trained K at a time equal the same trials trained alone."""

from __future__ import annotations

import math
import select
import signal
import subprocess
from pathlib import Path

import pytest
from optuna.trial import TrialState
from test_tune_cli import FAST, PURESTEP, _wait, finished, invoke, trials

from purestep import load_dataset
from purestep.search.objective import EVAL_BATCH_SIZE, TrialConfig, make_splits, train

SGD_64 = '[optimizer]\nvalue = "sgd"\n[batch_size]\nvalue = 64\n'


def test_each_batched_trial_has_the_validation_metrics_it_has_alone(tmp_path: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text(SGD_64)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ["--epochs", "3", "--n-trials", "8", "--batch", "4", "--sampler", "random", "--pruner", "none"]
    result = invoke(*args, "--space", str(space), "--storage", storage, "--no-final", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    done = [t for t in trials(storage) if t.state == TrialState.COMPLETE]
    assert len(done) == 8
    splits = make_splits(load_dataset("digits"), 0.2, 0)
    for t in done:
        config = TrialConfig.from_dict(t.user_attrs["config"])
        alone = train(
            config,
            splits.x_fit,
            splits.y_fit,
            (splits.x_val, splits.y_val),
            splits=splits,
            epochs=3,
            seed=0,
            compiled=False,
        ).history
        assert len(splits.y_val) <= EVAL_BATCH_SIZE
        for row in alone:
            assert math.isclose(t.intermediate_values[row.epoch + 1], row.eval_accuracy, rel_tol=1e-5), (
                t.number
            )
        assert math.isclose(t.user_attrs["val_loss"], alone[-1].eval_loss, rel_tol=1e-5), t.number


def test_ctrl_c_mid_batch_fails_the_batch_and_a_rerun_completes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    cmd = [*PURESTEP, *FAST[:3], "--epochs", "30", "--n-trials", "6", "--batch", "3", "--pruner", "none"]
    cmd += ["--storage", storage, "--no-final", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def mid_second_batch() -> bool:
        ts = trials(storage)
        running = [t for t in ts if t.state == TrialState.RUNNING]
        return len(finished(ts)) >= 3 and len(running) == 3 and len(running[0].intermediate_values) >= 2

    try:
        ready, _, _ = select.select([proc.stderr], [], [], 240)
        assert ready and "(new study)" in proc.stderr.readline()
        _wait(mid_second_batch, 240, proc)
        done_before = {t.number: t.value for t in finished(trials(storage))}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    ts = trials(storage)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert len(failed) == 3 and all(t.user_attrs["reason"] == "interrupted (SIGINT)" for t in failed)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    ts = trials(storage)
    assert len(finished(ts)) == 6 and not [t for t in ts if t.state == TrialState.RUNNING]
    assert {t.number: t.value for t in finished(ts) if t.number in done_before} == done_before


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_batches_in_two_workers_stop_at_exactly_n(tmp_path: Path, kind: str) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    cmd = [*PURESTEP, *FAST, "--n-trials", "7", "--workers", "2", "--batch", "3", "--storage", storage]
    out = subprocess.run(
        [*cmd, "--no-final", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    ts = trials(storage)
    done = finished(ts)
    assert len(done) == 7 and len({t.number for t in done}) == 7
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
