"""Compiled steps saved on disk as AOTInductor packages, which a later process loads and runs
without Dynamo, tracing or a compiler: a warm start in milliseconds.

A step is captured once with `make_fx` (a pure step is one flat graph of ATen ops; the
`torch.func` transforms inside it trace away), exported with `torch.export`, compiled with
inductor's options into a `.pt2` package (`torch._inductor.aoti_compile_and_package`, the
documented AOTInductor entry point), and loaded with `aoti_load_package`. A package's name
is the hash of everything that shapes its graph (`key`): the caller's description of the
step (model, optimizer family, loss, precision, batching), every argument's key, shape,
strides, dtype and device, the inductor options, torch's version and purestep's core
source. The package's sidecar JSON repeats those parts, and a load checks them.

A step's data (its tensor arguments; dicts hold params, buffers and state) share a batch on
dim 0. With `every_batch`, that dim is symbolic (`torch.export.Dim`, 2 rows or more): one
package serves every batch size and an epoch's short last batch, so a study that draws four
batch sizes compiles one train graph, not eight. A 1-row batch, or a step whose export
cannot keep the batch symbolic, gets a package of its own shape.

Fast path (`fastpath.enabled()`): the package is loaded through the private
`torch._C._aoti.AOTIModelPackageLoader`, which needs neither Dynamo nor inductor's Python
modules (about 1.2-2 s of imports); otherwise through `aoti_load_package`, which imports them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from purestep.core import fastpath
from purestep.core.errors import holding_signals
from purestep.core.files import replacing, write_json

Runner = Callable[[list[Tensor]], list[Tensor]]
Structure = list[list[str] | None]
"""A step's arguments or results: per tree, its dict keys in order, or None for one tensor."""

_CORE = Path(__file__).resolve().parent


def structure(trees: Sequence[Any]) -> Structure | None:
    """Per tree, its keys (a dict of tensors) or None (a tensor); None if any leaf is not a tensor."""
    out: Structure = []
    for tree in trees:
        if isinstance(tree, Tensor):
            out.append(None)
        elif isinstance(tree, dict) and all(isinstance(v, Tensor) for v in tree.values()):
            out.append(list(tree))
        else:
            return None
    return out


def leaves(trees: Sequence[Any]) -> list[Tensor]:
    """The tensors of trees, dicts' values in order."""
    return [leaf for tree in trees for leaf in (tree.values() if isinstance(tree, dict) else (tree,))]


def rebuild(shape: Structure, values: Sequence[Tensor]) -> list[Any]:
    """Trees of `shape` from their leaves in order."""
    it = iter(values)
    return [next(it) if keys is None else {k: next(it) for k in keys} for keys in shape]


def is_data(trees: Sequence[Any]) -> list[bool]:
    """Per leaf (`leaves`' order), whether it is the step's data: a tensor argument, not a dict's."""
    return [flag for tree in trees for flag in ([False] * len(tree) if isinstance(tree, dict) else [True])]


def batch_rows(trees: Sequence[Any]) -> int | None:
    """The rows of a step's batch when one package can serve every batch size: its data (the
    tensor arguments) all have a dim 0, the same one, of at least 2 rows; else None."""
    data = [t for t, d in zip(leaves(trees), is_data(trees)) if d]
    if not data or any(t.ndim == 0 for t in data) or len({t.shape[0] for t in data}) != 1:
        return None
    return data[0].shape[0] if data[0].shape[0] >= 2 else None


def layout(trees: Sequence[Any], every_batch: bool = False) -> list[list[Any]]:
    """Every leaf's shape, strides, dtype and device: what a graph is specialised to. With
    `every_batch` and a batch (`batch_rows`), the data's dim 0 is `"batch"`: any size."""
    symbolic = every_batch and batch_rows(trees) is not None
    out = []
    for v, data in zip(leaves(trees), is_data(trees)):
        shape: list[Any] = list(v.shape)
        if symbolic and data:
            shape[0] = "batch"
        out.append([shape, list(v.stride()), str(v.dtype), str(v.device)])
    return out


