"""`purestep check`: run the equivalence pairs on one init and one batch order; print the table."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from purestep.cli._app import app
from purestep.cli.common import (
    check_model_runs,
    check_widths,
    load_data,
    model_args_for,
    model_for,
    optimizer_config,
)
from purestep.cli.options import (
    BatchSize,
    DataDir,
    Dataset,
    Device,
    Hidden,
    LearningRate,
    ModelArgs,
    ModelRef,
    Momentum,
    Nesterov,
    Seed,
    WeightDecay,
    parse_hidden,
)


class Against(str, Enum):
    jax = "jax"


@app.command()
def check(
    dataset: Dataset = "fashion-mnist",
    data_dir: DataDir = Path("data"),
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Steps to run (default: one whole epoch).")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, max=1, help="One whole epoch (the default).")] = 1,
    batch_size: BatchSize = 64,
    lr: LearningRate = 1e-3,
    momentum: Momentum = 0.0,
    nesterov: Nesterov = False,
    weight_decay: WeightDecay = 0.0,
    hidden: Hidden = "512,512",
    model: ModelRef = "mlp",
    model_arg: ModelArgs = None,
    seed: Seed = 0,
    device: Device = "cpu",
    against: Annotated[
        list[Against] | None, typer.Option("--against", help="Also check against another framework.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Prove the functional core equal to the tutorial's loop; exit 1 if any pair is out of bounds.

    The SGD rows use --lr, --momentum, --nesterov and --weight-decay; the Adam rows the same
    learning rate and weight decay. Compiled, batched and JAX rows compare every step from the
    same state (lockstep) and report the free-running trajectories beside, as facts.
    """
    config = optimizer_config("sgd", lr, momentum, nesterov, weight_decay)
    widths = parse_hidden(hidden)
    if model != "mlp" and (widths != (512, 512) or against):
        raise typer.BadParameter(
            "--hidden and --against jax apply to the MLP; for another model use --model-arg"
        )
    model_args = model_args_for(model, model_arg)
    check_widths(hidden, widths, model_args)
    data = load_data(dataset, data_dir, device)
    if data.y_train.is_floating_point():
        raise typer.BadParameter(
            f"check compares classification steps (cross-entropy); {data.name} is a regression"
        )
    spec = model_for(data, model, model_args, "cross_entropy", widths)
    check_model_runs(spec, data, model, "cross_entropy")

    from purestep.check import run_checks

    extra = _jax_rows(config, batch_size) if against else None
    rows, same_lines = run_checks(
        data, config, seed=seed, batch_size=batch_size, steps=steps, model=spec, extra=extra
    )
    ok = same_lines and all(r.passed for r in rows)
    if json_output:
        report = {"rows": [_row_json(r) for r in rows], "printed_lines_identical": same_lines, "passed": ok}
        from purestep.core.files import strict_json

        print(strict_json(report))
    else:
        _print_table(rows, same_lines)
    if not ok:
        raise typer.Exit(1)


def _row_json(r) -> dict[str, object]:
    flip = r.first_flip
    return {
        "pair": r.pair,
        "how": "lockstep" if r.lockstep else "free-running",
        "steps": r.steps,
        "max_abs_param_diff": r.max_abs_param_diff,
        "max_abs_loss_diff": r.max_abs_loss_diff,
        "error": r.error,
        "bound": r.bound,
        "relative": r.relative,
        "passed": r.passed,
        "failure": r.failure or None,
        "free_running_distance": r.free_distance,
        "first_branch_difference": None
        if flip is None
        else {"step": flip.step, "units": flip.units, "closest": flip.closest, "rounding": flip.rounding},
        "steps_with_branch_differences": r.flip_steps,
    }


def _jax_rows(config, batch_size: int):
    from purestep.core.errors import PurestepError

    try:
        from purestep.jax_interop import jax_rows
    except ImportError as e:
        raise PurestepError(f"--against jax needs jax and optax: pip install 'purestep[jax]' ({e})") from None
    return lambda spec, train, seed: jax_rows(spec, train, seed, config=config, batch_size=batch_size)


def _print_table(rows, same_lines: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="purestep check")
    columns = ("pair", "how", "steps", "max abs param diff", "max abs loss diff", "error", "bound", "result")
    for column in columns:
        table.add_column(column, justify="left" if column in ("pair", "how") else "right")
    for r in rows:
        table.add_row(
            r.pair,
            "lockstep" if r.lockstep else "free-running",
            str(r.steps),
            f"{r.max_abs_param_diff:.3g}",
            f"{r.max_abs_loss_diff:.3g}",
            f"{r.error:.3g}" + (" rel" if r.relative else ""),
            r.bound_text(),
            "pass" if r.passed else "FAIL",
        )
    verdict = "pass" if same_lines else "FAIL"
    table.add_row("printed lines, reference vs eager", "free-running", "", "", "", "", "identical", verdict)
    console = Console(width=140)
    console.print(table)
    for r in rows:
        if r.lockstep:
            console.print(f"{r.pair}: {r.facts()}", highlight=False)
    print(
        "free-running: both sides run the whole way from one init; error is the final params' max abs"
        " diff (rel: over the largest |param|).\n"
        "lockstep: both sides step from the same carry every step; error is the worst step's largest"
        " difference over the largest change that step makes, bound what float32 rounding and ReLU"
        " inputs within rounding of zero allow there (README, 'What equal to the tutorial means')."
    )
