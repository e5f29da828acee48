"""Parameter exchange: safetensors and DLPack round trips are bitwise, the flax layout maps both
ways, a saved file serves JAX as it is, and the JAX/optax steps track the eager ones (in lockstep;
`test_check.py` runs them over many seeds and 200 FashionMNIST-shaped steps)."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from test_data import safetensors_writes_complex

from purestep import OptimizerConfig, load, mlp, save

DTYPES = [
    torch.float32,
    torch.float64,
    torch.bfloat16,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


@st.composite
def tensors(draw: st.DrawFn, dtypes: list[torch.dtype] = DTYPES) -> torch.Tensor:
    """Any bit pattern (NaNs, infinities, subnormals, -0.0) in a small shape and layout."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(st.lists(st.integers(0, 5), max_size=3))
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed" and len(shape) >= 2:
        shape[0], shape[1] = shape[1], shape[0]
    if layout == "strided" and shape:
        shape[-1] *= 2
    size = math.prod(shape) * dtype.itemsize
    raw = torch.tensor(list(draw(st.binary(min_size=size, max_size=size))), dtype=torch.uint8)
    if dtype == torch.bool:
        raw &= 1
    t = raw.view(dtype).reshape(shape)
    if layout == "transposed" and t.ndim >= 2:
        return t.transpose(0, 1)
    if layout == "strided" and t.ndim:
        return t[..., ::2]
    return t


def bits(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().clone(memory_format=torch.contiguous_format).reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in b:
        assert (a[k].dtype, a[k].shape) == (b[k].dtype, b[k].shape), k
        assert bits(a[k]) == bits(b[k]), k


trees = st.dictionaries(
    st.from_regex(r"[a-z]{1,6}(\.[0-9a-z]{1,4}){0,2}", fullmatch=True), tensors(), max_size=4
)


@given(params=trees, meta=st.dictionaries(st.text(max_size=8), st.integers() | st.floats(allow_nan=False)))
def test_safetensors_round_trip_is_bitwise(params, meta):
    with tempfile.TemporaryDirectory() as tmp:
        back, back_meta = load(save(Path(tmp) / "params.safetensors", params, meta))
    assert_bitwise(back, params)
    assert back_meta == meta


@pytest.fixture(scope="module")
def jx() -> ModuleType:
    """`purestep.jax_interop`, or a skip when the `jax` extra is not installed."""
    for name in ("jax", "optax", "flax"):
        pytest.importorskip(name, reason=f"{name} is not installed: pip install 'purestep[jax]'")
    import purestep.jax_interop

    return purestep.jax_interop


@given(params=trees)
@example(params={"w": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(), "b": torch.arange(4.0)[::2]})
def test_dlpack_round_trip_is_bitwise(jx, params):
    """Every dtype and layout; the explicit example is a transposed and a strided tensor, which
    jax 0.6 (the oldest allowed) once imported as row-major memory."""
    arrays = jx.to_jax(params)
    for k, t in params.items():
        assert str(arrays[k].dtype) == str(t.dtype).removeprefix("torch.")
        assert arrays[k].shape == t.shape
        assert np.asarray(arrays[k]).tobytes() == bits(t)
    assert_bitwise(jx.from_jax(arrays), params)


LAZY = {  # a lazy view, and the values it stands for
    "conjugate bit": (torch.tensor([1 + 2j, 3 - 4j]).conj(), torch.tensor([1 - 2j, 3 + 4j])),
    "negative bit": (torch.tensor([1 + 2j]).conj().imag, torch.tensor([-2.0])),
}


@pytest.mark.parametrize("case", LAZY)
def test_a_lazy_conjugate_or_negation_crosses_with_its_values(jx, case):
    """`z.conj()` sets the conjugate bit, `z.conj().imag` the negative bit: DLPack exports neither."""
    lazy, values = LAZY[case]
    assert lazy.is_conj() or (lazy.is_neg() and lazy.is_contiguous())
    assert np.asarray(jx.tensor_to_jax(lazy)).tobytes() == bits(values)
    assert_bitwise(jx.from_jax(jx.to_jax({"t": lazy})), {"t": values})


def test_params_cross_to_jax_and_back_without_a_copy(jx):
    params, _ = mlp(12, (8, 8), 3).init(0)
    arrays = jx.to_jax(params)
    back = jx.from_jax(arrays)
    for k, t in params.items():
        assert arrays[k].unsafe_buffer_pointer() == t.data_ptr()
        assert back[k].data_ptr() == t.data_ptr()


widths = st.integers(1, 9)
mlp_specs = st.builds(mlp, widths, st.lists(widths, max_size=3).map(tuple), widths)


@given(spec=mlp_specs, seed=st.integers(0, 2**16), dtype=st.sampled_from(DTYPES[:4]))
def test_flax_layout_round_trip_is_bitwise(jx, spec, seed, dtype):
    params = {k: v.to(dtype) for k, v in spec.init(seed)[0].items()}
    variables = jx.to_flax(params)
    dense = variables["params"]
    assert list(dense) == [f"Dense_{j}" for j in range(len(spec.kwargs["hidden"]) + 1)]
    for j, layer in enumerate(dense.values()):
        weight = params[f"linear_relu_stack.{2 * j}.weight"]
        assert layer["kernel"].shape == weight.T.shape
        assert np.asarray(layer["kernel"]).tobytes() == bits(weight.T)
    assert_bitwise(jx.from_flax(variables), params)
    assert_bitwise(jx.from_flax(dense), params)


@pytest.mark.parametrize("kind", ["numpy", "jax"])
@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.int64], ids=lambda d: str(d)[6:]
)
def test_numpy_and_jax_leaves_keep_their_dtype_and_bits_through_flax(jx, kind, dtype):
    """As tensors do: a float64 or int64 NumPy array, or JAX array, is not narrowed to 32 bits."""
    params = {k: (v * 1e3).to(dtype) for k, v in mlp(5, (4,), 3).init(0)[0].items()}
    leaves = {k: v.numpy() if kind == "numpy" else jx.tensor_to_jax(v) for k, v in params.items()}
    variables = jx.to_flax(leaves)
    for j, layer in enumerate(variables["params"].values()):
        weight = params[f"linear_relu_stack.{2 * j}.weight"]
        assert str(layer["kernel"].dtype) == str(dtype).removeprefix("torch.")
        assert np.asarray(layer["kernel"]).tobytes() == bits(weight.T)
    assert_bitwise(jx.from_flax(variables), params)


