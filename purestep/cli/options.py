"""Options shared by several commands, declared once with their validation."""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from purestep.core.settings import OPTIMIZER_SETTINGS, OPTIMIZERS


class DatasetName(str, Enum):
    fashion_mnist = "fashion-mnist"
    mnist = "mnist"
    kmnist = "kmnist"
    digits = "digits"


OptimizerName = Enum(  # type: ignore[misc]
    "OptimizerName", {name: name for name in OPTIMIZERS}, type=str
)


def _setting(name: str) -> Callable[[Any], Any]:
    """The option's callback: refuses a value outside the setting's domain (None: not given)."""
    setting = OPTIMIZER_SETTINGS[name]

    def check(value: Any) -> Any:
        problem = None if value is None else setting.problem(value)
        if problem is not None:
            raise typer.BadParameter(problem)
        return value

    return check


def _help(name: str, default_note: bool = False) -> str:
    """The option's help, from the setting's: what it does, its domain, which optimizers read it."""
    setting = OPTIMIZER_SETTINGS[name]
    text = setting.help.rstrip(".")
    if setting.kind is float:
        text += f", in {setting.describe_bounds()}"
    if default_note:
        text += f" (default {setting.tutorial:g})"
    if setting.optimizers != OPTIMIZERS:
        text += f"; {', '.join(setting.optimizers)}"
    return text + "."


def _option(name: str, flag: str, default_note: bool = False) -> Any:
    """A Typer option for an optimizer setting, checked and explained by its one description."""
    return typer.Option(flag, callback=_setting(name), help=_help(name, default_note))


def _device(value: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise typer.BadParameter(f"must be cpu, cuda or cuda:N, got {value!r}")
    return value


Dataset = Annotated[
    DatasetName,
    typer.Option("--dataset", help="Dataset; digits is bundled with scikit-learn and works offline."),
]
DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="PURESTEP_DATA",
        help="Where torchvision datasets live (downloaded when missing).",
        file_okay=False,
    ),
]
Epochs = Annotated[int, typer.Option("--epochs", min=1, help="Passes over the training set.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Samples per step.")]
LearningRate = Annotated[float, _option("lr", "--lr")]
Optimizer = Annotated[OptimizerName, typer.Option("--optimizer", help=_help("optimizer"))]
Momentum = Annotated[float, _option("momentum", "--momentum")]
Nesterov = Annotated[bool, typer.Option("--nesterov/--no-nesterov", help=_help("nesterov"))]
WeightDecay = Annotated[float, _option("weight_decay", "--weight-decay")]
Alpha = Annotated[float | None, _option("alpha", "--alpha", default_note=True)]
Eps = Annotated[float | None, _option("eps", "--eps", default_note=True)]
Centered = Annotated[bool, typer.Option("--centered/--no-centered", help=_help("centered"))]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Seed of the init and the batch order.")]
Shuffle = Annotated[
    bool, typer.Option("--shuffle/--no-shuffle", help="Seeded permutation per epoch, or file order.")
]
Device = Annotated[str, typer.Option("--device", callback=_device, help="cpu, cuda or cuda:N.")]


class Impl(str, Enum):
    reference = "reference"
    eager = "eager"
    compiled = "compiled"


def _hidden(value: str) -> str:
    parts = [p.strip() for p in value.split(",")]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise typer.BadParameter(f"must be positive widths separated by commas, e.g. 512,512; got {value!r}")
    return value


def parse_hidden(value: str) -> tuple[int, ...]:
    """`"512,512"` to `(512, 512)` (the option's callback has already validated it)."""
    return tuple(int(p) for p in value.split(","))


Hidden = Annotated[str, typer.Option("--hidden", callback=_hidden, help="Hidden layer widths, e.g. 512,512.")]
ImplOpt = Annotated[
    Impl,
    typer.Option("--impl", help="The tutorial's nn.Module loop, or the functional step eager or compiled."),
]


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="Matmuls in fp32, or bf16 autocast (params and optimizer stay fp32; faster where the "
        "CPU has AVX-512 BF16/AMX, or on a recent GPU).",
    ),
]
