"""`purestep tune`: an Optuna study over the tutorial's hyperparameters (see `purestep.search`)."""

from __future__ import annotations

import math
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from purestep.cli._app import app
from purestep.cli.common import check_output, model_args_for, model_usage_error
from purestep.cli.options import (
    DataDir,
    Dataset,
    Device,
    Epochs,
    Loss,
    ModelArgs,
    ModelRef,
    Seed,
    dataset_label,
    path_option,
)
from purestep.core.settings import MAX_BATCH

if TYPE_CHECKING:
    from purestep.search.space import Space
    from purestep.search.tune import Outcome, Progress

DEFAULT_STORAGE = "sqlite:///purestep.db"


class SamplerName(str, Enum):
    tpe = "tpe"
    random = "random"
    cmaes = "cmaes"
    gp = "gp"


class PrunerName(str, Enum):
    median = "median"
    hyperband = "hyperband"
    halving = "halving"
    none = "none"


class TuneImpl(str, Enum):
    auto = "auto"
    eager = "eager"
    compiled = "compiled"


class Denormals(str, Enum):
    flush = "flush"
    keep = "keep"


def _fraction(value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or not 0 < value < 1):
        raise typer.BadParameter(f"must be between 0 and 1 (exclusive), got {value}")
    return value


def _task(dataset: str, loss: Enum | None) -> str:
    """The task the default space is for: `--loss mse` or a regression dataset mean regression."""
    if loss is not None and loss.value == "mse":
        return "regression"
    from purestep.core.data import dataset_task

    return dataset_task(dataset)


def _timeout(value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise typer.BadParameter(f"must be a number of seconds > 0, got {value}")
    return value


def _batch(value: str) -> str:
    """`auto` or a whole number of trials, 1 to `MAX_BATCH`."""
    if value != "auto" and not (value.isdecimal() and 1 <= int(value) <= MAX_BATCH):
        raise typer.BadParameter(f"must be auto or a number of trials from 1 to {MAX_BATCH}, got {value!r}")
    return value


def _threads(value: str) -> str:
    """`auto` or a whole number of threads, at least 1."""
    if value != "auto" and not (value.isdecimal() and int(value) >= 1):
        raise typer.BadParameter(f"must be auto or a number of threads from 1, got {value!r}")
    return value


def _study_name(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise typer.BadParameter("must not be empty")
    return value


NTrials = Annotated[
    int,
    typer.Option(
        "--n-trials", min=1, help="Finished trials the study holds in total; a re-run resumes up to it."
    ),
]
Timeout = Annotated[
    float | None,
    typer.Option("--timeout", callback=_timeout, help="Start no trial after this many seconds."),
]
Sampler = Annotated[SamplerName, typer.Option("--sampler", help="Optuna sampler, seeded by --seed.")]
Pruner = Annotated[PrunerName, typer.Option("--pruner", help="Stops poor trials after an epoch.")]
SpaceFile = Annotated[
    Path | None,
    typer.Option(
        "--space",
        exists=True,
        dir_okay=False,
        readable=True,
        help="TOML file merged over the default search space (see --show-space).",
    ),
]
Storage = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar="PURESTEP_STORAGE",
        help="Optuna storage: sqlite:///FILE, postgresql://..., mysql://... or journal:FILE.",
    ),
]
Study = Annotated[
    str | None,
    typer.Option("--study", callback=_study_name, help="Study name (default: purestep-DATASET)."),
]
ValFraction = Annotated[
    float | None,
    typer.Option(
        "--val-fraction",
        callback=_fraction,
        help="Share of the training set held out to score trials (default: 0.2; 0.4 under 1000 rows).",
    ),
]
Out = Annotated[
    Path | None,
    path_option("--out", "DIR", help="Where best.json and best.safetensors go (default: ./STUDY)."),
]