@given(spec=mlp_specs, seed=st.integers(0, 2**16), n=st.integers(1, 6))
def test_flax_mlp_gives_purestep_logits(jx, spec, seed, n):
    params, buffers = spec.init(seed)
    x = torch.rand(n, spec.kwargs["in_features"], generator=torch.Generator().manual_seed(seed))
    flax_logits = jx.flax_model(spec).apply(jx.to_flax(params), jx.tensor_to_jax(x))
    torch_logits, _ = spec.apply(params, buffers, x)
    assert (jx.jax_to_tensor(flax_logits) - torch_logits).abs().max().item() <= 1e-5


def test_params_initialised_in_flax_come_back_to_torch(jx):
    import jax

    spec = mlp(20, (16, 8), 5)
    x = jax.random.uniform(jax.random.key(1), (4, 20))
    model = jx.flax_model(spec)
    variables = model.init(jax.random.key(0), x)
    params = jx.from_flax(variables)
    assert {k: v.shape for k, v in params.items()} == {k: v.shape for k, v in spec.init(0)[0].items()}
    torch_logits, _ = spec.apply(params, {}, jx.jax_to_tensor(x))
    assert (torch_logits - jx.jax_to_tensor(model.apply(variables, x))).abs().max().item() <= 1e-5


def test_layout_mapping_rejects_what_is_not_the_mlp(jx):
    params, _ = mlp(4, (3,), 2).init(0)
    with pytest.raises(ValueError, match="not an MLP parameter"):
        jx.to_flax({**params, "head.weight": params["linear_relu_stack.0.weight"]})
    with pytest.raises(ValueError, match="needs both a weight and a bias"):
        jx.to_flax({k: v for k, v in params.items() if k != "linear_relu_stack.2.bias"})
    dense = jx.to_flax(params)["params"]
    with pytest.raises(ValueError, match="numbered"):
        jx.from_flax({"Dense_0": dense["Dense_0"], "Dense_2": dense["Dense_1"]})
    with pytest.raises(ValueError, match="not a flax Dense layer"):
        jx.from_flax({"Conv_0": dense["Dense_0"]})


