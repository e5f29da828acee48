"""Helpers shared by commands: turning validated options into core objects."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from purestep.core.files import not_a_file
from purestep.core.settings import OPTIMIZER_SETTINGS, tutorial

if TYPE_CHECKING:
    from purestep.core.data import Dataset
    from purestep.core.model import Model, ModelError
    from purestep.core.optim import OptimizerConfig


def optimizer_config(
    name: str,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    *,
    alpha: float | None = None,
    eps: float | None = None,
    centered: bool = False,
) -> OptimizerConfig:
    """A validated `OptimizerConfig`; an impossible combination is a usage error (exit 2).

    `alpha` and `eps` are None when not given, so that giving one to an optimizer without it
    is refused rather than ignored.
    """
    from purestep.core.optim import OptimizerConfig

    given = {
        "momentum": momentum != 0,
        "nesterov": nesterov,
        "alpha": alpha is not None,
        "eps": eps is not None,
        "centered": centered,
    }
    for key, on in given.items():
        readers = OPTIMIZER_SETTINGS[key].optimizers
        if on and name not in readers:
            flag = "--" + key.replace("_", "-")
            raise typer.BadParameter(f"{flag} applies to --optimizer {', '.join(readers)} only")
    config = OptimizerConfig(
        name,  # type: ignore[arg-type]
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        eps=tutorial("eps") if eps is None else eps,
        alpha=tutorial("alpha") if alpha is None else alpha,
        centered=centered,
    )
    try:
        config.build()
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    return config


def check_output(path: Path, option: str, *, directory: bool = False, files: Sequence[str] = ()) -> None:
    """Refuse, before any work, an output the end of the run could not write: a directory where a
    file goes (or a file where a directory goes; for a directory, where one of the `files` the run
    writes in it goes), a device, FIFO or socket where a file goes (a rename would replace it), a
    file in the way of its folders, or a folder this user cannot write in; and what permissions
    cannot tell (a read-only or virtual file system, `/proc`), by creating the folder the output
    goes in and writing a file there (`_probe`). A usage error (exit 2) naming `option`; nothing
    is left behind."""
    path = path.absolute()
    problem = None
    in_the_way = [path / f for f in files if not_a_file(path / f)] if directory else []
    if directory and os.path.lexists(path) and not path.is_dir():
        problem = f"{path} is a file, not a directory"
    elif in_the_way:
        what = "a directory" if in_the_way[0].is_dir() else "not a regular file"
        problem = f"{in_the_way[0]} is {what}, where the run writes a file of that name"
    elif not directory and path.is_dir():
        problem = f"{path} is a directory; give a file name"
    elif not directory and not_a_file(path):
        problem = f"{path} exists and is not a regular file (a device, a FIFO); give a file name"
    else:
        existing = path if directory else path.parent  # the nearest folder that exists, or what is in its way
        while not os.path.lexists(existing):
            existing = existing.parent
        if not existing.is_dir():
            what = "a file" if existing.is_file() else "not a directory"
            problem = f"{existing} is {what}, so {path} cannot be written"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} is not writable, so {path} cannot be written"
    if problem is not None:
        raise typer.BadParameter(problem, param_hint=option)
    _probe(path if directory else path.parent, option)


def _probe(folder: Path, option: str) -> None:
    """Create `folder`, write a file in it and remove both again; refused (exit 2) if that fails."""
    created = []
    parent = folder
    while not os.path.lexists(parent):
        created.append(parent)
        parent = parent.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=".purestep-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise typer.BadParameter(f"cannot write in {folder}: {why}", param_hint=option) from None
    finally:
        for made in created:
            with contextlib.suppress(OSError):
                made.rmdir()


def resolve_device(device: str) -> str:
    """The device string, checked against what this machine has (exit 1 if it lacks it)."""
    import torch

    from purestep.core.errors import PurestepError

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PurestepError(f"--device {device} was asked for, but no CUDA device is available here")
    return device


def load_data(dataset: str, data_dir: Path, device: str) -> Dataset:
    """The dataset's tensors on `device`: built in (downloaded into `data_dir` when missing) or a file's."""
    from purestep.core.data import load_dataset

    return load_dataset(dataset, data_dir, resolve_device(device))


def loss_for(data: Dataset, loss: str | None) -> str:
    """The loss `--loss` names, or the task's default; a loss that does not fit the targets is a
    usage error (exit 2)."""
    from purestep.core.losses import loss_for_targets

    try:
        return loss_for_targets(loss, data.y_train)
    except ValueError as e:
        raise typer.BadParameter(f"{e} ({data.name})", param_hint="--loss") from None


def model_for(
    data: Dataset, ref: str, model_args: dict[str, object], loss: str, hidden: tuple[int, ...] | None = None
) -> Model:
    """The model `--model` names, fitted to the data's input shape and outputs, with `--model-arg`s;
    `hidden` sets the MLP's widths unless an argument does. A model that cannot be found or built
    is a usage error (exit 2)."""
    from purestep.core.model import ModelError, build_model, check_model_args

    args = dict(model_args)
    if hidden is not None and ref == "mlp":
        args.setdefault("hidden", hidden)
    try:
        check_model_args(ref, model_args)
        return build_model(ref, data.in_shape, data.out_features, args, loss)
    except ModelError as e:
        raise model_usage_error(e) from None


def model_args_for(ref: str, values: list[str] | None) -> dict[str, object]:
    """The `--model-arg`s as the values they spell (`parse_value`), but text for an argument whose
    default is a string (`tag=007` stays "007"). A model that cannot be found is a usage error."""
    from purestep.cli.options import parse_model_args
    from purestep.core.model import ModelError, defaults, resolve_factory

    if not values:
        return {}
    try:
        known = defaults(resolve_factory(ref))
    except ModelError as e:
        raise model_usage_error(e) from None
    return parse_model_args(values, {k for k, v in known.items() if isinstance(v, str)})


def check_model_runs(spec: Model, data: Dataset, ref: str, loss: str) -> None:
    """Refuse, before anything trains by any impl, a model that cannot run on two training rows,
    whose outputs the loss would score wrongly, or that training cannot change
    (`model.check_runs`): a usage error (exit 2)."""
    import torch

    from purestep.core.losses import is_regression
    from purestep.core.model import ModelError, check_runs

    top = None if is_regression(loss) else int(torch.cat([data.y_train, data.y_test]).max())
    try:
        check_runs(spec, data.x_train[:2], data.y_train[:2], loss, top)
    except ModelError as e:
        raise typer.BadParameter(f"--model {ref} {e}") from None


def model_usage_error(e: ModelError) -> typer.BadParameter:
    """A model that cannot be found or built as a usage error (exit 2), naming `--model-arg` when
    an argument is what is wrong."""
    from purestep.core.model import ModelArgError

    return typer.BadParameter(str(e), param_hint="--model-arg" if isinstance(e, ModelArgError) else None)


def _shown(value: object) -> str:
    """A `--model-arg` value as it is typed: `true`, `0.5`, `64,32` (`64,` for one width)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) + ("," if len(value) == 1 else "")
    return str(value)


DEFAULT_HIDDEN = (512, 512)
"""`--hidden`'s default: the tutorial's widths."""


def check_widths(hidden: str, widths: tuple[int, ...], model_args: Mapping[str, object]) -> None:
    """Refuse `--hidden` given beside a `--model-arg hidden=...` of other widths: one of the two
    would be ignored. `--hidden` at its default (`DEFAULT_HIDDEN`) leaves the argument's widths."""
    given = model_args.get("hidden")
    if "hidden" not in model_args or widths == DEFAULT_HIDDEN:
        return
    if not (isinstance(given, (tuple, list)) and tuple(given) == widths):
        raise typer.BadParameter(
            f"--hidden {hidden} and --model-arg hidden={_shown(given)} disagree; give the widths once",
            param_hint="--hidden",
        )