@app.command()
def tune(
    dataset: Dataset = "fashion-mnist",
    data_dir: DataDir = Path("data"),
    model: ModelRef = "mlp",
    model_arg: ModelArgs = None,
    loss: Loss = None,
    epochs: Epochs = 10,
    n_trials: NTrials = 30,
    timeout: Timeout = None,
    sampler: Sampler = SamplerName.tpe,
    pruner: Pruner = PrunerName.median,
    seed: Seed = 0,
    space: SpaceFile = None,
    show_space: Annotated[
        bool,
        typer.Option("--show-space", help="Print the search space as TOML (with --space merged) and exit."),
    ] = False,
    storage: Storage = DEFAULT_STORAGE,
    study: Study = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Processes running trials on the one storage.")
    ] = 1,
    batch: Annotated[
        str,
        typer.Option(
            "--batch",
            callback=_batch,
            help="Trials trained at once in a pool (1-256); auto: 1 on a CPU, up to 16 on a GPU.",
        ),
    ] = "auto",
    val_fraction: ValFraction = None,
    impl: Annotated[
        TuneImpl,
        typer.Option(
            "--impl",
            help="Train eager or compiled; auto times an eager step and compiles a run whose steps "
            "would take 2 minutes eager (with no --timeout under 5 minutes), and any run whose "
            "compiled steps are all saved in the compile cache already (one trial at a time).",
        ),
    ] = TuneImpl.auto,
    threads: Annotated[
        str,
        typer.Option(
            "--threads",
            callback=_threads,
            help="Torch threads per process; auto: the cores (or OMP_NUM_THREADS) shared by the --workers.",
        ),
    ] = "auto",
    denormals: Annotated[
        Denormals,
        typer.Option(
            "--denormals",
            help="flush: denormal floats (below 1.2e-38) count as zero on the CPU, as in JAX; they slow "
            "every step once optimizer state decays toward zero. keep: IEEE arithmetic, torch's default.",
        ),
    ] = Denormals.flush,
    device: Device = "cpu",
    out: Out = None,
    final: Annotated[
        bool, typer.Option("--final/--no-final", help="Re-train the best configuration and test it once.")
    ] = True,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print best.json instead of the table.")
    ] = False,
) -> None:
    """Tune the tutorial's hyperparameters with Optuna on a validation split; re-running resumes.

    Trial 0 is the tutorial's own configuration (of the chosen model). A space file can search the
    model's own arguments (`key = "model.dropout"`). At the end: the best trial, best.json, and the
    best and the tutorial's configurations re-trained on the whole training set and tested once.
    """
    from purestep.search.space import SpaceError, holding, load_space

    model_args = model_args_for(model, model_arg)
    from purestep.core.model import ModelError, check_model_args

    try:
        check_model_args(model, model_args)
    except ModelError as e:
        raise model_usage_error(e) from None
    try:
        search_space = load_space(space, model, _task(dataset, loss))
    except SpaceError as e:
        raise typer.BadParameter(str(e), param_hint="--space") from None
    try:
        search_space = holding(search_space, model_args)
    except SpaceError as e:
        raise typer.BadParameter(str(e), param_hint="--model-arg") from None
    if show_space:
        typer.echo(search_space.to_toml(), nl=False)
        return

    from purestep.search.storage import StorageURLError, parse_storage
    from purestep.search.study import IncompatibleStudy
    from purestep.search.tune import OUT_FILES, TuneOptions, UsageError, check_out, default_out, finish
    from purestep.search.tune import tune as run

    try:
        url = parse_storage(storage)
    except StorageURLError as e:
        raise typer.BadParameter(str(e), param_hint="--storage") from None
    name = study or f"purestep-{dataset_label(dataset)}"
    out = out if out is not None else default_out(name)
    check_output(out, "--out", directory=True, files=OUT_FILES)  # before any trial: the end must be writable
    try:
        check_out(out, name, url.shown)  # nor may it write over another study's results
    except UsageError as e:
        raise typer.BadParameter(str(e), param_hint="--out") from None
    options = TuneOptions(
        dataset=dataset,
        data_dir=str(data_dir),
        device=device,
        epochs=epochs,
        n_trials=n_trials,
        seed=seed,
        val_fraction=val_fraction,
        sampler=sampler.value,
        pruner=pruner.value,
        storage=storage,
        study=name,
        space_json=search_space.to_json(),
        timeout=timeout,
        workers=workers,
        batch=None if batch == "auto" else int(batch),
        impl=impl.value,
        threads=None if threads == "auto" else int(threads),
        model=model,
        model_args=model_args,
        loss=loss.value if loss is not None else None,
        denormals=denormals.value,
    )
    line = _LiveLine(sys.stderr.isatty())
    try:
        outcome, data = run(options, progress=line.show, on_ready=_announce)
    except IncompatibleStudy as e:
        raise typer.BadParameter(str(e), param_hint="--study") from None
    except UsageError as e:
        raise typer.BadParameter(str(e)) from None
    finally:
        line.close()
    if outcome.complete + outcome.pruned < n_trials:
        _note(_short_of(outcome, n_trials))
    best = finish(outcome, data, options, out, final)
    if json_output:
        from purestep.core.files import strict_json

        typer.echo(strict_json(best, indent=2))
    else:
        typer.echo(_summary(outcome, search_space))