@functools.cache
def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(_CORE.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def option_text(value: Any) -> str:
    """An inductor option as text: a custom pass by its `uuid()`, anything else by its repr."""
    return value.uuid().hex() if hasattr(value, "uuid") else repr(value)


_nn = torch.nn
DROPOUTS = (_nn.Dropout, _nn.Dropout1d, _nn.Dropout2d, _nn.Dropout3d)
DROPOUTS += (_nn.AlphaDropout, _nn.FeatureAlphaDropout)
"""torch's dropout layers (every public subclass of its private `_DropoutNd`)."""


def dropouts(module: torch.nn.Module) -> list[torch.nn.Module]:
    """`module`'s dropout layers (`DROPOUTS`, in place or not; a subclass, whose forward may be its
    own, is not one), in `modules()` order: the layers whose rate a saved unbatched step takes as an
    input (`build`), not as a constant baked into its graph."""
    return [m for m in module.modules() if type(m) in DROPOUTS]


def _text(value: Any) -> str | None:
    """`value`'s repr with every set's elements sorted (a set's own order follows string hashes, which
    change from process to process); None when `value` is not plain data (numbers, text, dtypes,
    devices, containers of them), whose repr would not say all it is."""
    if isinstance(value, (bool, int, float, str, type(None), torch.dtype, torch.device)):
        return repr(value)
    if isinstance(value, dict):
        pairs = [(_text(k), _text(v)) for k, v in value.items()]
        return None if any(None in p for p in pairs) else "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
    if isinstance(value, (tuple, list, set, frozenset)):
        items = [_text(v) for v in value]
        if None in items:
            return None
        ordered = sorted(items) if isinstance(value, (set, frozenset)) else items
        return f"{type(value).__name__}({', '.join(ordered)})"
    return None


def _tree(module: torch.nn.Module, rates: Sequence[torch.nn.Module]) -> str | None:
    """The module tree as text: every submodule's class and attributes, its parameters' and buffers'
    shapes and dtypes, the `rates` layers' `p` left out; None when an attribute is not plain data
    (a function, a hook, a tensor): then its text would not say what the forward computes."""
    lifted = {id(m) for m in rates}
    rows = []
    for path, m in module.named_modules(remove_duplicate=False):
        attrs = []
        for name, value in sorted(vars(m).items()):
            if name in ("_parameters", "_buffers"):
                value = {k: None if t is None else (tuple(t.shape), t.dtype) for k, t in value.items()}
            elif name == "_modules":
                value = list(value)
            elif name == "p" and id(m) in lifted:
                continue
            text = _text(value)
            if text is None:
                return None
            attrs.append(f"{name}={text}")
        rows.append(f"{path} {type(m).__module__}.{type(m).__qualname__} {' '.join(attrs)}")
    return "\n".join(rows)


def _name(owner: Any) -> str | None:
    """A class or function by its module and qualified name, the same in every process; None for
    one defined inside a function (a lambda, a local class): two of those can share a name and
    differ in what their closure holds, which no key can see."""
    qualname = getattr(owner, "__qualname__", None)
    if not (inspect.isclass(owner) or inspect.isfunction(owner)) or qualname is None or "<" in qualname:
        return None
    return f"{owner.__module__}.{qualname}"


def _sets_only_rates(model: Any, name: str, tree: str, rates: Sequence[torch.nn.Module]) -> bool:
    """Whether keyword argument `name` sets dropout rates and nothing else the module tree shows:
    built with another rate in its place, the model's tree is `tree` (rates left out) and its
    layers' rates differ from `rates`'."""
    value = model.kwargs[name]
    if type(value) not in (int, float) or float(value) not in {float(m.p) for m in rates}:
        return False
    try:
        with torch.device("meta"):
            other = model.factory(**{**model.kwargs, name: 0.25 if value != 0.25 else 0.5})
    except Exception:  # a factory that takes no other value: the argument stays in the key
        return False
    layers = dropouts(other)
    return _tree(other, layers) == tree and [m.p for m in layers] != [m.p for m in rates]


def step_key(model: Any, optimizer: Any, loss: str, precision: str, batched: bool) -> str | None:
    """What shapes a step's graph beyond its arguments: the model (its factory and keyword
    arguments in sorted order, its module tree, the params it freezes if any, and the source
    files of the module's classes and factory), the optimizer family (its update function), the
    loss, the precision and batching; None when a source file cannot be found (a model defined
    interactively: its steps are not saved) or a class or factory is defined inside a function
    (`_name`).

    An unbatched step of a model with dropout layers takes their rates as an input (`dropouts`),
    so its model is described by the tree it builds, rates left out (`_tree`), and by its keyword
    arguments but those that only set rates (`_sets_only_rates`): trials that differ only in
    dropout rate share one graph."""
    with torch.device("meta"):
        module = model.module()
    owners = {type(m) for m in module.modules()} | {model.factory}
    names = {owner: _name(owner) for owner in owners}
    if None in names.values():
        return None
    digest = hashlib.sha256()
    for owner in sorted(owners, key=names.__getitem__):
        try:
            source = inspect.getsourcefile(owner)
        except TypeError:  # a built-in class
            return None
        if source is None or not os.path.exists(source):
            return None
        digest.update(Path(source).read_bytes())
    update = f"{optimizer.update.__module__}.{optimizer.update.__qualname__}"
    kwargs = dict(sorted(model.kwargs.items()))  # in any order, the same model (as `Model.__eq__`)
    rates = [] if batched else dropouts(module)
    tree = _tree(module, rates) if rates else None
    if tree is None:
        built = f"{module!r}"
    else:
        kwargs = {k: v for k, v in kwargs.items() if not _sets_only_rates(model, k, tree, rates)}
        built = f"tree={hashlib.sha256(tree.encode()).hexdigest()} rates={len(rates)}"
    built = f"{_text(kwargs) or repr(kwargs)} {model.name!r} {built}"
    frozen = sorted(getattr(model, "frozen", ()))
    if frozen:  # constants of the graph, not gradients: another frozen set is another graph
        built += f" frozen={hashlib.sha256(repr(frozen).encode()).hexdigest()}"
    described = f"{names[model.factory]} {built} sources={digest.hexdigest()}"
    return f"{described} {update} {loss} {precision} batched={batched}"


def key(
    description: str,
    args: Sequence[Any],
    options: dict[str, str],
    threads: int | None = None,
    every_batch: bool = False,
    rates: int = 0,
) -> dict[str, Any]:
    """Everything that shapes a step's graph, as JSON-ready parts (`name` hashes them); with
    `every_batch`, those of the package for any batch size (`layout`); with `rates`, of the package
    that takes that many dropout rates as its last input (`build`).

    On a CPU that includes the torch threads it runs on (`threads`, default torch's now): inductor
    writes the count into each parallel kernel (`omp parallel num_threads(n)`), so a package built
    on 1 thread runs its kernels on 1 thread in a 2-thread process."""
    parts = {
        "step": description,
        "arguments": structure(args),
        "layout": layout(args, every_batch),
        "options": options,
        "torch": torch.__version__,
        "purestep.core": _source_hash(),
    }
    if rates:
        parts["dropout rates"] = rates
    if any(t.device.type == "cpu" for t in leaves(args)):
        parts["threads"] = torch.get_num_threads() if threads is None else threads
    return parts


def name(parts: dict[str, Any]) -> str:
    """The file name of the package for `parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


_F = torch.nn.functional
_CHANNELS = (_F.dropout1d, _F.dropout2d, _F.dropout3d, _F.feature_alpha_dropout)
_ALPHAS = (_F.alpha_dropout, _F.feature_alpha_dropout)
_ALPHA = 1.7580993408473766  # SELU's negative saturation, -alpha * scale, as torch's alpha dropout sets


def _channel_dims(func: Any, ndim: int) -> int | None:
    """How many leading dims of an `ndim`-dim input a channel-wise dropout's mask varies over, as
    torch's `F.dropout1d/2d/3d` read it: batch and channel (2), or channel alone for an unbatched
    input (1); None where torch raises."""
    if func is _F.dropout1d:
        return {3: 2, 2: 1}.get(ndim)
    if func in (_F.dropout2d, _F.feature_alpha_dropout):  # any dims as (N, C, ...) (dropout2d warns at 3)
        return 2 if ndim >= 2 else None
    return 2 if ndim == 5 else 1 if ndim >= 1 else None


class _TracedDropout(TorchFunctionMode):
    """`F.dropout`, channel-wise `F.dropout1d/2d/3d` and alpha dropout (`F.alpha_dropout`,
    `F.feature_alpha_dropout`) in training as a package can trace them, while a step is traced for one.

    A rate that is a tensor (an input, `rates_as`), and any channel-wise or alpha rate, becomes a mask
    drawn against it: each element (or channel) kept with probability 1 - p and scaled by 1 / (1 - p),
    as torch's do, p = 1 dropping all; alpha dropout sets a dropped value to -alpha and maps the
    result by a * v + alpha * a * p, a = ((alpha^2 p + 1)(1 - p))^-1/2, as torch's kernel does (all
    zeros at p = 1). A float rate of `F.dropout` becomes `aten.native_dropout`. In
    place, the result is written into the layer's input, as torch's `dropout_` does. On the
    CPU `torch.dropout` and `torch.feature_dropout` run composite kernels that read `numel()`, which a
    symbolic batch lacks under `torch.func.grad` (the trace would fail and the step fall back to a
    package per batch size). A package draws its masks from inductor's generator either way, not
    from eager's sequence."""

    _signatures = {f: inspect.signature(f) for f in (_F.dropout, _F.alpha_dropout, *_CHANNELS)}

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in self._signatures:
            bound = self._signatures[func].bind(*args, **kwargs)
            bound.apply_defaults()
            x, p, training, inplace = bound.args
            lifted = isinstance(p, Tensor)
            lead = _channel_dims(func, x.ndim) if func in _CHANNELS else x.ndim
            if lead is None or not (lifted or training):
                return func(*args, **kwargs)
            if not training:
                return x
            if func is _F.dropout and not lifted:
                if not 0 < p < 1:
                    return func(*args, **kwargs)
                out = torch.ops.aten.native_dropout(x, p, True)[0]
            else:
                shape = x.shape[:lead] + (1,) * (x.ndim - lead)
                keep = torch.rand(shape, dtype=x.dtype, device=x.device) >= p
                if func in _ALPHAS:
                    a = ((_ALPHA**2 * p + 1) * (1 - p)) ** -0.5 if lifted or p < 1 else 0.0
                    a = torch.where(p < 1, a, 0.0) if lifted else a
                    out = torch.where(keep, x, -_ALPHA) * a + _ALPHA * a * p
                else:
                    scale = 1 / (1 - p) if lifted or p < 1 else 0.0
                    scale = torch.where(p < 1, scale, 0.0) if lifted else scale
                    out = torch.where(keep, x * scale, 0.0)
            return x.copy_(out) if inplace else out
        return func(*args, **kwargs)


