"""`purestep train`: the tutorial's training run, by the reference loop or the functional step."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from purestep.cli._app import app
from purestep.cli.common import (
    check_model_runs,
    check_output,
    check_widths,
    load_data,
    loss_for,
    model_args_for,
    model_for,
    optimizer_config,
)
from purestep.cli.options import (
    Alpha,
    BatchSize,
    Centered,
    DataDir,
    Dataset,
    Device,
    Epochs,
    Eps,
    Hidden,
    Impl,
    ImplOpt,
    LearningRate,
    Loss,
    ModelArgs,
    ModelRef,
    Momentum,
    Nesterov,
    Optimizer,
    OptimizerName,
    Precision,
    PrecisionOpt,
    Seed,
    Shuffle,
    WeightDecay,
    dataset_label,
    parse_hidden,
    path_option,
)
from purestep.core.files import finite, strict_json
from purestep.core.settings import OPTIMIZER_SETTINGS

if TYPE_CHECKING:
    from purestep.core.data import Dataset as Data
    from purestep.core.loop import EpochMetrics
    from purestep.core.model import Model, Params
    from purestep.core.optim import OptimizerConfig

Say = Callable[[str], None]


def _progress(total: int):
    """A transient rich progress bar on stderr. The tutorial's lines are printed above it when
    stdout is that terminal too; piped (`purestep train | tee log`), they stay on stdout (rich's
    redirect sent them to stderr, and the pipe got `Done!` alone)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=sys.stdout.isatty(),
    )
    progress.add_task("train", total=total, epoch=1)
    return progress


def _run_reference(spec: Model, config: OptimizerConfig, data: Data, run: dict[str, Any], say: Say):
    from purestep.core.model import state_of
    from purestep.core.reference import fit_reference

    model, tests = fit_reference(
        spec,
        config,
        (data.x_train, data.y_train),
        (data.x_test, data.y_test),
        epochs=run["epochs"],
        batch_size=run["batch_size"],
        seed=run["seed"],
        shuffle=run["shuffle"],
        log=say,
        loss=run["loss"],
    )
    score = "eval_r2" if run["loss"] == "mse" else "eval_accuracy"
    history = [
        {"epoch": t, "train_loss": None, "eval_loss": loss, score: s} for t, (s, loss) in enumerate(tests)
    ]
    return spec.saved(*state_of(model)), history


def _check_good(row: EpochMetrics, params: Params) -> None:
    """Refuse to checkpoint an epoch that diverged after its training loss was taken (each batch's
    loss is computed before its update): a non-finite test loss or parameter stops the run, so
    the last checkpoint kept is one a resumed run can train from.

    Raises:
        NonFiniteLoss: naming the test loss or the first non-finite parameter.
    """
    import math

    import torch

    from purestep.core.loop import NonFiniteLoss

    if not math.isfinite(row.eval_loss):
        raise NonFiniteLoss(row.epoch, row.eval_loss, "test loss")
    for name, value in params.items():
        bad = value[~torch.isfinite(value)]
        if len(bad):
            raise NonFiniteLoss(row.epoch, float(bad[0]), f"parameter {name}")


