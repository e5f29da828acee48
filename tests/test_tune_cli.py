"""`purestep tune` end to end on digits: real SQLite and journal files, Typer's runner, and real
processes where a process is the point (Ctrl-C, workers)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from importlib.util import find_spec
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from purestep.cli import app
from purestep.core.interop import load
from purestep.search.objective import TrialConfig, lr_at, make_splits, score, train
from purestep.search.runner import Shield, _surplus
from purestep.search.space import default_space, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
runner = CliRunner()
FAST = ["tune", "--dataset", "digits", "--epochs", "2"]
PURESTEP = [sys.executable, "-c", "from purestep.cli import main; main()"]


def invoke(*args: str):
    return runner.invoke(app, [*FAST, *args])


def trials(storage: str, study: str = "purestep-digits") -> list[optuna.trial.FrozenTrial]:
    if storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        storage = JournalStorage(JournalFileBackend(storage.removeprefix("journal:")))
    return optuna.load_study(study_name=study, storage=storage).get_trials()


def finished(ts: list) -> list:
    return [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def digest(path: Path) -> str:
    """A file's sha256; a SQLite database's by what it holds (its SQL dump, write-ahead log
    included): when the last connection to it closes, which a garbage collection can do at any
    time, SQLite folds its log into the file, changing the bytes and not a row."""
    if path.suffix != ".db":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if not path.is_file():  # connecting would create it
        raise FileNotFoundError(path)
    with closing(sqlite3.connect(path)) as conn:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 5-trial study on digits in SQLite, with its best.json and weights."""
    tmp = tmp_path_factory.mktemp("tuned")
    storage = f"sqlite:///{tmp / 's.db'}"
    result = invoke("--n-trials", "5", "--storage", storage, "--out", str(tmp / "out"))
    assert result.exit_code == 0, result.output
    return tmp, storage


def test_tune_writes_a_resumable_study_best_json_and_weights(tuned: tuple[Path, str]) -> None:
    tmp, storage = tuned
    ts = trials(storage)
    assert len(finished(ts)) == 5 and not [t for t in ts if t.state == TrialState.RUNNING]
    baseline = ts[0]
    assert baseline.user_attrs["baseline"] is True
    assert baseline.params == {
        "optimizer": "sgd",
        "sgd_lr": 1e-3,
        "momentum": 0.0,
        "weight_decay_zero": True,
        "batch_size": 64,
        "schedule": "constant",
    }
    assert TrialConfig.from_dict(baseline.user_attrs["config"]) == TrialConfig()
    assert baseline.value is not None and baseline.value < 0.3  # the tutorial barely moves on digits

    best = json.loads((tmp / "out" / "best.json").read_text())
    complete = [t for t in ts if t.state == TrialState.COMPLETE]
    top = max(complete, key=lambda t: (t.value, -t.number))
    assert (best["trial"], best["value"], best["params"]) == (top.number, top.value, top.params)
    assert best["study"] == "purestep-digits" and best["storage"] == storage
    assert best["baseline"]["trial"] == 0
    final = best["final"]
    assert final["train_images"] == 1437 and final["test_images"] == 360 and 0 < final["test_accuracy"] <= 1
    params, meta = load(tmp / "out" / "best.safetensors")
    assert meta["trial"] == top.number and meta["config"] == best["config"]
    assert params["linear_relu_stack.0.weight"].shape == (512, 64)


def test_rerun_resumes_to_n_finished_in_total(tuned: tuple[Path, str]) -> None:
    tmp, storage = tuned
    before = {t.number: (t.state, t.value, t.params) for t in trials(storage)}
    again = invoke("--n-trials", "5", "--storage", storage, "--out", str(tmp / "out"), "--no-final")
    assert again.exit_code == 0, again.output
    assert {t.number: (t.state, t.value, t.params) for t in trials(storage)} == before
    more = invoke("--n-trials", "7", "--storage", storage, "--out", str(tmp / "out"), "--no-final")
    assert more.exit_code == 0, more.output
    after = trials(storage)
    assert len(finished(after)) == 7
    assert {t.number: (t.state, t.value, t.params) for t in after if t.number in before} == before


def test_journal_storage_is_an_ordinary_optuna_study(tmp_path: Path) -> None:
    storage = f"journal:{tmp_path / 'study.log'}"
    result = invoke("--n-trials", "3", "--storage", storage, "--out", str(tmp_path), "--no-final", "--json")
    assert result.exit_code == 0, result.output
    best = json.loads(result.stdout)
    assert best["final"] is None and not (tmp_path / "best.safetensors").exists()
    assert json.loads((tmp_path / "best.json").read_text()) == best
    ts = trials(storage)
    assert len(finished(ts)) == 3
    assert all(t.intermediate_values.keys() <= {1, 2} for t in ts)


