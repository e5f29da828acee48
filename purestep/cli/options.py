"""Options shared by several commands, declared once with their validation."""

from __future__ import annotations

import math
import re
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class DatasetName(str, Enum):
    fashion_mnist = "fashion-mnist"
    mnist = "mnist"
    kmnist = "kmnist"
    digits = "digits"


class OptimizerName(str, Enum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"
    rmsprop = "rmsprop"


def _positive(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise typer.BadParameter(f"must be a finite number > 0, got {value}")
    return value


def _non_negative(value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise typer.BadParameter(f"must be a finite number >= 0, got {value}")
    return value


def _momentum(value: float) -> float:
    if not math.isfinite(value) or not 0 <= value < 1:
        raise typer.BadParameter(f"must be in [0, 1), got {value}")
    return value


def _alpha(value: float | None) -> float | None:
    if value is not None and (not math.isfinite(value) or not 0 <= value <= 1):
        raise typer.BadParameter(f"must be in [0, 1], got {value}")
    return value


def _eps(value: float | None) -> float | None:
    return None if value is None else _positive(value)


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
LearningRate = Annotated[float, typer.Option("--lr", callback=_positive, help="Learning rate (> 0).")]
Optimizer = Annotated[OptimizerName, typer.Option("--optimizer", help="Optimizer.")]
Momentum = Annotated[
    float, typer.Option("--momentum", callback=_momentum, help="Momentum in [0, 1) (SGD, RMSprop).")
]
Nesterov = Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (SGD).")]
Alpha = Annotated[
    float | None,
    typer.Option(
        "--alpha",
        callback=_alpha,
        help="RMSprop's smoothing constant of the squared-gradient average, in [0, 1] (default 0.99).",
    ),
]
Eps = Annotated[
    float | None,
    typer.Option(
        "--eps",
        callback=_eps,
        help="Term added to the denominator, > 0 (default 1e-8; Adam, AdamW, RMSprop).",
    ),
]
Centered = Annotated[
    bool,
    typer.Option("--centered/--no-centered", help="RMSprop divides by the gradient's estimated variance."),
]
WeightDecay = Annotated[
    float, typer.Option("--weight-decay", callback=_non_negative, help="Weight decay (>= 0).")
]
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