def _run_functional(
    spec: Model,
    config: OptimizerConfig,
    data: Data,
    run: dict[str, Any],
    say: Say,
    checkpoint: Path | None,
    resume: bool,
    show_progress: bool,
):
    from purestep.core.checkpoint import (
        LATEST,
        check_like,
        load_checkpoint,
        restore_generators,
        save_checkpoint,
    )
    from purestep.core.data import num_batches
    from purestep.core.errors import PurestepError
    from purestep.core.loop import Callbacks, NonFiniteLoss, fit
    from purestep.core.reference import epoch_header, eval_report, train_line
    from purestep.core.step import set_compile_cache

    optimizer = config.build()
    device = data.x_train.device
    (params, buffers), state, history, start = spec.init(run["seed"], device), None, [], 0
    spec.seed_like_module(run["seed"])  # dropout draws what the tutorial's loop would
    if resume and checkpoint is not None:
        found = load_checkpoint(checkpoint, device)
        if found is None:
            said = f"Note: {checkpoint} holds no checkpoint (no {LATEST}); training from the first epoch"
            typer.echo(said, err=True)
        else:
            if not (isinstance(found.meta.get("run"), dict) and isinstance(found.meta.get("history"), list)):
                raise PurestepError(f"cannot read the checkpoint in {checkpoint}: its meta.json holds no run")
            _check_resumable(found.meta, run, checkpoint)
            if run["epochs"] <= found.epoch:
                raise typer.BadParameter(
                    f"--epochs {run['epochs']} is fewer than the {found.epoch + 1} epochs the checkpoint "
                    f"in {checkpoint} has run; resume with --epochs {found.epoch + 1} or more"
                )
            where = f"the checkpoint in {checkpoint}"
            check_like(found.params, params, where)
            check_like(found.buffers, buffers, where)
            check_like(found.state, optimizer.init(spec.trainable(params)), where)
            params, buffers, state = found.params, found.buffers, found.state
            history, start = found.meta["history"], found.epoch + 1
            restore_generators(found.rng, device)
    if run["impl"] == Impl.compiled.value:
        set_compile_cache()

    steps = num_batches(len(data.y_train), run["batch_size"]) * (run["epochs"] - start)
    progress = _progress(steps) if show_progress else None

    def epoch_start(t: int) -> None:
        say(epoch_header(t))
        if progress is not None:
            progress.update(0, epoch=t + 1)

    def keep(row, p, b, s) -> None:
        if checkpoint is not None:
            _check_good(row, p)
        history.append(asdict(row))
        if checkpoint is not None:
            save_checkpoint(checkpoint, row.epoch, p, b, s, {"run": run, "history": history}, device=device)

    callbacks = Callbacks(
        on_epoch_start=epoch_start,
        on_log=lambda batch, loss, current, size: say(train_line(loss, current, size)),
        on_batch=lambda batch: progress.advance(0) if progress is not None else None,
        on_eval=lambda m: say(eval_report(m.accuracy, m.r2, m.loss)),
        on_epoch_state=keep,
    )
    if progress is not None:
        progress.start()
    try:
        result = fit(
            spec,
            optimizer,
            params,
            buffers,
            data.x_train,
            data.y_train,
            epochs=run["epochs"],
            batch_size=run["batch_size"],
            eval_data=(data.x_test, data.y_test),
            state=state,
            shuffle=run["shuffle"],
            seed=run["seed"],
            compiled=run["impl"] == Impl.compiled.value,
            precision=run["precision"],
            callbacks=callbacks,
            start_epoch=start,
            loss=run["loss"],
        )
    except NonFiniteLoss as e:
        if checkpoint is not None and history:
            kept = f"the last good checkpoint, epoch {len(history)}, is kept in {checkpoint}"
            raise PurestepError(f"{e}; {kept}") from None
        raise
    finally:
        if progress is not None:
            progress.stop()
    return spec.saved(result.params, result.buffers), history


_TUTORIAL = {name: setting.tutorial for name, setting in OPTIMIZER_SETTINGS.items()}
"""The optimizer options' defaults: the tutorial's."""

RESUME_KEYS = (
    "dataset",
    "model",
    "model_args",
    "loss",
    "hidden",
    "batch_size",
    "seed",
    "shuffle",
    "optimizer",
    "precision",
)
"""The settings a checkpoint resumes only with; more epochs, another impl or device are let through."""

ADDED = {"precision": "fp32"}
"""Settings recorded since the first checkpoints, as the runs that wrote those ran."""

CONTENTS = {"data_id": "data sha256", "model_id": "model source file sha256"}
"""What the data and a model file held (`data.fingerprint`, `model_fingerprint`): a checkpoint
resumes only on the same, compared where it recorded them (the earliest did not)."""


def _check_fresh(checkpoint: Path, resume: bool) -> None:
    """A run without `--resume` does not write into a folder holding another run's checkpoints
    (its epochs would replace some of theirs and leave the rest)."""
    from purestep.core.checkpoint import latest

    if not resume and latest(checkpoint) is not None:
        raise typer.BadParameter(
            f"{checkpoint} holds the checkpoints of another run; pass --resume to continue it, "
            "or give another --checkpoint folder"
        )


def _check_resumable(saved: dict[str, Any], run: dict[str, Any], checkpoint: Path) -> None:
    """A checkpoint resumes only the run that wrote it: a usage error naming each setting that
    differs and both its values. More epochs are fine, and so is another impl (eager and compiled
    take the same steps, to float32 rounding); another precision is not (bf16 matmuls would change
    the arithmetic of the rest of the run)."""
    from purestep.core.optim import OptimizerConfig

    before = ADDED | dict(saved.get("run", {}))
    now = json.loads(json.dumps(run))
    if isinstance(before.get("optimizer"), dict):  # fields added since the checkpoint keep their defaults
        before["optimizer"] = json.loads(json.dumps(OptimizerConfig().to_dict())) | before["optimizer"]
    changed = [d for k in RESUME_KEYS for d in _differences(k, before.get(k), now[k])]
    changed += [d for k in CONTENTS if k in before for d in _differences(k, before[k], now.get(k))]
    if changed:
        raise typer.BadParameter(
            f"the checkpoint in {checkpoint} was written with other settings ({'; '.join(changed)}); "
            "use another --checkpoint directory or the same settings"
        )


