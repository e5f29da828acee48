"""Per-epoch checkpoints: params, buffers, optimizer state and the random generators' states as
safetensors, the rest as JSON.

A checkpoint is a directory `epoch-NNNN/` written under a temporary name and renamed
into place; `latest.json` is then replaced atomically to point at it. A crash at any
moment leaves `latest.json` naming a complete checkpoint (or none yet), and each rename is
synced to disk (the folder holding it too) before the next step, so a power loss does as well.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from purestep.core.errors import PurestepError
from purestep.core.files import creation_mode, rename_into_place, write_json
from purestep.core.interop import load, save

LATEST = "latest.json"


@dataclass(frozen=True)
class Checkpoint:
    """What resuming needs: the epoch just finished, params, buffers, optimizer state, the global
    generators' states (random layers go on drawing where they stopped; `generator_states`), and
    free-form meta."""

    epoch: int
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    state: dict[str, Tensor]
    meta: dict[str, Any]
    rng: dict[str, Tensor] = field(default_factory=dict)


def generator_states(device: torch.device | str) -> dict[str, Tensor]:
    """The states of the global generators a run on `device` draws from: the CPU's always, and on a
    GPU that device's own (dropout there draws its masks from it, not from the CPU's)."""
    states = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_generators(states: dict[str, Tensor], device: torch.device | str) -> None:
    """Set the generators `generator_states(device)` reads to `states`; one `states` does not hold
    (a checkpoint written on the CPU, or before the GPU's was kept) is left as it is."""
    if "cpu" in states:
        torch.set_rng_state(states["cpu"])
    if torch.device(device).type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def save_checkpoint(
    directory: str | os.PathLike[str],
    epoch: int,
    params: dict[str, Tensor],
    buffers: dict[str, Tensor],
    state: dict[str, Tensor],
    meta: dict[str, Any],
    *,
    device: torch.device | str,
) -> Path:
    """Write the checkpoint of `epoch` (0-based, finished) and make it the latest; returns its folder.

    `device` is the run's: the generators it draws from are saved (`generator_states`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"epoch-{epoch + 1:04d}"
    if latest(directory) == final.name:  # deleting it before its replacement is in place loses it
        raise PurestepError(f"{final} is the latest checkpoint in {directory}; it is not written over")
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{final.name}."))
    try:
        os.chmod(tmp, creation_mode(directory=True))  # made private; given the mode `mkdir` gives
        save(tmp / "params.safetensors", params)
        save(tmp / "buffers.safetensors", buffers)
        save(tmp / "state.safetensors", state)
        save(tmp / "rng.safetensors", generator_states(device))
        write_json(tmp / "meta.json", {"epoch": epoch, **meta}, indent=1)
    except BaseException:  # a full disk, a signal: no half-written folder left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # written by a run that stopped before pointing at it (never the latest)
        shutil.rmtree(final)
    rename_into_place(tmp, final)
    write_json(directory / LATEST, {"checkpoint": final.name, "epoch": epoch}, indent=1)
    return final


def latest(directory: str | os.PathLike[str]) -> str | None:
    """The name of the folder `latest.json` in `directory` points at; None when there is none yet.

    Raises:
        PurestepError: `latest.json` is there but does not name a folder of `directory`.
    """
    pointer = Path(directory) / LATEST
    if not pointer.exists():
        return None
    try:
        pointed = json.loads(pointer.read_text())
    except (OSError, ValueError) as e:
        raise PurestepError(f"cannot read the checkpoint in {directory}: {e}") from None
    name = pointed.get("checkpoint") if isinstance(pointed, dict) else None
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise PurestepError(f"cannot read the checkpoint in {directory}: {LATEST} names no folder of it")
    return name


def load_checkpoint(
    directory: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> Checkpoint | None:
    """The latest complete checkpoint in `directory`, or None if there is none yet."""
    directory = Path(directory)
    name = latest(directory)
    if name is None:
        return None
    try:
        meta = json.loads((directory / name / "meta.json").read_text())
        if not isinstance(meta, dict) or type(meta.get("epoch")) is not int:
            raise ValueError("meta.json holds no epoch number")
    except (OSError, ValueError) as e:
        raise PurestepError(f"cannot read the checkpoint in {directory}: {e}") from None
    folder = directory / name
    try:
        params, _ = load(folder / "params.safetensors", device)
        buffers, _ = load(folder / "buffers.safetensors", device)
        state, _ = load(folder / "state.safetensors", device)
        rng, _ = load(folder / "rng.safetensors")
    except PurestepError as e:
        raise PurestepError(f"cannot read the checkpoint in {directory}: {e}") from None
    problem = _generators_problem(rng)
    if problem is not None:
        raise PurestepError(f"cannot read the checkpoint in {directory}: {name}/rng.safetensors {problem}")
    return Checkpoint(int(meta.pop("epoch")), params, buffers, state, meta, rng)


def _generators_problem(rng: dict[str, Tensor]) -> str | None:
    """What keeps `rng` from being the states `generator_states` saves, or None: the CPU's state,
    bytes of this torch's size, and any GPU's as bytes (set_rng_state failed on another as a bug)."""
    cpu = rng.get("cpu")
    if cpu is None:
        return "holds no state of the CPU's generator"
    size = torch.get_rng_state().shape
    for key, state in rng.items():
        if key not in ("cpu", "cuda") or state.dtype != torch.uint8 or state.ndim != 1:
            return f"holds {key!r} of {state.dtype} {tuple(state.shape)}, not a generator's state"
    if cpu.shape != size:
        return f"holds a CPU generator state of {cpu.numel()} bytes; this torch's has {size[0]}"
    return None


def check_like(found: dict[str, Tensor], template: dict[str, Tensor], what: str) -> None:
    """Refuse tensors whose names, shapes or dtypes are not the template's (a foreign file)."""
    mismatched = sorted(
        k
        for k in found.keys() | template.keys()
        if k not in found
        or k not in template
        or (found[k].shape, found[k].dtype) != (template[k].shape, template[k].dtype)
    )
    if mismatched:
        raise PurestepError(f"{what} does not fit this model (first mismatch: {mismatched[0]})")
