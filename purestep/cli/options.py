"""Options shared by several commands, declared once with their validation."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Container
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from purestep.core.settings import OPTIMIZER_SETTINGS, OPTIMIZERS

# the names of purestep.core.data.DATASETS, here without importing torch
DATASET_NAMES = ("fashion-mnist", "mnist", "kmnist", "digits", "diabetes")

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


def _dataset(value: str) -> str:
    """A built-in name as is; a file (a suffix or a folder in the name, or it exists) as an absolute path.

    The file itself is read, and any problem with it reported (exit 1), when the data loads.
    """
    path = Path(value)
    if value in DATASET_NAMES:
        return value
    if value and (path.suffix or "/" in value or os.sep in value or path.exists()):
        return str(path.expanduser().absolute())
    raise typer.BadParameter(
        f"must be one of {', '.join(DATASET_NAMES)}, or an .npz/.safetensors file; got {value!r}"
    )


def dataset_label(dataset: str) -> str:
    """The dataset's name in study names and reports: the built-in name, or the file's stem."""
    return dataset if dataset in DATASET_NAMES else Path(dataset).stem


def _path(value: str | Path) -> Path:
    """A path option's value; an empty one, which would mean the current folder, is refused."""
    if isinstance(value, str) and not value:
        raise typer.BadParameter("must not be empty; give a path")
    return Path(value)


def path_option(flag: str, metavar: str = "PATH", **kwargs: Any) -> Any:
    """A Typer option for a path the command writes or reads: an empty value is refused (exit 2)."""
    return typer.Option(flag, parser=_path, metavar=metavar, **kwargs)


def _data_dir(value: str | Path) -> Path:
    """`--data-dir`: not empty, and not a file."""
    path = _path(value)
    if path.exists() and not path.is_dir():
        raise typer.BadParameter(f"{path} is not a directory")
    return path


def _device(value: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
        raise typer.BadParameter(f"must be cpu, cuda or cuda:N, got {value!r}")
    return value


Dataset = Annotated[
    str,
    typer.Option(
        "--dataset",
        callback=_dataset,
        metavar="NAME|FILE",
        help="fashion-mnist, mnist, kmnist (downloaded); digits or diabetes (regression), bundled with "
        "scikit-learn, offline; or an .npz/.safetensors file holding x_train, y_train, x_test, y_test.",
    ),
]
DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="PURESTEP_DATA",
        parser=_data_dir,
        metavar="DIR",
        help="Where torchvision datasets live (downloaded when missing).",
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
SEED_MAX = 2**32 - 1
"""The largest seed every consumer takes: numpy's and Optuna's samplers' seeds are 32-bit."""
Seed = Annotated[
    int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed of the init and the batch order.")
]
Shuffle = Annotated[
    bool, typer.Option("--shuffle/--no-shuffle", help="Seeded permutation per epoch, or file order.")
]
Device = Annotated[str, typer.Option("--device", callback=_device, help="cpu, cuda or cuda:N.")]


def _model_args(values: list[str] | None) -> list[str]:
    for value in values or []:
        key, sep, _ = value.partition("=")
        if not sep or not key.isidentifier():
            raise typer.BadParameter(f"must be key=value, e.g. dropout=0.2; got {value!r}")
    return values or []


def parse_value(text: str) -> bool | int | float | str | tuple[int, ...]:
    """A command-line value as the Python value it spells: true/false, an integer, a number,
    integers separated by commas (a tuple, e.g. widths; one with a trailing comma, `64,`), else
    the string itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    parts = text.split(",")
    if len(parts) > 1 and parts[-1].strip() == "":  # "64,": a tuple of one
        parts = parts[:-1]
    if "," in text and all(p.strip().lstrip("-").isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return text


def parse_model_args(values: list[str] | None, text: Container[str] = ()) -> dict[str, object]:
    """`["width=64", "dropout=0.2"]` to `{"width": 64, "dropout": 0.2}` (already validated); the
    arguments named in `text` (those whose default is a string) keep the text as typed (`tag=007`)."""
    pairs = (value.partition("=") for value in values or [])
    return {k: v if k in text else parse_value(v) for k, _, v in pairs}


ModelRef = Annotated[
    str,
    typer.Option(
        "--model", help="mlp (the tutorial's), cnn (BatchNorm and dropout), or path/to/file.py:factory."
    ),
]
ModelArgs = Annotated[
    list[str] | None,
    typer.Option(
        "--model-arg",
        callback=_model_args,
        help="A keyword argument of the model's factory, key=value (repeatable), e.g. dropout=0.2.",
    ),
]


class LossName(str, Enum):
    cross_entropy = "cross_entropy"
    nll = "nll"
    mse = "mse"


Loss = Annotated[
    LossName | None,
    typer.Option(
        "--loss",
        help="cross_entropy (the default for labels), nll (the model ends in log_softmax), "
        "or mse (the default for float targets: a regression).",
    ),
]


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
