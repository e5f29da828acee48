"""Fuzzing every command's arguments: a one-line message and exit 1 or 2, never a traceback,
and the storage and files left as they were."""

from __future__ import annotations

import gc
import hashlib
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from test_tune_cli import finished, invoke, trials
from typer.testing import CliRunner

from purestep.cli import app

runner = CliRunner()

OPTIONS = {
    "train": [
        "--dataset",
        "--epochs",
        "--batch-size",
        "--lr",
        "--optimizer",
        "--momentum",
        "--weight-decay",
        "--alpha",
        "--eps",
        "--hidden",
        "--seed",
        "--impl",
        "--device",
        "--save",
        "--checkpoint",
    ],
    "check": [
        "--dataset",
        "--steps",
        "--batch-size",
        "--lr",
        "--momentum",
        "--weight-decay",
        "--hidden",
        "--seed",
        "--device",
        "--against",
    ],
    "tune": [
        "--dataset",
        "--epochs",
        "--n-trials",
        "--timeout",
        "--sampler",
        "--pruner",
        "--seed",
        "--space",
        "--storage",
        "--study",
        "--workers",
        "--batch",
        "--impl",
        "--threads",
        "--device",
    ],
    "report": ["--storage", "--study", "--top", "--out"],
}
BAD = st.sampled_from(
    [
        "-1",
        "0",
        "nan",
        "inf",
        "-inf",
        "x",
        "",
        "1e999",
        "--",
        "0.5.5",
        "ftp://nowhere",
        "postgresql://u:p@127.0.0.1:1/db",
        "sqlite:///no/such/dir/x.db",
        "journal:/no/such/x.log",
        "/no/such/file.toml",
        "digits",
        "cuda",
        "9" * 30,
    ]
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished 2-trial study whose storage file every fuzzed call must leave as it was."""
    tmp = tmp_path_factory.mktemp("fuzz")
    storage = f"sqlite:///{tmp / 's.db'}"
    result = invoke("--n-trials", "2", "--storage", storage, "--no-final", "--out", str(tmp / "out"))
    assert result.exit_code == 0, result.output
    # The in-process run's storage connections close now, not during a later example: closing the
    # last one folds SQLite's WAL into s.db, which would read as a fuzzed call touching the file.
    gc.collect()
    assert not (tmp / "s.db-wal").exists()
    return tmp, storage


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=20)
@given(data=st.data(), command=st.sampled_from(sorted(OPTIONS)))
def test_fuzzed_arguments_fail_in_one_line_and_touch_nothing(study, data, command):
    tmp, storage = study
    # Storage connections left by an earlier call (or this test's own read below) close when the
    # garbage collector runs, and closing the last one deletes SQLite's -wal and -shm files: settle
    # them before each digest, so a digest sees only what a call wrote (a write would still fold
    # into s.db on that close).
    gc.collect()
    before = digest(tmp)
    n = data.draw(st.integers(1, 3))
    args = []
    for option in data.draw(st.lists(st.sampled_from(OPTIONS[command]), min_size=n, max_size=n, unique=True)):
        args += [option, data.draw(BAD)]
    if command in ("tune", "report") and "--storage" not in args:
        args += ["--storage", storage]
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        result = runner.invoke(
            app, [command, *args], env={"PURESTEP_OFFLINE": "1", "PURESTEP_DATA": str(tmp)}
        )
    finally:
        os.chdir(cwd)
    if result.exit_code == 0:  # a combination that happens to be valid (e.g. report --top 9): fine
        return
    assert result.exit_code in (1, 2), (args, result.exit_code, result.output)
    assert "Traceback" not in result.output, (args, result.output)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), (args, result.stderr)
    gc.collect()
    assert digest(tmp) == before, args
    assert len(finished(trials(storage))) == 2


@pytest.mark.parametrize("damage", ["foreign", "wrong-shape", "truncated"])
def test_resuming_from_a_foreign_or_damaged_checkpoint_is_one_line(tmp_path, damage):
    ckpt = tmp_path / "ckpt"
    base = ["train", "--dataset", "digits", "--impl", "eager", "--checkpoint", str(ckpt)]
    assert runner.invoke(app, [*base, "--epochs", "1"]).exit_code == 0
    target = ckpt / "epoch-0001" / "params.safetensors"
    if damage == "foreign":
        save_file({"embedding.weight": torch.zeros(3, 4)}, str(target))
    elif damage == "wrong-shape":
        save_file(
            {k: torch.zeros(2, 2) for k in ("linear_relu_stack.0.weight", "linear_relu_stack.0.bias")},
            str(target),
        )
    else:
        target.write_bytes(target.read_bytes()[:100])
    before = digest(ckpt)
    result = runner.invoke(app, [*base, "--epochs", "2", "--resume"])
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and "checkpoint" in result.stderr, result.stderr
    assert digest(ckpt) == before


@pytest.mark.parametrize("seed", [str(2**32), "9" * 20])
@pytest.mark.parametrize("command", ["train", "check", "tune"])
def test_a_seed_past_32_bits_is_a_usage_error_that_creates_no_storage(tmp_path, command, seed):
    """Every seed reaches numpy or an Optuna sampler, which take 32 bits: a larger one is refused
    by name before anything runs, and `tune` leaves no storage file behind."""
    db = tmp_path / "s.db"
    args = [command, "--dataset", "digits", "--epochs" if command != "check" else "--steps", "1"]
    if command == "tune":
        args += ["--n-trials", "2", "--storage", f"sqlite:///{db}"]
    result = runner.invoke(app, [*args, "--seed", seed], env={"PURESTEP_OFFLINE": "1"})
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "--seed" in result.stderr and "Traceback" not in result.output
    assert not db.exists() and list(tmp_path.iterdir()) == []


def test_a_sampler_that_cannot_be_built_leaves_no_storage(tmp_path):
    """`tune` builds its sampler before it opens the storage, so a seed the sampler refuses
    (possible through the library, which has no option to bound it) writes no file."""
    from purestep.search.space import default_space
    from purestep.search.tune import TuneOptions, tune

    db = tmp_path / "s.db"
    options = TuneOptions(
        "digits", str(tmp_path), "cpu", 1, 2, 2**32, None, "tpe", "median", f"sqlite:///{db}", "s",
        default_space().to_json(),
    )  # fmt: skip
    with pytest.raises(ValueError, match="2\\*\\*32"):
        tune(options)
    assert not db.exists()
