"""`purestep report` on studies that `purestep tune` wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from purestep.cli import app

optuna.logging.set_verbosity(optuna.logging.WARNING)
runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A journal storage holding an 8-trial digits study."""
    tmp = tmp_path_factory.mktemp("report")
    storage = f"journal:{tmp / 'study.log'}"
    args = ["tune", "--dataset", "digits", "--epochs", "3", "--n-trials", "8", "--storage", storage]
    result = runner.invoke(app, [*args, "--no-final", "--out", str(tmp)])
    assert result.exit_code == 0, result.output
    return storage


def test_report_lists_top_trials_best_baseline_importances_and_draws_plots(
    study: str, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["report", "--storage", study, "--top", "3", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    trials = optuna.load_study(study_name="purestep-digits", storage=_journal(study)).get_trials()
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number)
    )
    assert [r["trial"] for r in report["top"]] == [t.number for t in complete[:3]]
    assert report["best"]["trial"] == complete[0].number
    assert report["baseline"]["trial"] == 0 and report["baseline"]["config"]["lr"] == 1e-3
    assert report["trials"]["complete"] + report["trials"]["pruned"] == 8
    importances = report["importances"]
    assert importances and abs(sum(importances.values()) - 1) < 1e-6
    assert set(importances) <= {name for t in trials for name in t.params}
    for name in ("history.png", "intermediate.png", "importance.png"):
        path = tmp_path / name
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
        assert str(path) in report["files"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_text(study: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "--storage", study, "--no-plots"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.startswith("study purestep-digits in journal:")
    assert "by validation accuracy:" in text
    assert "baseline (the tutorial's configuration): trial 0" in text and "tuning gained" in text
    assert "parameter importances (PED-ANOVA):" in text
    assert "wrote" not in text


def test_report_shows_the_model_arguments_the_space_searches(tmp_path: Path) -> None:
    """`--model cnn`'s default space searches model.dropout and model.width; a trial stores them in
    its config's `model_args`, and the report's columns and JSON show each trial's own values."""
    storage = f"sqlite:///{tmp_path / 'cnn.db'}"
    args = ["tune", "--model", "cnn", "--dataset", "digits", "--epochs", "1", "--n-trials", "2"]
    result = runner.invoke(app, [*args, "--storage", storage, "--no-final", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="purestep-digits", storage=storage).get_trials()
    drawn = {t.number: t.user_attrs["config"]["model_args"] for t in trials}
    assert len(drawn) == 2 and all({"dropout", "width"} <= set(a) for a in drawn.values())

    result = runner.invoke(app, ["report", "--storage", storage, "--no-plots", "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)["top"]
    assert {r["trial"]: r["config"]["model_args"] for r in top} == drawn

    result = runner.invoke(app, ["report", "--storage", storage, "--no-plots"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = lines[2].replace("val acc", "val_acc").split()
    rows = [dict(zip(header, line.split())) for line in lines[3 : 3 + len(top)]]
    assert {int(r["trial"]): (r["model.dropout"], r["model.width"]) for r in rows} == {
        n: (f"{a['dropout']:.4g}", str(a["width"])) for n, a in drawn.items()
    }


def test_report_names_the_study_when_the_storage_has_several(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    for name in ("one", "two"):
        optuna.create_study(study_name=name, storage=storage)
    result = runner.invoke(app, ["report", "--storage", storage])
    assert result.exit_code == 2
    assert "the storage holds 2 studies (one, two); name one" in result.stderr
    missing = runner.invoke(app, ["report", "--storage", storage, "--study", "three"])
    assert missing.exit_code == 2 and "no study named 'three' in this storage (studies there: one, two)" in (
        missing.stderr
    )


def test_report_on_a_missing_storage_creates_nothing(tmp_path: Path) -> None:
    for storage in (f"sqlite:///{tmp_path / 'nope.db'}", f"journal:{tmp_path / 'nope.log'}"):
        result = runner.invoke(app, ["report", "--storage", storage])
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("Error: no storage at ") and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty.db").touch()  # opened, Optuna wrote its tables into it: 114688 bytes
    result = runner.invoke(app, ["report", "--storage", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert result.exit_code == 1 and result.stderr.endswith("empty.db is empty\n"), result.output
    assert (tmp_path / "empty.db").stat().st_size == 0


@pytest.mark.parametrize(
    ("storage", "problem"),
    [
        ("postgresql://me:secret@localhost:99999/db", "port 99999 is not a number from 1 to 65535"),
        ("postgresql://me:secret@localhost:5x/db", "its port is not a number from 1 to 65535"),
    ],
)
def test_report_on_a_malformed_database_url_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage: str, problem: str
) -> None:
    """A URL SQLAlchemy cannot take is bad usage (exit 2), not a failure of the server (exit 1)."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report", "--storage", storage])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "malformed storage URL 'postgresql://me:***@localhost:" in result.stderr, result.stderr
    assert problem in result.stderr
    assert "secret" not in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_report_with_too_few_trials_says_why_there_are_no_importances(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ["tune", "--dataset", "digits", "--epochs", "1", "--n-trials", "1", "--storage", storage]
    assert runner.invoke(app, [*args, "--no-final", "--out", str(tmp_path / "o")]).exit_code == 0
    result = runner.invoke(app, ["report", "--storage", storage, "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "importances need at least 2 completed trials" in result.stdout
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["history.png", "intermediate.png"]


def test_report_on_a_regression_lists_the_lowest_validation_mse_first(tmp_path: Path) -> None:
    """A regression study minimises validation MSE: the report ranks, labels and formats it as one."""
    storage = f"sqlite:///{tmp_path / 'diabetes.db'}"
    args = ["tune", "--dataset", "diabetes", "--epochs", "1", "--n-trials", "4", "--storage", storage]
    assert runner.invoke(app, [*args, "--no-final", "--out", str(tmp_path / "o")]).exit_code == 0
    trials = optuna.load_study(study_name="purestep-diabetes", storage=storage).get_trials()
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, t.number)
    )
    assert len(complete) >= 2 and complete[0].value < complete[-1].value

    result = runner.invoke(app, ["report", "--storage", storage, "--no-plots", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["trial"] for r in report["top"]] == [t.number for t in complete]
    assert report["best"]["trial"] == complete[0].number
    assert report["metric"] == "validation MSE" and report["direction"] == "minimize"

    result = runner.invoke(app, ["report", "--storage", storage, "--no-plots"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == f"top {len(complete)} by validation MSE (lowest first):"
    assert lines[2].split()[:4] == ["trial", "state", "val", "mse"]
    assert lines[3].split()[:3] == [str(complete[0].number), "complete", f"{complete[0].value:.4g}"]
    best = next(line for line in lines if line.startswith("best: "))
    assert best == f"best: trial {complete[0].number}, validation MSE {complete[0].value:.4g}"
    baseline = next(line for line in lines if line.startswith("baseline "))
    base = next(t for t in trials if t.user_attrs.get("baseline"))
    gain = (
        f"no trial beat it (best {base.value:.4g})"
        if complete[0].value >= base.value
        else f"tuning brought the MSE down from {base.value:.4g} to {complete[0].value:.4g}"
    )
    assert baseline == (
        f"baseline (the tutorial's configuration): trial {base.number}, "
        f"validation MSE {base.value:.4g}; {gain}"
    )
    assert "accuracy" not in result.stdout and "%" not in result.stdout


def _journal(storage: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(storage.removeprefix("journal:")))


def test_report_on_a_storage_without_studies_says_so_in_one_line(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="gone", storage=storage)
    optuna.delete_study(study_name="gone", storage=storage)
    result = runner.invoke(app, ["report", "--storage", storage])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "the storage holds no study yet: purestep tune writes one" in result.stderr


def test_report_on_a_study_of_another_tool_labels_its_values_and_refuses_several_objectives(
    tmp_path: Path,
) -> None:
    """A study purestep did not write names no metric: its values are not called a validation MSE.
    One with two objectives is refused in one line, where Optuna's own error came through."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    plain = optuna.create_study(study_name="plain", storage=storage)
    plain.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    result = runner.invoke(app, ["report", "--storage", storage, "--study", "plain", "--no-plots", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metric"] == "objective value"
    result = runner.invoke(app, ["report", "--storage", storage, "--study", "plain", "--no-plots"])
    best = min(plain.trials, key=lambda t: t.value)  # its row shows its own params, not "-"
    assert f"  {best.number}      complete  {best.value:.4g}" in result.stdout, result.stdout
    assert f"{best.params['x']:.4g}" in result.stdout.splitlines()[3], result.stdout

    optuna.create_study(study_name="pair", storage=storage, directions=["minimize", "maximize"])
    before = (tmp_path / "s.db").read_bytes()
    result = runner.invoke(app, ["report", "--storage", storage, "--study", "pair"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "study 'pair' has 2 objectives; the report ranks one" in result.stderr
    assert (tmp_path / "s.db").read_bytes() == before


def _report_process(storage: str, out: Path) -> subprocess.CompletedProcess[str]:
    """`purestep report` in its own process: what Optuna logs there reaches stderr as a user sees it."""
    command = [sys.executable, "-m", "purestep", "report", "--storage", storage, "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.mark.parametrize("state", [TrialState.FAIL, TrialState.RUNNING])
def test_a_study_without_a_finished_trial_says_so_and_draws_nothing(
    tmp_path: Path, state: TrialState
) -> None:
    """Optuna warned (`[W ...] There are no complete trials.`) and empty plots were written."""
    storage = f"journal:{tmp_path / 's.log'}"
    study = optuna.create_study(study_name="early", storage=_journal(storage))
    trial = study.ask()
    if state != TrialState.RUNNING:
        study.tell(trial, state=state)
    out = tmp_path / "plots"
    done = _report_process(storage, out)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "study early has no finished trial yet: nothing to rank or draw" in done.stdout.splitlines()
    assert not out.exists() and "wrote" not in done.stdout


def test_a_trial_valued_inf_is_in_the_table_and_no_warning_of_optunas_is_printed(tmp_path: Path) -> None:
    """The history plot leaves out a trial whose value is inf; Optuna's `[W ...]` line saying so came
    through on stderr though the report's table shows that trial and its value."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="plain", storage=storage)
    for value in (1.0, float("inf"), 0.5):
        study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), value)
    out = tmp_path / "plots"
    done = _report_process(storage, out)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "  1      complete  inf" in done.stdout and (out / "history.png").read_bytes().startswith(PNG)


def test_report_without_matplotlib_says_so_and_prints_the_report(
    study: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An install without the `plots` extra (the README's `.[digits]`) failed with "its sqlite driver
    is not installed": the storage's error mapping took matplotlib's ImportError for the driver's."""
    import importlib.util

    real = importlib.util.find_spec
    missing = lambda name, *a: None if name == "matplotlib" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", missing)
    result = runner.invoke(app, ["report", "--storage", study, "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "Note: no plots: matplotlib is not installed (pip install 'purestep[plots]')" in result.stderr
    assert "best" in result.stdout and not (tmp_path / "plots").exists(), result.stdout


def test_an_import_error_that_is_not_a_database_drivers_is_not_called_one() -> None:
    from purestep.search.storage import StorageError, parse_storage, storage_errors

    url = parse_storage("sqlite:///s.db")
    with pytest.raises(ModuleNotFoundError, match="matplotlib"), storage_errors(url):
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    with pytest.raises(StorageError, match="its sqlite driver is not installed"), storage_errors(url):
        raise ImportError("Failed to import DB access module for the specified storage URL.")


def test_report_does_not_import_torch(tmp_path: Path) -> None:
    """Torch's import (1-2 s) is for the commands that train; the signal-safe import ran it for all."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(study_name="plain", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), 3)
    script = (
        "import sys\nfrom purestep.cli import app\n"
        f"code = app(['report', '--storage', {storage!r}, '--no-plots'], standalone_mode=False)\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "0 False", (done.stdout, done.stderr)


@pytest.mark.parametrize("minimize", [False, True])
def test_the_best_of_trials_valued_alike_is_the_earliest(minimize: bool) -> None:
    """A tie goes to the trial that reached the value first, in either direction."""
    from purestep.search.study import best_of

    study = optuna.create_study(direction="minimize" if minimize else "maximize")
    for value in (0.5, 0.9, 0.1, 0.9, 0.1):
        study.add_trial(optuna.trial.create_trial(value=value))
    assert best_of(study.trials, minimize).number == (2 if minimize else 1)
