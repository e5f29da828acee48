"""The tutorial's `train_loop`/`test_loop`, kept as plain as the tutorial: the yardstick.

The only additions are a `log` argument (default `print`) so a caller can capture
the lines, and `test_loop` returning its two numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from purestep.core.data import epoch_order
from purestep.core.losses import loss_module, r2_score
from purestep.core.model import Model
from purestep.core.optim import OptimizerConfig


def train_line(loss: float, current: int, size: int) -> str:
    """The tutorial's progress line, e.g. `loss: 2.308122  [    0/60000]`."""
    return f"loss: {loss:>7f}  [{current:>5d}/{size:>5d}]"


def test_report(correct: float, test_loss: float) -> str:
    """The tutorial's end-of-epoch report (two lines and a blank one)."""
    return f"Test Error: \n Accuracy: {(100 * correct):>0.1f}%, Avg loss: {test_loss:>8f} \n"


def regression_report(r2: float, test_loss: float) -> str:
    """The same report for a regression: R² in place of accuracy."""
    return f"Test Error: \n R2: {r2:>0.4f}, Avg loss: {test_loss:>8f} \n"


def eval_report(accuracy: float | None, r2: float | None, test_loss: float) -> str:
    """`test_report` for classification, `regression_report` when there is no accuracy."""
    if accuracy is not None:
        return test_report(accuracy, test_loss)
    return regression_report(r2 if r2 is not None else float("nan"), test_loss)


def epoch_header(t: int) -> str:
    """The tutorial's `Epoch t+1` banner."""
    return f"Epoch {t + 1}\n-------------------------------"


def train_loop(dataloader, model, loss_fn, optimizer, log: Callable[[str], None] = print) -> None:
    """The tutorial's training loop over one epoch."""
    size = len(dataloader.dataset)
    model.train()
    for batch, (X, y) in enumerate(dataloader):
        # Compute prediction and loss
        pred = model(X)
        loss = loss_fn(pred, y)

        # Backpropagation
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

        if batch % 100 == 0:
            loss, current = loss.item(), batch * len(X)
            log(train_line(loss, current, size))


def test_loop(dataloader, model, loss_fn, log: Callable[[str], None] = print) -> tuple[float, float]:
    """The tutorial's evaluation; returns `(accuracy, avg_loss)` as well as printing them.

    For float targets (a regression) the first number is R² instead of accuracy.
    """
    model.eval()
    size = len(dataloader.dataset)
    num_batches = len(dataloader)
    test_loss, correct = 0, 0
    targets = dataloader.dataset.tensors[1]
    regression = targets.is_floating_point()

    with torch.no_grad():
        for X, y in dataloader:
            pred = model(X)
            test_loss += loss_fn(pred, y).item()
            if regression:
                correct += (pred - y).square().sum().item()
            else:
                correct += (pred.argmax(1) == y).type(torch.float).sum().item()

    test_loss /= num_batches
    if regression:
        r2 = r2_score(correct, targets)
        log(regression_report(r2, test_loss))
        return r2, test_loss
    correct /= size
    log(test_report(correct, test_loss))
    return correct, test_loss


def torch_optimizer(config: OptimizerConfig, parameters: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    """The `torch.optim` optimizer that `config.build()` reproduces."""
    if config.name == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.name == "rmsprop":
        return torch.optim.RMSprop(
            parameters,
            lr=config.lr,
            alpha=config.alpha,
            eps=config.eps,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
            centered=config.centered,
        )
    cls = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return cls(parameters, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)


def loader(x: Tensor, y: Tensor, batch_size: int, order: Tensor | None = None) -> DataLoader:
    """A `DataLoader` over preloaded tensors, in file order or in `order`.

    It has a generator of its own: a `DataLoader` otherwise draws a seed for its workers from
    the global generator each time it is iterated, which would shift the dropout masks that
    the model draws from there, and a loop without a `DataLoader` draws no such seed.
    """
    sampler = order.tolist() if order is not None else None
    return DataLoader(
        TensorDataset(x, y), batch_size=batch_size, sampler=sampler, generator=torch.Generator()
    )


def reference_model(model: Model, seed: int, device: torch.device | str = "cpu") -> nn.Module:
    """`torch.manual_seed(seed); NeuralNetwork()`, as the tutorial builds it (any model's factory)."""
    torch.manual_seed(seed)
    return model.module().to(device)


def fit_reference(
    spec: Model,
    config: OptimizerConfig,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    *,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
    shuffle: bool = False,
    log: Callable[[str], None] = print,
    loss: str = "cross_entropy",
) -> tuple[nn.Module, list[tuple[float, float]]]:
    """The tutorial's main loop, fed the same batch order as `fit`; returns model and test metrics."""
    model = reference_model(spec, seed, train[0].device)
    loss_fn = loss_module(loss)
    optimizer = torch_optimizer(config, model.parameters())
    test_dataloader = loader(*test, batch_size)
    history = []
    for t in range(epochs):
        log(epoch_header(t))
        order = epoch_order(len(train[1]), t, seed) if shuffle else None
        train_loop(loader(*train, batch_size, order), model, loss_fn, optimizer, log)
        history.append(test_loop(test_dataloader, model, loss_fn, log))
    log("Done!")
    return model, history
