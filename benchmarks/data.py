"""FashionMNIST-shaped data: the real files when present, else deterministic synthetic ones.

The synthetic images are noisy copies of one random prototype per class, so the
data is learnable and accuracy means something (for the bf16 comparison). Both are
written as the four uncompressed IDX files that `torchvision.datasets.FashionMNIST`
reads, so the tutorial's own data path runs unchanged.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch
from torch import Tensor

FILES = {
    (True, "images"): "train-images-idx3-ubyte",
    (True, "labels"): "train-labels-idx1-ubyte",
    (False, "images"): "t10k-images-idx3-ubyte",
    (False, "labels"): "t10k-labels-idx1-ubyte",
}
SIDE = 28
CLASSES = 10
KEEP = 4


def raw_dir(root: Path) -> Path:
    """Where torchvision looks for FashionMNIST under `root`."""
    return root / "FashionMNIST" / "raw"


def has_fashion_mnist(root: Path) -> bool:
    """True when all four uncompressed IDX files are under `root`."""
    return all((raw_dir(root) / name).is_file() for name in FILES.values())


def synthetic(n: int, seed: int, class_seed: int = 0) -> tuple[Tensor, Tensor]:
    """`n` uint8 images `(n, 28, 28)` and int64 labels, a pure function of the arguments.

    Each class has a random prototype image (drawn from `class_seed`); an image shows
    one pixel in `KEEP` of its class's prototype, chosen at random, and noise elsewhere.
    Splits drawn with different `seed`s and one `class_seed` share the prototypes.
    """
    prototypes = torch.randint(
        0, 256, (CLASSES, SIDE, SIDE), generator=torch.Generator().manual_seed(class_seed), dtype=torch.uint8
    )
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    noise = torch.randint(0, 256, (n, SIDE, SIDE), generator=generator, dtype=torch.uint8)
    keep = torch.randint(0, KEEP, (n, SIDE, SIDE), generator=generator, dtype=torch.uint8) == 0
    return torch.where(keep, prototypes[labels], noise), labels


def write_idx(path: Path, data: Tensor) -> None:
    """Write a uint8 tensor as an IDX file (big-endian dims, magic 0x08 = ubyte)."""
    header = struct.pack(">I", 0x0800 | data.ndim) + struct.pack(f">{data.ndim}I", *data.shape)
    path.write_bytes(header + data.to(torch.uint8).contiguous().numpy().tobytes())


def write_fashion_mnist(root: Path, n_train: int = 60_000, n_test: int = 10_000, seed: int = 0) -> Path:
    """Write synthetic train/test IDX files under `root/FashionMNIST/raw/`; returns `root`."""
    raw = raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    for train, n, split_seed in ((True, n_train, seed + 1), (False, n_test, seed + 2)):
        images, labels = synthetic(n, split_seed, class_seed=seed)
        write_idx(raw / FILES[train, "images"], images)
        write_idx(raw / FILES[train, "labels"], labels)
    return root