def rates_of(layers: Sequence[torch.nn.Module], device: torch.device | str) -> Tensor:
    """The dropout rates of `layers` (`dropouts`) as the input a package takes (float32, 1-d)."""
    return torch.tensor([float(m.p) for m in layers], dtype=torch.float32, device=device)


@contextlib.contextmanager
def rates_as(layers: Sequence[torch.nn.Module], values: Tensor) -> Any:
    """`layers`' rates set to `values`' elements while a step is traced (so its graph reads them
    from that input), and restored after."""
    before = [m.p for m in layers]
    try:
        for i, m in enumerate(layers):
            m.p = values[i]
        yield
    finally:
        for m, p in zip(layers, before):
            m.p = p


def build(
    fn: Callable[..., Any],
    args: Sequence[Any],
    parts: dict[str, Any],
    folder: Path,
    options: dict[str, Any],
    every_batch: bool = False,
    rates: Sequence[torch.nn.Module] = (),
) -> Path:
    """Trace `fn(*args)`, compile it into `folder/<name>.pt2` with its sidecar, return the path;
    with `every_batch` (and `parts` made with it), for any batch size of 2 rows or more; with
    `rates`, the dropout layers `fn` runs (`dropouts`), taking their rates as one more input after
    the arguments' tensors (`rates_of`, and `parts` made with their count). Torch's generators end
    as they began: a later call that loads the package draws what this one draws.

    Written under a temporary name and renamed, so a reader sees a whole package or none.
    """
    from torch._inductor import aoti_compile_and_package
    from torch.fx.experimental.proxy_tensor import make_fx

    shape_in = structure(args)
    if shape_in is None:
        raise ValueError("a step's arguments must be tensors or dicts of tensors")
    results: dict[str, Any] = {}

    def flat(*values: Tensor) -> list[Tensor]:
        if rates:
            with rates_as(rates, values[-1]):
                out = fn(*rebuild(shape_in, values[:-1]))
        else:
            out = fn(*rebuild(shape_in, values))
        single = not isinstance(out, tuple)
        trees = (out,) if single else out
        results["structure"], results["single"] = structure(trees), single
        return leaves(trees)

    inputs = tuple(leaves(args)) + ((rates_of(rates, leaves(args)[0].device),) if rates else ())
    symbolic = every_batch and batch_rows(args) is not None
    cuda = sorted({t.device.index or 0 for t in inputs if t.device.type == "cuda"})
    # a real-mode trace runs the step, random layers included: the caller's generator is left as it was
    with torch.random.fork_rng(devices=cuda), _TracedDropout():
        graph = make_fx(flat, tracing_mode="symbolic" if symbolic else "real")(*inputs)
    if results.get("structure") is None:
        raise ValueError("a step's results must be tensors or dicts of tensors")
    dims = None
    if symbolic:
        batch = torch.export.Dim("batch", min=2)
        dims = tuple({0: batch} if data else None for data in is_data(args)) + ((None,) if rates else ())
    exported = torch.export.export(graph, inputs, dynamic_shapes=dims, strict=False)
    path = folder / f"{name(parts)}.pt2"
    with replacing(path, suffix=".partial.pt2") as tmp:  # the packager wants the suffix
        aoti_compile_and_package(exported, package_path=str(tmp), inductor_configs=options)
        sidecar = {"parts": parts, "results": results["structure"], "single": results["single"]}
        write_json(path.with_suffix(".json"), sidecar, indent=0)
    return path


