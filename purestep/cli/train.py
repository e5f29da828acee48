"""`purestep train`: the tutorial's training run, by the reference loop or the functional step."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from purestep.cli._app import app
from purestep.cli.common import load_data, optimizer_config
from purestep.cli.options import (
    BatchSize,
    DataDir,
    Dataset,
    DatasetName,
    Device,
    Epochs,
    Hidden,
    Impl,
    ImplOpt,
    LearningRate,
    Momentum,
    Nesterov,
    Optimizer,
    OptimizerName,
    Seed,
    Shuffle,
    WeightDecay,
    parse_hidden,
)


def _progress(enabled: bool, total: int):
    """A rich progress bar on stderr, or None when stderr is not a terminal."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    progress.add_task("train", total=total, epoch=1)
    return progress


@app.command()
def train(
    dataset: Dataset = DatasetName.fashion_mnist,
    data_dir: DataDir = Path("data"),
    epochs: Epochs = 10,
    batch_size: BatchSize = 64,
    lr: LearningRate = 1e-3,
    optimizer: Optimizer = OptimizerName.sgd,
    momentum: Momentum = 0.0,
    nesterov: Nesterov = False,
    weight_decay: WeightDecay = 0.0,
    hidden: Hidden = "512,512",
    seed: Seed = 0,
    shuffle: Shuffle = False,
    impl: ImplOpt = Impl.compiled,
    device: Device = "cpu",
    save: Annotated[
        Path | None,
        typer.Option("--save", help="Write the trained params as safetensors, config and metrics as metadata."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of the tutorial's lines.")
    ] = False,
) -> None:
    """Train the tutorial's MLP (defaults: the tutorial's) and print the tutorial's lines."""
    config = optimizer_config(optimizer.value, lr, momentum, nesterov, weight_decay)
    widths = parse_hidden(hidden)
    start = time.perf_counter()
    data = load_data(dataset.value, data_dir, device)

    from purestep.core.model import MLP
    from purestep.core.reference import epoch_header, test_report, train_line

    spec = MLP(data.in_features, widths, data.classes)
    lines: list[str] = []
    say = lines.append if json_output else print

    if impl is Impl.reference:
        from purestep.core.reference import fit_reference

        model, tests = fit_reference(
            spec,
            config,
            (data.x_train, data.y_train),
            (data.x_test, data.y_test),
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            shuffle=shuffle,
            log=say,
        )
        params = {k: v.detach() for k, v in model.named_parameters()}
        history = [
            {"epoch": t, "train_loss": None, "eval_loss": loss, "eval_accuracy": acc}
            for t, (acc, loss) in enumerate(tests)
        ]
    else:
        from dataclasses import asdict

        from purestep.core.data import num_batches
        from purestep.core.loop import Callbacks, fit
        from purestep.core.step import set_compile_cache

        if impl is Impl.compiled:
            set_compile_cache()
        steps_per_epoch = num_batches(len(data.y_train), batch_size)
        progress = _progress(sys.stderr.isatty() and not json_output, steps_per_epoch * epochs)

        def advance(batch: int) -> None:
            if progress is not None:
                progress.advance(0)

        def epoch_start(t: int) -> None:
            say(epoch_header(t))
            if progress is not None:
                progress.update(0, epoch=t + 1)

        callbacks = Callbacks(
            on_epoch_start=epoch_start,
            on_log=lambda batch, loss, current, size: say(train_line(loss, current, size)),
            on_batch=advance,
            on_eval=lambda m: say(test_report(m.accuracy, m.loss)),
        )
        if progress is not None:
            progress.start()
        try:
            result = fit(
                spec,
                config.build(),
                spec.init(seed, data.x_train.device),
                data.x_train,
                data.y_train,
                epochs=epochs,
                batch_size=batch_size,
                eval_data=(data.x_test, data.y_test),
                shuffle=shuffle,
                seed=seed,
                compiled=impl is Impl.compiled,
                callbacks=callbacks,
            )
        finally:
            if progress is not None:
                progress.stop()
        say("Done!")
        params = result.params
        history = [asdict(row) for row in result.history]

    seconds = time.perf_counter() - start
    summary: dict[str, Any] = {
        "config": {
            "dataset": dataset.value,
            "hidden": list(widths),
            "epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
            "shuffle": shuffle,
            "impl": impl.value,
            "device": device,
            "optimizer": config.to_dict(),
        },
        "history": history,
        "test_accuracy": history[-1]["eval_accuracy"],
        "test_loss": history[-1]["eval_loss"],
        "seconds": seconds,
    }
    if save is not None:
        from purestep.core.interop import save as save_params

        save_params(save, params, {k: summary[k] for k in ("config", "history")})
        summary["saved"] = str(save)
    if json_output:
        print(json.dumps(summary))