def test_saved_file_serves_safetensors_flax_and_numpy_as_it_is(jx, tmp_path):
    import safetensors
    import safetensors.flax
    import safetensors.numpy

    spec = mlp()
    params, _ = spec.init(0)
    meta = {"optimizer": OptimizerConfig().to_dict(), "metrics": {"accuracy": 0.5, "loss": 2.2}}
    path = save(tmp_path / "model.safetensors", params, meta)

    arrays = safetensors.numpy.load_file(str(path))
    assert arrays.keys() == params.keys()
    for k, t in params.items():
        assert arrays[k].dtype == np.float32 and arrays[k].tobytes() == bits(t)
    with safetensors.safe_open(str(path), framework="flax") as f:
        assert json.loads(f.metadata()["purestep"]) == json.loads(json.dumps(meta))

    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    variables = jx.to_flax(safetensors.flax.load_file(str(path)))
    logits = jx.FlaxMLP().apply(variables, jx.tensor_to_jax(x))
    assert (jx.jax_to_tensor(logits) - spec.apply(params, {}, x)[0]).abs().max().item() <= 1e-5


def test_scale_by_torch_adam_is_optax_adam_with_exact_bias_correction(jx):
    import jax
    import optax

    grads = {
        "w": jax.random.normal(jax.random.key(0), (50, 7)),
        "b": jax.numpy.asarray(np.geomspace(1e-10, 1.0, 9), dtype=np.float32),
    }
    ours, theirs = jx.scale_by_torch_adam(0.9, 0.999, 1e-8), optax.scale_by_adam(0.9, 0.999, 1e-8)
    s_ours, s_theirs = ours.init(grads), theirs.init(grads)
    for step in range(10):
        g = jax.tree.map(lambda a, step=step: a * (1 + 0.1 * step) * (-1) ** step, grads)
        u_ours, s_ours = ours.update(g, s_ours)
        u_theirs, s_theirs = theirs.update(g, s_theirs)
        for k in grads:
            a, b = jx.jax_to_tensor(u_ours[k]), jx.jax_to_tensor(u_theirs[k])
            assert ((a - b).abs() / b.abs().max()).max().item() <= 2e-5


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_optax_rmsprop_takes_torch_optim_rmsprops_steps(jx, centered, momentum, weight_decay):
    """eps outside the root, alpha, the centered average, momentum from a zero buffer, coupled decay."""
    import optax

    g = torch.Generator().manual_seed(0)
    start = torch.randn(50, 7, generator=g)
    options = {"weight_decay": weight_decay, "momentum": momentum, "centered": centered}
    config = OptimizerConfig("rmsprop", lr=1e-2, alpha=0.9, eps=1e-3, **options)
    theirs = start.clone().requires_grad_()
    torch_optimizer = torch.optim.RMSprop(
        [theirs], config.lr, config.alpha, config.eps, weight_decay, momentum, centered, foreach=False
    )
    tx = jx.optax_optimizer(config)
    ours = {"w": jx.tensor_to_jax(start.clone())}
    state = tx.init(ours)
    for step in range(8):
        grad = torch.randn(50, 7, generator=g) * (1 + step)
        theirs.grad = grad
        torch_optimizer.step()
        updates, state = tx.update({"w": jx.tensor_to_jax(grad)}, state, ours)
        ours = optax.apply_updates(ours, updates)
        moved = (theirs.detach() - start).abs().max().item()
        assert (jx.jax_to_tensor(ours["w"]) - theirs.detach()).abs().max().item() <= 5e-5 * moved, step


