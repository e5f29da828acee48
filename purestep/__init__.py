"""purestep: the PyTorch tutorial's training, as pure functions.

    model = mlp(); params, buffers = model.init(seed=0)   # or functional(MyModule, width=64)
    opt = sgd(lr=1e-3); state = opt.init(params)
    step = compile_step(make_train_step(model, opt))
    params, buffers, state, loss = step(params, buffers, state, x, y)

Names load on first use, so `import purestep` (and the CLI's `--help`) does not
import torch until a function is asked for.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "purestep.core.data": ["DATASETS", "Dataset", "batches", "epoch_order", "load_dataset", "split"],
    "purestep.core.errors": ["DataError", "PurestepError"],
    "purestep.core.interop": ["load", "save"],
    "purestep.core.loop": [
        "Callbacks",
        "EpochMetrics",
        "EvalMetrics",
        "FitResult",
        "NonFiniteLoss",
        "evaluate",
        "evaluate_trials",
        "fit",
        "fit_trials",
        "steps_for",
        "train_epoch",
    ],
    "purestep.core.losses": ["LOSSES"],
    "purestep.core.model": [
        "Buffers",
        "ConvNet",
        "Model",
        "NeuralNetwork",
        "Params",
        "build_model",
        "cnn",
        "functional",
        "mlp",
        "state_of",
    ],
    "purestep.core.optim": [
        "Optimizer",
        "OptimizerConfig",
        "State",
        "adam",
        "adamw",
        "rmsprop",
        "sgd",
        "tunable",
    ],
    "purestep.core.step": [
        "batch_eval_over_trials",
        "batch_over_trials",
        "compile_step",
        "default_compile_cache",
        "make_eval_step",
        "make_loss",
        "make_train_step",
        "set_compile_cache",
        "stack",
        "unstack",
    ],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'purestep' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from purestep.core.data import DATASETS, Dataset, batches, epoch_order, load_dataset, split
    from purestep.core.errors import DataError, PurestepError
    from purestep.core.interop import load, save
    from purestep.core.loop import (
        Callbacks,
        EpochMetrics,
        EvalMetrics,
        FitResult,
        NonFiniteLoss,
        evaluate,
        evaluate_trials,
        fit,
        fit_trials,
        steps_for,
        train_epoch,
    )
    from purestep.core.losses import LOSSES
    from purestep.core.model import (
        Buffers,
        ConvNet,
        Model,
        NeuralNetwork,
        Params,
        build_model,
        cnn,
        functional,
        mlp,
        state_of,
    )
    from purestep.core.optim import Optimizer, OptimizerConfig, State, adam, adamw, rmsprop, sgd, tunable
    from purestep.core.step import (
        batch_eval_over_trials,
        batch_over_trials,
        compile_step,
        default_compile_cache,
        make_eval_step,
        make_loss,
        make_train_step,
        set_compile_cache,
        stack,
        unstack,
    )