def test_optunas_own_cli_reads_the_study(tuned: tuple[Path, str]) -> None:
    _, storage = tuned
    exe = Path(sys.executable).parent / "optuna"
    if not exe.exists():
        pytest.skip("optuna's console script is not installed")
    out = subprocess.run(
        [str(exe), "trials", "--study-name", "purestep-digits", "--storage", storage, "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == len(trials(storage))


def test_same_seed_and_fresh_storage_give_the_same_trials(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        storage = f"sqlite:///{tmp_path / name}.db"
        out = str(tmp_path / name)  # a study of its own: its own folder
        result = invoke("--n-trials", "12", "--seed", "3", "--storage", storage, "--no-final", "--out", out)
        assert result.exit_code == 0, result.output
        runs.append([(t.number, t.state, t.params, t.value, t.intermediate_values) for t in trials(storage)])
    assert runs[0] == runs[1]
    assert len({json.dumps(p, sort_keys=True) for _, _, p, _, _ in runs[0]}) == 12


def test_a_diverging_trial_is_pruned_with_its_reason_and_the_study_goes_on(tmp_path: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text('[optimizer]\nvalue = "sgd"\n\n[sgd_lr]\nlow = 1e6\nhigh = 1e8\n')
    storage = f"sqlite:///{tmp_path / 's.db'}"
    result = invoke("--n-trials", "3", "--space", str(space), "--storage", storage, "--pruner", "none")
    assert "no baseline trial" in result.stderr
    assert "has no completed trial (3 pruned, 0 failed)" in one_line_error_tail(result)
    ts = trials(storage)
    assert [t.state for t in ts] == [TrialState.PRUNED] * 3
    assert all(t.user_attrs["reason"].startswith("diverged: training loss became") for t in ts)
    assert not (tmp_path / "purestep-digits").exists()


def one_line_error_tail(result) -> str:
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "Traceback" not in result.output
    return last


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--sampler", "bogus"], 2, "'--sampler'"),
        (["--pruner", "bogus"], 2, "'--pruner'"),
        (["--n-trials", "0"], 2, "'--n-trials'"),
        (["--batch", "0"], 2, "'--batch': must be auto or a number of trials from 1 to 256, got '0'"),
        (["--batch", "x"], 2, "'--batch'"),
        (["--batch", "257"], 2, "'--batch'"),
        (["--batch", "1.5"], 2, "'--batch'"),
        (["--threads", "0"], 2, "'--threads': must be auto or a number of threads from 1, got '0'"),
        (["--threads", "x"], 2, "'--threads'"),
        (["--val-fraction", "1.5"], 2, "between 0 and 1"),
        (["--timeout", "-1"], 2, "seconds > 0"),
        (["--storage", "redis://localhost/0"], 2, "unknown storage URL"),
        (["--storage", "sqlite:///:memory:"], 2, "cannot be resumed"),
        (["--storage", "sqlite://purestep.db"], 2, "three slashes, sqlite:///FILE"),
        (["--storage", "sqlite:///{tmp}/no/such/dir/s.db"], 1, "directory"),
        (["--storage", "postgresql://me:secret@127.0.0.1:9/db"], 1, "postgresql://me:***@127.0.0.1:9/db"),
        (["--storage", "postgresql://me:secret@localhost:99999/db"], 2, "me:***@localhost:99999/db': port"),
        (["--storage", "mysql://me@localhost:x1/db"], 2, "'mysql://me@localhost:x1/db': its port is not"),
        (["--space", "{tmp}/missing.toml"], 2, "'--space'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], code: int, fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    line = one_line_error(invoke(*args), code)
    assert fragment in line and "secret" not in line
    assert list(tmp_path.iterdir()) == []


def test_a_malformed_space_file_names_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.toml"
    space.write_text("[adam_lr]\nlow = 1e-4\nhigh = -3.0\n")
    line = one_line_error(invoke("--space", str(space)), 2)
    assert f"{space}:3: [adam_lr] high: must be in (0, inf), got -3.0" in line
    assert list(tmp_path.iterdir()) == [space]


def test_cmaes_without_its_package_is_a_clear_runtime_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if find_spec("cmaes") is not None:
        pytest.skip("cmaes is installed here")
    monkeypatch.chdir(tmp_path)
    line = one_line_error(invoke("--sampler", "cmaes"), 1)
    assert "pip install cmaes" in line and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["--epochs", "2", "--space", "{space}"],
            "the search space differs: [hidden] is in this space but not in",
        ),
        (["--epochs", "3"], "--epochs is 2 in the study, 3 here"),
        (["--epochs", "2", "--val-fraction", "0.3"], "--val-fraction is 0.2 in the study, 0.3 here"),
        (["--epochs", "2", "--seed", "5"], "--seed is 0 in the study, 5 here"),
        (["--epochs", "2", "--loss", "nll"], "--loss is cross_entropy in the study, nll here"),
        (
            ["--epochs", "2", "--model-arg", "classes=12"],
            "--model-arg is {} in the study, {'classes': 12} here",
        ),
    ],
)
def test_resuming_with_another_definition_is_refused_and_leaves_the_storage(
    tuned: tuple[Path, str], tmp_path: Path, args: list[str], fragment: str
) -> None:
    tmp, storage = tuned
    space = tmp_path / "space.toml"
    space.write_text("[hidden]\nchoices = [128, 256]\n")
    db = tmp / "s.db"
    before = digest(db)
    args = [a.replace("{space}", str(space)) for a in args]
    result = runner.invoke(
        app, ["tune", "--dataset", "digits", "--storage", storage, "--out", str(tmp_path), *args]
    )
    line = one_line_error(result, 2)
    assert fragment in line and "Invalid value for --study" in line
    assert digest(db) == before
    assert list(tmp_path.iterdir()) == [space]


def test_resuming_with_a_range_rewritten_in_floats_is_refused_before_any_trial(tmp_path: Path) -> None:
    """`low = 16` and `low = 16.0` are equal numbers, but a model argument's range of integers becomes
    a range of floats, which Optuna cannot resume: refused as a changed space, nothing written."""
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "def make(in_features, width=32):\n"
        "    w = int(width)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, w), nn.ReLU(), nn.Linear(w, 10))\n"
    )
    ints, floats = tmp_path / "ints.toml", tmp_path / "floats.toml"
    ints.write_text('[width]\nkey = "model.width"\nlow = 16\nhigh = 64\n')
    floats.write_text('[width]\nkey = "model.width"\nlow = 16.0\nhigh = 64.0\n')
    db = tmp_path / "s.db"
    common = ["--model", f"{tmp_path / 'net.py'}:make", "--storage", f"sqlite:///{db}", "--no-final"]
    common += ["--out", str(tmp_path / "out")]
    first = invoke("--n-trials", "1", "--space", str(ints), *common)
    assert first.exit_code == 0, first.output
    before = digest(db)
    line = one_line_error(invoke("--n-trials", "2", "--space", str(floats), *common), 2)
    assert "the search space differs: [width] high is 64 in the study, 64.0 here" in line
    assert "Invalid value for --study" in line
    assert digest(db) == before


def test_show_space_prints_the_merged_space_as_toml(tmp_path: Path) -> None:
    assert parse_space(runner.invoke(app, ["tune", "--show-space"]).stdout).to_tables() == (
        default_space().to_tables()
    )
    space = tmp_path / "space.toml"
    space.write_text("[hidden]\nchoices = [128, 256]\n")
    shown = runner.invoke(app, ["tune", "--show-space", "--space", str(space)]).stdout
    assert parse_space(shown).to_tables()["hidden"] == {"choices": [128, 256]}


def test_help_imports_neither_torch_nor_optuna() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from purestep.cli import app\n"
        "for cmd in (['--help'], ['tune', '--help'], ['report', '--help']):\n"
        "    assert CliRunner().invoke(app, cmd).exit_code == 0\n"
        "print(sorted({'torch', 'optuna', 'matplotlib'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- real processes: Ctrl-C mid-trial, and workers ------------------------------------------------


def _wait(predicate, timeout: float, proc: subprocess.Popen) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_ctrl_c_mid_trial_fails_that_trial_keeps_the_rest_and_a_rerun_completes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    cmd = [
        *PURESTEP,
        *FAST[:3],
        "--epochs",
        "40",
        "--n-trials",
        "3",
        "--pruner",
        "none",
        "--storage",
        storage,
        "--no-final",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def mid_second_trial() -> bool:
        ts = trials(storage)
        running = [t for t in ts if t.state == TrialState.RUNNING]
        return len(finished(ts)) >= 1 and bool(running) and len(running[0].intermediate_values) >= 2

    try:
        ready, _, _ = select.select([proc.stderr], [], [], 240)
        assert ready and "(new study)" in proc.stderr.readline()  # the study exists from here on
        _wait(mid_second_trial, 240, proc)
        done_before = {t.number: t.value for t in finished(trials(storage))}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.splitlines()[-1] == "Interrupted.", err
    ts = trials(storage)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["reason"] == "interrupted (SIGINT)"
    assert {t.number: t.value for t in finished(ts)} == done_before

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    ts = trials(storage)
    assert len(finished(ts)) == 3 and not [t for t in ts if t.state == TrialState.RUNNING]
    assert {t.number: t.value for t in finished(ts) if t.number in done_before} == done_before


def test_workers_print_a_progress_line_as_the_finished_count_grows(tmp_path: Path) -> None:
    """Off a terminal (the runner's stderr is not one), a line `N of 4 finished`, as one worker prints,
    each time the count grows, though with two workers a trial is almost always running. The parent
    polls the storage every 0.5 s: 20 epochs make a trial longer than that, so some poll falls between
    the first trial's end and the last's."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ["tune", "--dataset", "digits", "--epochs", "20", "--n-trials", "4", "--workers", "2"]
    result = runner.invoke(app, [*args, "--storage", storage, "--no-final", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    line = re.compile(r"(\d+) of 4 finished \| (best \d+\.\d\d% \(trial \d+\)|no best yet) \| \d+\.\ds")
    counts = [int(m[1]) for m in map(line.fullmatch, result.stderr.splitlines()) if m]
    assert counts == sorted(set(counts)) and counts[-1] == 4, result.stderr
    assert {1, 2, 3} & set(counts), result.stderr  # not only the start and the end


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_storage_and_stop_at_exactly_n(tmp_path: Path, kind: str) -> None:
    """Workers seed their samplers with the seed plus their index, past 2**32 - 1 wrapping to 0."""
    storage = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    cmd = [*PURESTEP, *FAST, "--n-trials", "7", "--workers", "2", "--storage", storage, "--no-final"]
    cmd += ["--seed", str(2**32 - 1)]
    out = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    # Once tune has exited, the SQLite file alone holds the study (to copy, to send): no WAL beside it.
    assert not list(tmp_path.glob("s.db-*"))
    ts = trials(storage)
    done = finished(ts)
    assert len(done) == 7 and len({t.number for t in done}) == 7
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert all(t.user_attrs.get("reason", "").startswith("surplus") for t in ts if t.state == TrialState.FAIL)
    assert sum(bool(t.user_attrs.get("baseline")) for t in ts) == 1


# ---- the pieces under the CLI ---------------------------------------------------------------------


def test_constant_schedule_is_core_fit_bit_for_bit_and_cosine_decays_to_near_zero() -> None:
    from purestep.core.data import load_dataset
    from purestep.core.loop import fit
    from purestep.core.model import mlp

    data = load_dataset("digits")
    config = TrialConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=128, shuffle=True)
    test = (data.x_test, data.y_test)
    splits = make_splits(data, 0.2, 0)
    ours = train(config, data.x_train, data.y_train, test, splits=splits, epochs=2, seed=1, compiled=False)
    model = mlp(64, config.hidden_layers(), 10)
    theirs = fit(
        model,
        config.optimizer_config().build(),
        *model.init(1),
        data.x_train,
        data.y_train,
        epochs=2,
        batch_size=128,
        eval_data=test,
        eval_batch_size=4096,
        shuffle=True,
        seed=1,
        compiled=False,
        log_every=0,
    )
    assert all(torch.equal(ours.params[k], theirs.params[k]) for k in theirs.params)
    assert [(r.train_loss, r.eval_loss, r.eval_accuracy) for r in ours.history] == [
        (r.train_loss, r.eval_loss, r.eval_accuracy) for r in theirs.history
    ]
    cosine = TrialConfig(lr=0.1, schedule="cosine")
    rates = [lr_at(cosine, e, 10) for e in range(10)]
    assert rates[0] == 0.1 and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 0.003
    assert {lr_at(TrialConfig(lr=0.1), e, 10) for e in range(10)} == {0.1}


def test_score_is_the_mean_of_the_last_third_of_epochs() -> None:
    from purestep.core.loop import EpochMetrics

    history = [
        EpochMetrics(e, 0.0, 0.0, acc, 0.0)
        for e, acc in enumerate([0.1, 0.5, 0.7, 0.8, 0.9, 0.6, 0.9, 0.9, 0.8, 1.0])
    ]
    assert math.isclose(score(history), (0.9 + 0.8 + 1.0) / 3)
    assert score(history[:2]) == 0.5


def test_surplus_rule_counts_only_lower_numbered_taken_trials() -> None:
    study = optuna.create_study(direction="maximize")
    asked = [study.ask() for _ in range(4)]
    study.tell(asked[0], 0.5)
    study.tell(asked[1], state=TrialState.FAIL)
    assert not _surplus(study, 2, n_trials=2)  # below 2: one complete, one failed
    assert _surplus(study, 3, n_trials=2)  # below 3: complete 0 and running 2
    assert not _surplus(study, 3, n_trials=3)


def test_shield_defers_a_signal_until_the_block_ends() -> None:
    shield = Shield()
    previous = signal.getsignal(signal.SIGINT)
    with shield.armed():
        with pytest.raises(KeyboardInterrupt), shield.hold():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert shield.pending == signal.SIGINT  # still here: the block was not cut short
        os.kill(os.getpid(), signal.SIGINT)  # after the first one, later ones wait
        time.sleep(0.05)
        assert shield.pending == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is previous


@pytest.mark.compile
def test_a_new_trial_and_its_schedule_reuse_the_compiled_graphs() -> None:
    from purestep.core.data import load_dataset, split

    data = load_dataset("digits")
    x, y, xv, yv = split(data.x_train, data.y_train, 0.2, 0)
    common = {"splits": make_splits(data, 0.2, 0), "epochs": 2, "seed": 0, "compiled": True}
    warm = TrialConfig(optimizer="sgd", lr=0.01, momentum=0.5, batch_size=128)
    train(warm, x, y, (xv, yv), **common)
    other = TrialConfig(
        optimizer="sgd",
        lr=0.3,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        batch_size=128,
        schedule="cosine",
    )
    with torch.compiler.set_stance("fail_on_recompile"):
        result = train(other, x, y, (xv, yv), **common)
    eager = train(other, x, y, (xv, yv), **{**common, "compiled": False})
    for k, v in eager.params.items():
        assert torch.allclose(result.params[k], v, rtol=1e-4, atol=1e-5)


def test_timeout_stops_starting_trials_and_a_rerun_continues(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ["--n-trials", "1000", "--storage", storage, "--no-final", "--out", str(tmp_path)]
    began = time.time()
    # The budget counts from the command's start, so it must cover loading the data and opening
    # the study on a loaded machine (1 s and 3 s budgets each once ran out before the first trial
    # started) and still stop well short of 1000.
    result = invoke(*args, "--timeout", "15")
    assert result.exit_code == 0, result.output
    assert "of 1000 finished trials; re-run the command to continue" in result.stderr
    first = len(finished(trials(storage)))
    assert 0 < first < 1000 and time.time() - began < 180
    assert invoke(*args, "--timeout", "15").exit_code == 0
    assert len(finished(trials(storage))) > first


@pytest.mark.parametrize(("sampler", "pruner"), [("random", "hyperband"), ("gp", "halving"), ("tpe", "none")])
def test_each_sampler_and_pruner_runs_a_study(tmp_path: Path, sampler: str, pruner: str) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ["--n-trials", "4", "--sampler", sampler, "--pruner", pruner, "--storage", storage, "--no-final"]
    result = invoke(*args, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(finished(trials(storage))) == 4


def test_an_interrupted_baseline_is_queued_again() -> None:
    from purestep.search.study import ensure_baseline

    study = optuna.create_study(direction="maximize")
    space = default_space()
    assert ensure_baseline(study, space, n_trials=3)
    assert ensure_baseline(study, space, n_trials=3)  # already queued: not twice
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING]
    first = study.ask()
    assert first.user_attrs["baseline"] is True
    study.tell(first, state=TrialState.FAIL)
    ensure_baseline(study, space, n_trials=3)
    again = study.ask()
    assert again.number == 1 and again.user_attrs["baseline"] is True
    assert not ensure_baseline(study, parse_space('[optimizer]\nvalue = "adam"\n'), n_trials=3)


@pytest.mark.parametrize("made", ["with an attribute", "empty, multi-objective"])
def test_a_study_purestep_did_not_create_is_refused_and_left_alone(tmp_path: Path, made: str) -> None:
    """An empty multi-objective study failed as a bug (`A single direction cannot be retrieved`)."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    if made == "with an attribute":
        foreign = optuna.create_study(study_name="purestep-digits", storage=storage)
        foreign.set_user_attr("owner", "someone else")
    else:
        optuna.create_study(study_name="purestep-digits", storage=storage, directions=["maximize"] * 2)
    before = digest(tmp_path / "s.db")
    result = invoke("--storage", storage, "--out", str(tmp_path / "out"))
    line = one_line_error(result, 2)
    assert "was not created by purestep tune" in line
    assert digest(tmp_path / "s.db") == before


def test_a_worker_that_finds_a_study_while_another_defines_it_and_adds_a_trial_joins_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three workers at once: one creates the study; a second defines it and queues the tutorial's
    trial between the third's first look (no definition yet) and its next read. The third joins
    the study; it does not take it for a foreign one."""
    from purestep.search.space import default_space
    from purestep.search.storage import open_storage, parse_storage
    from purestep.search.study import StudySpec, _define, open_study, stored_spec

    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = StudySpec("digits", 2, 0, 0.2, default_space())
    storage = open_storage(parse_storage(url), create=True)
    other = optuna.create_study(study_name="s", storage=storage, direction=spec.direction)
    read = optuna.Study.get_trials

    def meanwhile(self: optuna.Study, *args: object, **kwargs: object) -> list[optuna.trial.FrozenTrial]:
        monkeypatch.setattr(optuna.Study, "get_trials", read)
        _define(other, spec)  # the second worker, between the third's two reads
        other.enqueue_trial({"optimizer": "sgd"})
        return read(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "get_trials", meanwhile)
    sampler, pruner = optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    study, created = open_study(open_storage(parse_storage(url), create=False), "s", spec, sampler, pruner)
    assert not created and stored_spec(study) == spec and len(study.get_trials()) == 1


def test_a_worker_that_finds_a_study_another_is_creating_defines_it_too(tmp_path: Path) -> None:
    """Workers started at once: one creates the study, then writes its definition (two writes).
    Another that finds the study in between writes the same definition and goes on, whenever the
    first's write lands (no clock to run out on a loaded machine). An empty study with another
    direction is not one purestep is creating: refused, and left untouched."""
    from purestep.search.space import default_space
    from purestep.search.storage import open_storage, parse_storage
    from purestep.search.study import ATTR, IncompatibleStudy, StudySpec, open_study, stored_spec

    url = f"sqlite:///{tmp_path / 's.db'}"
    spec = StudySpec("digits", 2, 0, 0.2, default_space())
    storage = open_storage(parse_storage(url), create=True)
    creating = optuna.create_study(study_name="s", storage=storage, direction=spec.direction)
    sampler, pruner = optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    study, created = open_study(open_storage(parse_storage(url), create=False), "s", spec, sampler, pruner)
    assert not created and stored_spec(study) == spec
    creating.set_user_attr(ATTR, spec.to_attr())  # the creator's own write, landing afterwards
    assert stored_spec(study) == spec and study.metric_names == ["val_accuracy"]
    optuna.create_study(study_name="m", storage=storage, direction="minimize")
    before = digest(tmp_path / "s.db")
    with pytest.raises(IncompatibleStudy, match="was not created by purestep tune"):
        open_study(storage, "m", spec, sampler, pruner)
    assert digest(tmp_path / "s.db") == before


def _save_arrays(path: Path, classes: int, features: int) -> None:
    """A small classification dataset as an .npz: 60 training rows (the first 20 also the test set)."""
    import numpy as np

    x = np.random.default_rng(classes).random((60, features), dtype=np.float32)
    y = np.arange(60) % classes
    np.savez(path, x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])


def _forget_fingerprints(storage: str, study: str) -> None:
    """Make `study` one created before datasets and model files were known by their contents."""
    from purestep.search.study import ATTR

    loaded = optuna.load_study(study_name=study, storage=storage)
    attr = dict(loaded.user_attrs[ATTR])
    attr.pop("dataset_id", None)
    attr.pop("model_id", None)
    loaded.set_user_attr(ATTR, attr)


def test_a_file_dataset_is_known_by_its_contents_not_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same arrays at another path resume the study; other arrays under the study's path are
    refused before anything is written. A study made before contents were compared keeps comparing paths."""
    monkeypatch.chdir(tmp_path)
    good, moved = tmp_path / "good.npz", tmp_path / "moved" / "good.npz"
    _save_arrays(good, 3, 8)
    moved.parent.mkdir()
    moved.write_bytes(good.read_bytes())
    db = tmp_path / "s.db"
    storage = f"sqlite:///{db}"

    def run(dataset: str, n: int):
        args = ["--epochs", "1", "--n-trials", str(n), "--study", "s", "--storage", storage, "--no-final"]
        return runner.invoke(app, ["tune", "--dataset", dataset, *args])

    first = run("good.npz", 1)
    assert first.exit_code == 0, first.output
    again = run("moved/good.npz", 2)
    assert again.exit_code == 0, again.output
    assert len(finished(trials(storage, "s"))) == 2
    _save_arrays(good, 4, 6)  # other classes and features under the study's path
    before = digest(db)
    line = one_line_error(run("good.npz", 3), 2)
    assert f"--dataset {good} has changed since the study was made (data sha256 " in line, line
    assert "Invalid value for --study" in line and digest(db) == before
    _forget_fingerprints(storage, "s")
    before = digest(db)
    line = one_line_error(run("moved/good.npz", 3), 2)
    assert f"--dataset is {good} in the study, {moved} here" in line and digest(db) == before


NET = (
    "import torch.nn as nn\n"
    "def make(in_features, width={width}):\n"
    "    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, 10))\n"
)


def test_a_model_file_is_known_by_its_source_not_the_path_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET.format(width=32))
    db = tmp_path / "s.db"
    storage = f"sqlite:///{db}"

    def run(model: str, n: int):
        args = ["--epochs", "1", "--n-trials", str(n), "--storage", storage, "--no-final"]
        return runner.invoke(app, ["tune", "--dataset", "digits", "--model", model, *args])

    first = run("net.py:make", 1)
    assert first.exit_code == 0, first.output
    again = run("./net.py:make", 2)  # the same file, typed another way
    assert again.exit_code == 0, again.output
    assert len(finished(trials(storage))) == 2
    (tmp_path / "net.py").write_text(NET.format(width=16))  # another model under the study's name
    before = digest(db)
    line = one_line_error(run("net.py:make", 3), 2)
    assert "--model net.py:make has changed since the study was made (source file sha256 " in line, line
    assert digest(db) == before


def test_study_names_that_read_alike_get_folders_of_their_own_and_another_studys_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from purestep.search.tune import default_out

    monkeypatch.chdir(tmp_path)
    assert default_out("purestep-digits") == Path("purestep-digits")  # a plain name is the folder's
    names = ("exp 1", "exp/1", "exp_1", "日本語", "中文", "study", "??")
    assert len({default_out(n) for n in names}) == len(names)
    assert all(len(default_out(n).parts) == 1 for n in names)
    db = tmp_path / "s.db"
    common = ["--epochs", "1", "--n-trials", "1", "--storage", f"sqlite:///{db}", "--no-final"]
    for name in ("日本語", "中文"):
        result = runner.invoke(app, ["tune", "--dataset", "digits", "--study", name, *common])
        assert result.exit_code == 0, result.output
    for name in ("日本語", "中文"):
        assert json.loads((tmp_path / default_out(name) / "best.json").read_text())["study"] == name
    taken = tmp_path / default_out("日本語")
    written = json.loads((taken / "best.json").read_text())
    (taken / "best.json").write_text(json.dumps({**written, "study": "中文"}))  # as if 中文's run wrote it
    before = digest(taken / "best.json"), digest(db)
    for out in ([], ["--out", str(taken)]):  # another study's folder, by default or named
        args = ["tune", "--dataset", "digits", "--study", "日本語", *common, *out]
        line = one_line_error(runner.invoke(app, args), 2)
        assert "best.json is study '中文''s, not '日本語''s" in line and "--out" in line
        assert (digest(taken / "best.json"), digest(db)) == before


def test_a_run_without_the_final_retrain_keeps_the_final_result_of_the_same_best_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The best trial unchanged: its `final` and weights stay. Changed: `final` is null and the
    earlier trial's weights are removed with it."""
    monkeypatch.chdir(tmp_path)
    args = ["tune", "--dataset", "digits", "--epochs", "1", "--n-trials", "2"]
    args += ["--storage", f"sqlite:///{tmp_path / 's.db'}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "purestep-digits"
    first, weights = json.loads((out / "best.json").read_text()), digest(out / "best.safetensors")
    assert first["final"]["test_accuracy"] > 0
    again = runner.invoke(app, [*args, "--no-final"])
    assert again.exit_code == 0, again.output
    kept = json.loads((out / "best.json").read_text())
    assert (kept["trial"], kept["final"]) == (first["trial"], first["final"])
    assert digest(out / "best.safetensors") == weights
    (out / "best.json").write_text(json.dumps({**kept, "trial": kept["trial"] + 1}))  # an earlier best
    stale = runner.invoke(app, [*args, "--no-final"])
    assert stale.exit_code == 0, stale.output
    assert json.loads((out / "best.json").read_text())["final"] is None
    assert not (out / "best.safetensors").exists()


@pytest.mark.parametrize("name", ["best.json", "best.safetensors"])
def test_an_out_folder_with_a_directory_where_a_result_goes_is_refused_before_any_trial(
    tmp_path: Path, name: str
) -> None:
    """Every trial and the final re-train ran, then the write of best.json failed (`Is a
    directory`) with best.safetensors already written beside no best.json. Refused first."""
    (tmp_path / "out" / name).mkdir(parents=True)
    result = invoke("--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "out"))
    line = one_line_error(result, 2)
    assert f"{tmp_path / 'out' / name} is a directory, where the run writes a file of that name" in line
    assert not (tmp_path / "s.db").exists() and sorted(p.name for p in (tmp_path / "out").iterdir()) == [name]


def test_the_same_study_name_in_another_storage_is_another_study_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two storages, one study name, one default folder: the second run overwrote the first's
    best.json and weights. Refused before any trial; the same storage spelled another way resumes,
    and a best.json that records no storage (older runs) is compared by name alone."""
    monkeypatch.chdir(tmp_path)
    args = ["tune", "--dataset", "digits", "--epochs", "1", "--n-trials", "2", "--threads", "1"]
    args += ["--impl", "eager"]
    assert runner.invoke(app, [*args, "--storage", "sqlite:///a.db"]).exit_code == 0
    out = tmp_path / "purestep-digits"
    before = digest(out / "best.json"), digest(out / "best.safetensors")
    line = one_line_error(runner.invoke(app, [*args, "--storage", "journal:b.log", "--seed", "5"]), 2)
    assert "from study 'purestep-digits' in sqlite:///a.db, not in journal:b.log" in line and "--out" in line
    assert (digest(out / "best.json"), digest(out / "best.safetensors")) == before
    assert not (tmp_path / "b.log").exists()
    again = runner.invoke(app, [*args, "--storage", f"sqlite:///{tmp_path / 'a.db'}", "--no-final"])
    assert again.exit_code == 0, again.output
    written = json.loads((out / "best.json").read_text())
    (out / "best.json").write_text(json.dumps({k: v for k, v in written.items() if k != "storage"}))
    older = runner.invoke(app, [*args, "--storage", "journal:b.log", "--no-final"])
    assert older.exit_code == 0, older.output


def test_tune_json_and_best_json_are_strict_when_a_metric_is_nan(tmp_path: Path) -> None:
    """Constant test targets: the final R² is NaN; best.json, --json and the weights' metadata
    say null, never a bare NaN."""
    import numpy as np

    from purestep.core.interop import META_KEY

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)).astype("float32")
    data = tmp_path / "flat.npz"
    np.savez(data, x_train=x[:40], y_train=x[:40, :1] * 2, x_test=x[40:], y_test=np.ones((20, 1), "float32"))
    out = tmp_path / "out"
    args = ["tune", "--dataset", str(data), "--epochs", "1", "--n-trials", "2", "--threads", "1"]
    args += ["--impl", "eager", "--storage", f"journal:{tmp_path / 's.log'}", "--out", str(out), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output

    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"not strict JSON: {token}"))

    assert strict(result.stdout)["final"]["test_r2"] is None
    assert strict((out / "best.json").read_text())["final"]["test_r2"] is None
    from safetensors import safe_open

    with safe_open(str(out / "best.safetensors"), framework="pt") as f:
        assert strict(f.metadata()[META_KEY])["test_r2"] is None


def test_an_out_folder_with_a_fifo_where_a_result_goes_is_refused_before_any_trial(tmp_path: Path) -> None:
    """Reading a FIFO as best.json would hang; renaming onto it would replace it."""
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out" / "best.json")
    result = invoke("--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "out"))
    line = one_line_error(result, 2)
    assert "best.json is not a regular file, where the run writes a file of that name" in line
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("batch", ["1", "3"])
@pytest.mark.parametrize("pruner", ["median", "halving"])
def test_a_trial_trained_to_its_last_epoch_is_never_pruned(tmp_path, monkeypatch, batch, pruner):
    """The pruner was asked after the last epoch too: trials trained to their end were stored as
    pruned (670 of 987 one-epoch trials), out of the finished ones' ranking and importances."""
    monkeypatch.chdir(tmp_path)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ["tune", "--dataset", "digits", "--epochs", "1", "--n-trials", "12", "--impl", "eager"]
    args += ["--sampler", "random", "--pruner", pruner, "--batch", batch, "--no-final", "--storage", storage]
    assert runner.invoke(app, args).exit_code == 0
    ts = trials(storage)
    assert len(ts) == 12 and {t.state for t in ts} == {TrialState.COMPLETE}, [t.user_attrs for t in ts]


def test_a_validation_loss_that_is_not_finite_prunes_the_trial_as_diverged() -> None:
    """A regression's last update could send the validation MSE to inf after a finite training
    loss: the trial was stored as COMPLETE with the value inf."""
    from purestep.core.loop import EpochMetrics
    from purestep.search.objective import pruned_reason

    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    for epoch, loss in ((1, math.inf), (0, math.nan)):
        trial = study.ask()
        row = EpochMetrics(epoch, 0.5, loss, None, 0.1, eval_mse=loss, eval_r2=math.nan)
        said = f"diverged: validation loss became {loss} in epoch {epoch + 1}"
        assert pruned_reason(trial, row, epochs=2) == said
        assert study.get_trials()[-1].intermediate_values == {}
    finite = EpochMetrics(1, 0.5, 0.25, None, 0.1, eval_mse=0.25, eval_r2=0.5)
    assert pruned_reason(study.ask(), finite, epochs=2) is None


def test_the_final_retrain_trains_on_every_training_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The best configuration, and the tutorial's beside it, is re-trained on the whole training set
    (the study's fit and validation splits together) before its one test: `best.json`'s
    `train_images` is what each trained on."""
    from purestep import load_dataset
    from purestep.search import tune as tune_module

    rows: list[int] = []
    real = tune_module.train

    def counting(config: object, x: torch.Tensor, y: torch.Tensor, *args: object, **kwargs: object) -> object:
        rows.append(len(y))
        return real(config, x, y, *args, **kwargs)

    monkeypatch.setattr(tune_module, "train", counting)
    out = tmp_path / "out"
    result = invoke("--n-trials", "1", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(out))
    assert result.exit_code == 0, result.output
    final = json.loads((out / "best.json").read_text())["final"]
    assert rows == [final["train_images"]] * 2 == [len(load_dataset("digits").y_train)] * 2