def _differences(name: str, before: Any, now: Any) -> list[str]:
    """`name: <before> in the checkpoint, <now> now` for the setting, or for each field of a table
    that differs (`optimizer.lr`); none when they are equal."""
    if isinstance(before, dict) and isinstance(now, dict):
        fields = [*now, *(k for k in before if k not in now)]
        return [d for k in fields for d in _differences(f"{name}.{k}", before.get(k), now.get(k))]
    if before == now:
        return []
    if name in CONTENTS and isinstance(before, str) and isinstance(now, str):
        from purestep.search.study import short_id

        name, before, now = CONTENTS[name], short_id(before), short_id(now)
    shown = [v if isinstance(v, str) else json.dumps(v) for v in (before, now)]
    return [f"{name}: {shown[0]} in the checkpoint, {shown[1]} now"]


@app.command()
def train(
    dataset: Dataset = "fashion-mnist",
    data_dir: DataDir = Path("data"),
    model: ModelRef = "mlp",
    model_arg: ModelArgs = None,
    loss: Loss = None,
    epochs: Epochs = 10,
    batch_size: BatchSize = 64,
    lr: LearningRate = _TUTORIAL["lr"],
    optimizer: Optimizer = OptimizerName[_TUTORIAL["optimizer"]],
    momentum: Momentum = _TUTORIAL["momentum"],
    nesterov: Nesterov = _TUTORIAL["nesterov"],
    weight_decay: WeightDecay = _TUTORIAL["weight_decay"],
    alpha: Alpha = None,
    eps: Eps = None,
    centered: Centered = _TUTORIAL["centered"],
    hidden: Hidden = "512,512",
    seed: Seed = 0,
    shuffle: Shuffle = False,
    impl: ImplOpt = Impl.compiled,
    precision: PrecisionOpt = Precision.fp32,
    device: Device = "cpu",
    save: Annotated[
        Path | None,
        path_option(
            "--save", "FILE", help="Write the trained params as safetensors, config and metrics as metadata."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        path_option("--checkpoint", "DIR", help="Write params and optimizer state every epoch here."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint in --checkpoint.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of the tutorial's lines.")
    ] = False,
) -> None:
    """Train a model (defaults: the tutorial's MLP and run) and print the tutorial's lines."""
    config = optimizer_config(
        optimizer.value, lr, momentum, nesterov, weight_decay, alpha=alpha, eps=eps, centered=centered
    )
    if (checkpoint or resume) and impl is Impl.reference:
        raise typer.BadParameter("--checkpoint and --resume need --impl eager or compiled")
    if precision is not Precision.fp32 and impl is Impl.reference:
        raise typer.BadParameter("--precision bf16 needs --impl eager or compiled")
    if resume and checkpoint is None:
        raise typer.BadParameter("--resume needs --checkpoint DIR")
    if save is not None:
        check_output(save, "--save")
    if checkpoint is not None:
        from purestep.core.checkpoint import LATEST

        check_output(checkpoint, "--checkpoint", directory=True, files=(LATEST,))
        _check_fresh(checkpoint, resume)
    widths = parse_hidden(hidden)
    model_args = model_args_for(model, model_arg)
    if model != "mlp" and widths != (512, 512):
        raise typer.BadParameter("--hidden sets the MLP's widths; for another model use --model-arg")
    check_widths(hidden, widths, model_args)
    run: dict[str, Any] = {
        "dataset": dataset_label(dataset),
        "model": model,
        "model_args": model_args,
        "loss": loss.value if loss is not None else None,
        "hidden": list(widths),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "shuffle": shuffle,
        "impl": impl.value,
        "precision": precision.value,
        "device": device,
        "optimizer": config.to_dict(),
    }
    from purestep.core.allocator import keep_freed_memory

    keep_freed_memory()
    start = time.perf_counter()
    data = load_data(dataset, data_dir, device)
    run["loss"] = loss_for(data, run["loss"])
    spec = model_for(data, model, model_args, run["loss"], widths)
    check_model_runs(spec, data, model, run["loss"])
    if checkpoint is not None:  # what a resumed run must train on, whatever its paths say
        from purestep.core.data import fingerprint
        from purestep.search.study import model_fingerprint

        run |= {"data_id": fingerprint(data), "model_id": model_fingerprint(model)}
    lines: list[str] = []
    say = lines.append if json_output else print
    if impl is Impl.reference:
        params, history = _run_reference(spec, config, data, run, say)
    else:
        show = sys.stderr.isatty() and not json_output
        params, history = _run_functional(spec, config, data, run, say, checkpoint, resume, show)
        say("Done!")

    last = history[-1] if history else {}
    summary: dict[str, Any] = {
        "config": run,
        "history": history,
        "test_accuracy": last.get("eval_accuracy"),
        "test_r2": last.get("eval_r2"),
        "test_loss": last.get("eval_loss"),
        "seconds": time.perf_counter() - start,
    }
    if save is not None:
        from purestep.core.interop import save as save_params

        save_params(save, params, finite({"config": run, "history": history}))
        summary["saved"] = str(save)
    if json_output:
        print(strict_json(summary))