class _LiveLine:
    """The progress line on stderr: rewritten in place on a terminal; otherwise a line when a trial
    ends here and whenever the count of finished trials changes (with workers, trials still running)."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.width = 0
        self.last: tuple[int | None, int] | None = None

    def show(self, p: Progress) -> None:
        key = (p.running, p.finished)
        if key == self.last:
            return
        counted = self.last is not None and p.finished != self.last[1]
        self.last = key
        best = (
            f"best {_value(p.best_value, p.accuracy)} (trial {p.best_number})"
            if p.best_value is not None
            else "no best yet"
        )
        finished = f"{p.finished} of {p.n_trials} finished"
        if self.tty:
            head = f"trial {p.finished + 1} of {p.n_trials} running (number {p.running})"
            text = f"{head if p.running is not None else finished} | {best} | {p.elapsed:.1f}s"
            sys.stderr.write("\r" + text.ljust(self.width))
            sys.stderr.flush()
            self.width = len(text)
        elif p.running is None or counted:
            sys.stderr.write(f"{finished} | {best} | {p.elapsed:.1f}s\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty and self.width:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _announce(outcome: Outcome) -> None:
    done = outcome.complete + outcome.pruned
    how = "new study" if outcome.created else f"resuming: {done} finished"
    speed = outcome.speed.describe()
    _note(f"study {outcome.study} in {outcome.storage} ({how}); {speed}")
    if not outcome.baseline_queued:
        _note("the search space does not contain the tutorial's configuration: no baseline trial")


def _note(text: str) -> None:
    typer.echo(text, err=True)


def _short_of(outcome: Outcome, n_trials: int) -> str:
    done = outcome.complete + outcome.pruned
    why = f"; {outcome.running} still running elsewhere" if outcome.running else ""
    return f"the study has {done} of {n_trials} finished trials{why}; re-run the command to continue"


def _value(value: float, accuracy: bool) -> str:
    """A trial's value: accuracy as a percentage, a regression's MSE as a number."""
    return f"{value:.2%}" if accuracy else f"{value:.4g}"


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _summary(outcome: Outcome, space: Space) -> str:
    """The end-of-run table: the baseline and the best trial, the final test, and the files written."""
    from purestep.search.space import config_settings

    keys = list(dict.fromkeys(p.key for p in space.params))
    header = ["", "trial", "val acc" if outcome.accuracy else "val mse", *keys]
    rows = [header]
    for label, trial in (("baseline", outcome.baseline), ("best", outcome.best)):
        if trial is None:
            continue
        config = config_settings(trial.user_attrs.get("config") or {})
        value = "-" if trial.value is None else _value(trial.value, outcome.accuracy)
        if trial.state.name == "PRUNED":
            value += " (pruned)"
        rows.append([label, str(trial.number), value, *(_fmt(config.get(k, "-")) for k in keys)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    done = outcome.complete + outcome.pruned
    lines = [
        f"study {outcome.study}: {done} finished ({outcome.complete} complete, {outcome.pruned} pruned), "
        f"{outcome.failed} failed; {outcome.seconds:.1f}s"
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if outcome.final:
        f = outcome.final
        if outcome.accuracy:
            test = f"test accuracy {f['test_accuracy']:.2%}"
        else:
            test = f"test R2 {f['test_r2']:.4f}, MSE {f['test_mse']:.4g}"
        lines.append(
            f"final: trained on all {f['train_images']} training rows for {f['epochs']} "
            f"epoch{'s' if f['epochs'] != 1 else ''}; "
            f"{test} (loss {f['test_loss']:.4f}) on {f['test_images']} rows"
        )
        base = f.get("baseline")
        if base:
            got = f"{base['test_accuracy']:.2%}" if outcome.accuracy else f"R2 {base['test_r2']:.4f}"
            lines.append(f"the tutorial's configuration, trained the same way: test {got}")
    lines.append("wrote " + ", ".join(outcome.files))
    return "\n".join(lines)
