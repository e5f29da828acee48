"""Datasets as tensors loaded once on the target device; splits; batch order.

A batch is a slice of the epoch's tensors (a view, no copy). In file order that is
exactly the tutorial's `DataLoader(batch_size=64)`; shuffled, the epoch's tensors
are gathered once through a permutation seeded by `(seed, epoch)`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from purestep.core.errors import DataError

TORCHVISION = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST"}
DATASETS = (*TORCHVISION, "digits")
DIGITS_TEST_SIZE = 360


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors: images `(N, 1, H, W)` float32 in [0, 1], labels int64."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def in_features(self) -> int:
        """Pixels per image: the model's input width."""
        return self.x_train[0].numel()

    @property
    def classes(self) -> int:
        """Number of label classes."""
        return 10


def _images(uint8: Tensor) -> Tensor:
    """uint8 `(N, H, W)` to float `(N, 1, H, W)`, by the same op as `ToTensor()`: `/ 255`."""
    return uint8.to(dtype=torch.get_default_dtype()).div(255).unsqueeze(1)


def _read_idx(path: Path, ndim: int) -> Tensor:
    """A uint8 IDX file (the MNIST family's layout) as a tensor; ValueError when it is not one."""
    data = path.read_bytes()
    if len(data) < 4 + 4 * ndim or data[:4] != bytes([0, 0, 0x08, ndim]):
        raise ValueError(f"{path.name} is not a uint8 IDX file of {ndim} dimensions")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = data[4 + 4 * ndim :]
    if len(body) != math.prod(shape):
        raise ValueError(f"{path.name} holds {len(body)} bytes for a {'x'.join(map(str, shape))} array")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _idx_split(name: str, root: Path, train: bool) -> tuple[Tensor, Tensor] | None:
    """A split read straight from its raw IDX files when both are there (torchvision's own
    reading gives the same tensors; importing it costs about 2 s, Dynamo included)."""
    raw = root / TORCHVISION[name] / "raw"
    prefix = "train" if train else "t10k"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    if not (images.is_file() and labels.is_file()):
        return None
    try:
        x, y = _read_idx(images, 3), _read_idx(labels, 1)
    except (ValueError, OSError) as e:
        raise DataError(
            f"cannot read {name} from {raw} (truncated or corrupt file: {_first_line(e)}); "
            "delete the files to download them again"
        ) from None
    if len(x) != len(y):
        raise DataError(f"cannot read {name} from {raw}: images and labels do not match")
    return _images(x), y.long()


def _torchvision_split(name: str, root: Path, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    found = _idx_split(name, root, train)
    if found is not None:
        return found
    from torchvision import datasets

    cls = getattr(datasets, TORCHVISION[name])
    raw = root / cls.__name__ / "raw"
    try:
        ds = cls(str(root), train=train, download=download)
    except (RuntimeError, AssertionError, TypeError, ValueError, OSError) as e:
        if isinstance(e, RuntimeError) and ("not found" in str(e) or "Error downloading" in str(e)):
            raise DataError(
                f"{name} is not in {raw} and could not be downloaded; "
                "connect to the internet once, or use --dataset digits to work offline"
            ) from None
        cause = _first_line(e) or type(e).__name__
        raise DataError(
            f"cannot read {name} from {raw} (truncated or corrupt file: {cause}); "
            "delete the files to download them again"
        ) from None
    if len(ds.data) != len(ds.targets) or ds.data.ndim != 3:
        raise DataError(f"cannot read {name} from {raw}: images and labels do not match")
    return _images(ds.data), ds.targets.long()


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def _digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: pip install 'purestep[digits]'") from None
    bunch = load_digits()
    x = torch.from_numpy(bunch.images).to(torch.get_default_dtype()).div(16).unsqueeze(1)
    y = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
    return x[train], y[train], x[test], y[test]


def default_data_dir() -> Path:
    """`$PURESTEP_DATA` if set, else `./data` (the tutorial's `root="data"`)."""
    return Path(os.environ.get("PURESTEP_DATA", "data"))


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    download: bool | None = None,
) -> Dataset:
    """Load a dataset once into tensors on `device`.

    Args:
        name: one of `DATASETS` (`fashion-mnist`, `mnist`, `kmnist` through torchvision;
            `digits`, scikit-learn's bundled 8x8 digits, offline).
        root: directory of the torchvision files (downloaded there when missing).
        device: where the tensors live for the whole run.
        download: fetch missing torchvision files, as the tutorial does; by default
            yes unless `$PURESTEP_OFFLINE` is set (to anything but 0).
    Raises:
        DataError: unknown name, no data and no network, or unreadable files.
    """
    if name == "digits":
        x_train, y_train, x_test, y_test = _digits()
    elif name in TORCHVISION:
        root = Path(root) if root is not None else default_data_dir()
        if download is None:
            download = os.environ.get("PURESTEP_OFFLINE", "0") in ("", "0")
        x_train, y_train = _torchvision_split(name, root, True, download)
        x_test, y_test = _torchvision_split(name, root, False, download)
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return Dataset(name, *(t.to(device) for t in (x_train, y_train, x_test, y_test)))


def split(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Seeded split of `(x, y)` into `(x_a, y_a, x_b, y_b)` with `fraction` of the rows in b."""
    if not 0 < fraction < 1:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    n_b = max(1, round(len(y) * fraction))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(y.device)
    b, a = order[:n_b], order[n_b:]
    return x[a], y[a], x[b], y[b]


def epoch_order(n: int, epoch: int, seed: int, device: torch.device | str = "cpu") -> Tensor:
    """The permutation of `range(n)` for `epoch`; a function of `(seed, epoch)` alone."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def batches(
    x: Tensor, y: Tensor, batch_size: int, order: Tensor | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive batches of `batch_size` (the last one shorter), in `order` if given."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if order is not None:
        x, y = x[order], y[order]
    for start in range(0, len(y), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def num_batches(n: int, batch_size: int) -> int:
    """How many batches `batches` yields for `n` rows."""
    return -(-n // batch_size)


_IDX_TYPES = {torch.uint8: 0x08, torch.int8: 0x09, torch.int16: 0x0B, torch.int32: 0x0C}


def write_idx(path: str | os.PathLike[str], tensor: Tensor) -> Path:
    """Write an integer tensor in the IDX layout of (Fashion-)MNIST's files (big-endian header).

    For synthetic stand-ins of those datasets: torchvision reads the result as the real thing.
    """
    path = Path(path)
    if tensor.dtype not in _IDX_TYPES:
        raise ValueError(f"IDX holds uint8/int8/int16/int32, not {tensor.dtype}")
    header = bytes([0, 0, _IDX_TYPES[tensor.dtype], tensor.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in tensor.shape)
    body = tensor.contiguous().cpu().numpy().astype(tensor.numpy().dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + body)
    return path


def write_fake_mnist(
    root: str | os.PathLike[str], name: str, n_train: int, n_test: int, seed: int = 0
) -> Path:
    """Random images and labels in `root/<Name>/raw/` under the real file names; returns that folder."""
    raw = Path(root) / TORCHVISION[name] / "raw"
    g = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(
            raw / f"{prefix}-labels-idx1-ubyte", torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        )
    return raw