def test_optax_optimizer_refuses_a_name_it_does_not_know(jx):
    with pytest.raises(ValueError, match="'lion'"):
        jx.optax_optimizer(OptimizerConfig("lion"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "config",
    [
        OptimizerConfig("sgd", lr=0.05),
        OptimizerConfig("sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
        OptimizerConfig("adam", lr=1e-2, weight_decay=1e-2),
        OptimizerConfig("adamw", lr=1e-2, weight_decay=1e-1),
        OptimizerConfig("rmsprop", lr=1e-2),
        OptimizerConfig("rmsprop", lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-2),
    ],
    ids=["sgd", "sgd-nesterov-wd", "adam-wd", "adamw", "rmsprop", "rmsprop-momentum-centered-wd"],
)
def test_jax_step_tracks_eager_for_every_optimizer_option(jx, config):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(92, 1, 4, 4, generator=g), torch.randint(0, 3, (92,), generator=g)
    row = jx.jax_vs_eager(mlp(16, (12, 8), 3), config, 0, (x, y), batch_size=8)
    assert row.steps == 12 and row.lockstep
    assert row.passed and row.error <= row.bound, row


def test_rows_run_the_first_batches_up_to_steps(jx):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(50, 6, generator=g), torch.randint(0, 2, (50,), generator=g)
    rows = jx.jax_rows(mlp(6, (5,), 2), (x, y), 0, batch_size=8)
    assert [r.pair for r in rows] == ["jax/optax vs eager (sgd)", "jax/optax vs eager (adam)"]
    assert [r.steps for r in rows] == [7, 7]
    assert [r.steps for r in jx.jax_rows(mlp(6, (5,), 2), (x, y), 0, batch_size=8, steps=3)] == [3, 3]


def test_tensors_that_share_memory_are_saved_each_as_its_own(tmp_path):
    tied = torch.nn.Linear(3, 3, bias=False)
    state = {"a.weight": tied.weight, "b.weight": tied.weight, "half": tied.weight.detach()[:1]}
    loaded, _ = load(save(tmp_path / "tied.safetensors", state))
    assert all(torch.equal(loaded[k], v.detach()) for k, v in state.items())


def test_a_value_that_is_not_a_tensor_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match=r"params\['lr'\] is a float, not a tensor"):
        save(tmp_path / "p.safetensors", {"w": torch.ones(2), "lr": 0.1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", LAZY)
def test_a_lazy_conjugate_or_negation_is_saved_as_its_values(tmp_path, case):
    """safetensors writes a tensor's storage: the conjugate or negative bit was dropped, and
    `z.conj()` read back as `z`."""
    lazy, values = LAZY[case]
    if lazy.is_complex() and not safetensors_writes_complex():
        with pytest.raises(TypeError, match="this safetensors cannot write torch.complex64 tensors"):
            save(tmp_path / "lazy.safetensors", {"t": lazy})
        assert list(tmp_path.iterdir()) == []
        return
    loaded, _ = load(save(tmp_path / "lazy.safetensors", {"t": lazy}))
    assert_bitwise(loaded, {"t": values})


def test_metadata_another_tool_wrote_reads_as_none_and_safetensors_own_key_is_refused(tmp_path):
    from safetensors.torch import save_file

    for raw in ("[1, 2]", '"text"', "NaN"):
        save_file({"w": torch.ones(1)}, tmp_path / "other.safetensors", metadata={"purestep": raw})
        assert load(tmp_path / "other.safetensors")[1] == {}
    with pytest.raises(ValueError, match="__metadata__"):
        save(tmp_path / "p.safetensors", {"__metadata__": torch.ones(1)})
    with pytest.raises(TypeError, match="meta is a list"):
        save(tmp_path / "p.safetensors", {"w": torch.ones(1)}, [1])  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["other.safetensors"]


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_a_dtype_jax_has_not_is_refused_naming_it(jx):
    """DLPack gave JAX a type it refused with its own runtime error (`lanes != 1`)."""
    with pytest.raises(TypeError, match="JAX has no dtype for torch's torch.complex32"):
        jx.to_jax({"z": torch.zeros(2, dtype=torch.complex32)})
