"""Parameter exchange without pickle: safetensors files with JSON metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from purestep.core.errors import PurestepError
from purestep.core.files import replacing

META_KEY = "purestep"


SAFETENSORS_RESERVED = "__metadata__"
"""The header key safetensors keeps for its metadata: no tensor can be named so."""


def save(path: str | os.PathLike[str], params: dict[str, Tensor], meta: dict[str, Any] | None = None) -> Path:
    """Write `params` to a safetensors file, `meta` as JSON under the `purestep` metadata key.

    The file is written next to its target and renamed into place, so a crash never
    leaves a half-written file under `path`. Tensors that share memory (a tied module's
    `state_dict()`) are written each as its own copy, as safetensors needs.
    """
    from safetensors.torch import save_file

    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"save: meta is a {type(meta).__name__}, not a dict")
    if SAFETENSORS_RESERVED in params:
        raise ValueError(f"save: {SAFETENSORS_RESERVED!r} is the name safetensors keeps for its own metadata")
    tensors: dict[str, Tensor] = {}
    storages: set[int] = set()
    for k, v in params.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"save: params[{k!r}] is a {type(v).__name__}, not a tensor (put it in meta)")
        # the values a conjugate or negative view reads (its storage holds the others)
        tensor = v.detach().resolve_conj().resolve_neg().contiguous().cpu()
        if tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[k] = tensor
    with replacing(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta or {})})
        except KeyError as e:  # a dtype this safetensors has no name for (complex before 0.7)
            raise TypeError(f"save: this safetensors cannot write {e.args[0]} tensors") from None
    return Path(path)


def load(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read `(params, meta)` written by `save` (or any safetensors file: meta is then `{}`)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            raw = (f.metadata() or {}).get(META_KEY, "{}")
            params = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except (SafetensorError, OSError) as e:
        raise PurestepError(f"cannot read {path} as safetensors: {e}") from None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        meta = {}
    return params, meta if isinstance(meta, dict) else {}  # not `save`'s: another tool's value
