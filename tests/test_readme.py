"""The README's Python examples run as written: the API in ten lines, and the JAX exchange from
a saved file, through JAX, and back to torch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from purestep import mlp, save

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(needle: str) -> list[str]:
    """The README's ```python blocks that contain `needle`, in order."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    return [b for b in blocks if needle in b]


@pytest.mark.compile
def test_the_api_in_ten_lines_runs_as_written(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (block,) = _blocks("ps.functional(")
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert len(scope["result"].history) == 10
    assert torch.isfinite(scope["loss"])


def test_the_space_file_example_loads_for_the_model_it_names(tmp_path):
    from purestep.search.space import load_space

    (block,) = re.findall(r"^```toml\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    path = tmp_path / "space.toml"
    path.write_text(block)
    space = {p.name: p for p in load_space(path, "cnn").params}
    assert space["dropout"].key == "model.dropout" and space["width"].key == "model.width"


def test_the_jax_examples_run_as_written_and_agree_with_torch(monkeypatch, tmp_path):
    for name in ("jax", "optax", "flax"):
        pytest.importorskip(name, reason=f"{name} is not installed: pip install 'purestep[jax]'")
    import jax.numpy as jnp

    monkeypatch.chdir(tmp_path)
    model = mlp()
    params, _ = model.init(0)
    save("model.safetensors", params)
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    expected, _ = model.apply(params, {}, images, train=False)
    blocks = _blocks("jax")
    assert len(blocks) == 3  # to flax, plain JAX, and back to torch
    scope: dict = {"images": jnp.asarray(images.numpy()), "x": images}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)
    torch.testing.assert_close(scope["logits"], expected)  # the last block's: back in torch
    flax_logits = scope["FlaxMLP"]().apply(scope["variables"], scope["images"])
    torch.testing.assert_close(torch.tensor(flax_logits.__array__()), expected, rtol=1e-5, atol=1e-5)
    plain = scope["predict"](scope["p"], scope["images"])
    torch.testing.assert_close(torch.tensor(plain.__array__()), expected, rtol=1e-5, atol=1e-5)
    assert Path("from_jax.safetensors").exists()
