"""`purestep report`: a study's top trials, best trial, parameter importances and plots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from purestep.cli._app import app
from purestep.cli.common import check_output
from purestep.cli.options import path_option
from purestep.cli.tune import DEFAULT_STORAGE, Storage

if TYPE_CHECKING:
    from purestep.search.report import Report, Row


@app.command()
def report(
    storage: Storage = DEFAULT_STORAGE,
    study: Annotated[
        str | None, typer.Option("--study", help="Study name (default: the storage's only study).")
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="How many of the best trials to list.")] = 10,
    out: Annotated[
        Path | None,
        path_option("--out", "DIR", help="Where the PNG plots go (default: ./STUDY)."),
    ] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the plots with matplotlib.")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Summarise a study: top trials, the best against the tutorial's baseline, importances, plots.

    Plots: history.png (optimization history), intermediate.png (validation accuracy, or a
    regression's validation MSE, per epoch) and importance.png.
    """
    from importlib.util import find_spec

    from purestep.search.storage import StorageURLError, open_storage, parse_storage, storage_errors
    from purestep.search.study import NoStudy, load_existing, study_names
    from purestep.search.tune import default_out, quiet_optuna

    quiet_optuna()
    try:
        url = parse_storage(storage)
    except StorageURLError as e:
        raise typer.BadParameter(str(e), param_hint="--storage") from None
    opened = open_storage(url, create=False)
    with storage_errors(url):
        if study is None:
            names = study_names(opened)
            if not names:
                raise typer.BadParameter("the storage holds no study yet: purestep tune writes one")
            if len(names) > 1:
                there = f"the storage holds {len(names)} studies ({', '.join(names)}); name one"
                raise typer.BadParameter(there, param_hint="--study")
            study = names[0]
        try:
            loaded = load_existing(opened, study)
        except NoStudy as e:
            raise typer.BadParameter(str(e), param_hint="--study") from None
        if len(loaded.directions) > 1:  # Optuna's `direction` raises on it
            several = f"study {study!r} has {len(loaded.directions)} objectives; the report ranks one"
            raise typer.BadParameter(several, param_hint="--study")
        from purestep.search.report import PLOTS, build_report, finished, write_plots

        summary = build_report(loaded, top)
        if plots and finished(summary.counts) and find_spec("matplotlib") is None:
            said = "Note: no plots: matplotlib is not installed (pip install 'purestep[plots]')"
            typer.echo(said, err=True)
        elif plots and finished(summary.counts):
            target = out if out is not None else default_out(study)
            check_output(target, "--out", directory=True, files=PLOTS)
            summary.files = [str(p) for p in write_plots(loaded, target, summary.importances is not None)]
    if json_output:
        from purestep.core.files import strict_json

        typer.echo(strict_json(summary.to_dict(), indent=2))
    else:
        typer.echo(render(summary, url.shown))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _value(value: float | None, accuracy: bool) -> str:
    """A trial's value: accuracy as a percentage, a regression's MSE (or another metric) as a number."""
    if value is None:
        return "-"
    return f"{value:.2%}" if accuracy else f"{value:.4g}"


def _cells(r: Row, keys: list[str], accuracy: bool) -> list[str]:
    from purestep.search.space import config_settings

    value = _value(r.value, accuracy)
    seconds = "-" if r.seconds is None else f"{r.seconds:.1f}"
    settings = config_settings(r.config) if r.config else r.params  # a study purestep did not make
    return [str(r.number), r.state.lower(), value, seconds, *(_fmt(settings.get(k)) for k in keys)]


def _gain(base: float, best: float, metric: str, accuracy: bool, minimize: bool) -> str:
    """What tuning changed over the baseline: accuracy points gained, or a minimised metric lowered."""
    if accuracy:
        return f"tuning gained {100 * (best - base):+.2f} points"
    name = metric.removeprefix("validation ")
    if minimize and best < base:
        return f"tuning brought the {name} down from {base:.4g} to {best:.4g}"
    if not minimize and best > base:
        return f"tuning raised the {name} from {base:.4g} to {best:.4g}"
    return f"no trial beat it (best {best:.4g})"


def render(summary: Report, storage: str) -> str:
    """The report as text."""
    c = summary.counts
    lines = [
        f"study {summary.study} in {storage}: {c['complete']} complete, {c['pruned']} pruned, "
        f"{c['fail']} failed, {c['running']} running, {c['waiting']} waiting"
    ]
    metric = summary.metric
    accuracy = metric == "validation accuracy"
    column = "val acc" if accuracy else ("val mse" if metric == "validation MSE" else "value")
    header = ["trial", "state", column, "seconds", *summary.keys]
    if summary.top:
        order = " (lowest first)" if summary.minimize else ""
        lines.append(f"top {len(summary.top)} by {metric}{order}:")
        lines += _table([header] + [_cells(r, summary.keys, accuracy) for r in summary.top])
    if summary.best is not None:
        lines.append(f"best: trial {summary.best.number}, {metric} {_value(summary.best.value, accuracy)}")
    base = summary.baseline
    if base is not None and base.value is not None:
        gain = ""
        if summary.best is not None and summary.best.value is not None:
            gain = "; " + _gain(base.value, summary.best.value, metric, accuracy, summary.minimize)
        lines.append(
            f"baseline (the tutorial's configuration): trial {base.number}, "
            f"{metric} {_value(base.value, accuracy)}{gain}"
        )
    if summary.importances is not None:
        lines.append("parameter importances (PED-ANOVA):")
        width = max(len(k) for k in summary.importances)
        for name, value in summary.importances.items():
            lines.append(f"  {name.ljust(width)}  {value:.3f}  {'#' * round(40 * value)}".rstrip())
    elif summary.note:
        lines.append(summary.note)
    if summary.files:
        lines.append("wrote " + ", ".join(summary.files))
    return "\n".join(lines)