def _sidecar(path: Path, parts: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar of the package at `path` when both exist and it records `parts`, else None."""
    sidecar = path.with_suffix(".json")
    if not (path.exists() and sidecar.exists()):
        return None
    try:
        saved = json.loads(sidecar.read_text())
    except (OSError, ValueError):  # cut off by a crash before sidecars were written whole: rebuilt
        return None
    return saved if saved["parts"] == json.loads(json.dumps(parts)) else None


def saved(path: Path, parts: dict[str, Any]) -> bool:
    """Whether `load(path, parts)` would find a package (nothing is loaded)."""
    return _sidecar(path, parts) is not None


def load(path: Path, parts: dict[str, Any]) -> tuple[Runner, Structure, bool] | None:
    """The package at `path` as `run(leaves) -> leaves`, with its results' structure; None when
    there is none, or its sidecar records other parts (never a graph built for other settings)."""
    found = _sidecar(path, parts)
    if found is None:
        return None
    return _runner(path), found["results"], found["single"]


def _runner(path: Path) -> Runner:
    """The package at `path` as `run(leaves) -> leaves`, signals held while it runs."""
    return holding_signals(_loaded(path))


def _loaded(path: Path) -> Runner:
    from purestep.core import _onednn  # noqa: F401  (registers the ops a package may call)

    loader = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if fastpath.enabled() and loader is not None:
        try:
            return loader(str(path), "model", False, 1, -1).run
        except (RuntimeError, TypeError):  # another torch's signature: the public loader below
            pass
    from torch._inductor import aoti_load_package

    with contextlib.suppress(ImportError):  # torch 2.10's loader reads it unimported (pytorch#173706)
        importlib.import_module("torch._inductor.codecache")
    model = aoti_load_package(str(path))
    return lambda values: list(model(*values))
