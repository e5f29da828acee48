"""What a study found: its top trials, the best one against the tutorial's baseline, parameter
importances (Optuna's default evaluator, PED-ANOVA, which handles conditional parameters),
and the optimization history, intermediate values and importances drawn to PNG files.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from purestep.core.files import replacing
from purestep.search.study import baseline_trial, best_trial, stored_spec

PLOTS = ("history.png", "intermediate.png", "importance.png")
METRICS = {"val_accuracy": "validation accuracy", "val_mse": "validation MSE"}
"""The names `purestep tune` gives a study's metric, as the report spells them."""


def study_metric(study: optuna.Study) -> tuple[str, bool]:
    """What a trial's value is and whether lower is better, from the study's metric name and direction.

    A classification maximises validation accuracy; a regression minimises validation MSE; a study
    that names no metric (not written by `purestep tune`) shows an "objective value".
    """
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    names = study.metric_names
    return (METRICS.get(names[0], names[0]) if names else "objective value"), minimize


@dataclass(frozen=True)
class Row:
    """One trial as the report shows it."""

    number: int
    state: str
    value: float | None
    seconds: float | None
    params: dict[str, Any]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "trial": self.number,
            "state": self.state,
            "value": self.value,
            "seconds": self.seconds,
            "params": self.params,
            "config": self.config,
        }


@dataclass
class Report:
    """A study's summary; `importances` is None when they cannot be computed (`note` says why).

    `metric` says what every value is; `minimize` that lower values are better (and listed first).
    """

    study: str
    metric: str
    minimize: bool
    counts: dict[str, int]
    top: list[Row]
    best: Row | None
    baseline: Row | None
    importances: dict[str, float] | None
    note: str | None
    keys: list[str]
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "study": self.study,
            "metric": self.metric,
            "direction": "minimize" if self.minimize else "maximize",
            "trials": self.counts,
            "top": [r.to_dict() for r in self.top],
            "best": self.best.to_dict() if self.best else None,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "importances": self.importances,
            "importances_note": self.note,
            "files": self.files,
        }


def row(trial: FrozenTrial) -> Row:
    """A trial's report row; its config is the one it stored when it ran."""
    seconds = trial.duration.total_seconds() if trial.duration is not None else None
    return Row(
        trial.number,
        trial.state.name,
        trial.value,
        seconds,
        dict(trial.params),
        trial.user_attrs.get("config", {}),
    )


def build_report(study: optuna.Study, top: int) -> Report:
    """The top `top` completed trials, best first in the study's direction, the best, the baseline
    and importances."""
    trials = study.get_trials(deepcopy=False)
    counts = {
        state.name.lower(): sum(t.state == state for t in trials)
        for state in (
            TrialState.COMPLETE,
            TrialState.PRUNED,
            TrialState.FAIL,
            TrialState.RUNNING,
            TrialState.WAITING,
        )
    }
    metric, minimize = study_metric(study)
    sign = 1.0 if minimize else -1.0
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: (sign * (t.value or 0.0), t.number),
    )
    best, base = best_trial(study), baseline_trial(trials)
    importances, note = param_importances(study)
    if not finished(counts):
        note = f"study {study.study_name} has no finished trial yet: nothing to rank or draw"
    spec = stored_spec(study)
    keys = (
        list(dict.fromkeys(p.key for p in spec.space.params))
        if spec
        else sorted({k for t in trials for k in t.params})
    )
    return Report(
        study.study_name,
        metric,
        minimize,
        counts,
        [row(t) for t in complete[:top]],
        row(best) if best else None,
        row(base) if base else None,
        importances,
        note,
        keys,
    )


def finished(counts: dict[str, int]) -> int:
    """How many trials of a report's `counts` finished: completed or pruned."""
    return counts["complete"] + counts["pruned"]


def param_importances(study: optuna.Study) -> tuple[dict[str, float] | None, str | None]:
    """Optuna's parameter importances over the completed trials, or None and the reason."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len({tuple(sorted(t.params.items())) for t in complete}) < 2:
        return None, "importances need at least 2 completed trials with different parameters"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return None, f"importances could not be computed: {e}"
    return {k: float(v) for k, v in values.items()}, None


def write_plots(study: optuna.Study, out: Path, importances_ok: bool) -> list[Path]:
    """Draw the optimization history (when a trial completed), intermediate values (when a trial
    reported one) and (when computable) importances as PNGs; an empty plot is not drawn (Optuna
    would warn and draw empty axes).

    Each file is drawn under a temporary name and renamed into place.
    """
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    metric, _ = study_metric(study)
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    drawings = []
    if any(t.state == TrialState.COMPLETE for t in trials):
        drawings.append(("history.png", lambda: ovm.plot_optimization_history(study, target_name=metric)))
    if any(t.intermediate_values for t in trials):
        drawings.append(("intermediate.png", lambda: ovm.plot_intermediate_values(study)))
    if importances_ok:
        drawings.append(("importance.png", lambda: ovm.plot_param_importances(study)))
    shown = optuna.logging.get_verbosity()
    # the table shows every value; Optuna's line that a plot leaves out a trial valued inf is noise
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            written = [_draw(name, draw, metric, out) for name, draw in drawings]
    finally:
        optuna.logging.set_verbosity(shown)
    return written


def _draw(name: str, draw: Callable[[], Any], metric: str, out: Path) -> Path:
    """One of Optuna's plots written to `out / name`, under a temporary name renamed into place."""
    import matplotlib.pyplot as plt

    ax = draw()
    if name == "intermediate.png":
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        legend = ax.get_legend()
        if legend is not None and len(legend.get_texts()) > 12:
            legend.remove()
    figure = ax.figure
    path = out / name
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path
