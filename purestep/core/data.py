"""Datasets as tensors loaded once on the target device; splits; batch order.

A batch is a slice of the epoch's tensors (a view, no copy). In file order that is
exactly the tutorial's `DataLoader(batch_size=64)`; shuffled, the epoch's tensors
are gathered once through a permutation seeded by `(seed, epoch)`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from purestep.core.errors import DataError, first_line
from purestep.core.files import cache_home, replacing

if TYPE_CHECKING:
    import numpy as np

TORCHVISION = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST"}
DATASETS = (*TORCHVISION, "digits", "diabetes")
FILE_TYPES = (".npz", ".safetensors")
ARRAYS = ("x_train", "y_train", "x_test", "y_test")
DIGITS_TEST_SIZE = 360
DIABETES_TEST_SIZE = 88

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors, and what a model and its metrics need to know about them.

    Inputs are float `(N, *in_shape)` (images `(N, 1, H, W)` in [0, 1]). Classification labels
    are int64 `(N,)` in `[0, classes)`; regression targets are float `(N, targets)`, standardised
    when `target_std` is set (then `original_mse` gives a metric back in the data's units).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    task: Task
    classes: int | None
    target_mean: float | None = None
    target_std: float | None = None

    def __post_init__(self) -> None:
        if (self.task == "classification") != (self.classes is not None):
            raise ValueError(f"a {self.task} dataset has classes={self.classes}")
        if self.task == "classification" and self.target_std is not None:
            raise ValueError("a classification dataset has no target mean or std")
        if (self.target_mean is None) != (self.target_std is None):
            raise ValueError("target_mean and target_std go together")

    @property
    def in_shape(self) -> tuple[int, ...]:
        """One input's shape, e.g. `(1, 28, 28)`: what a conv net is built for."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_features(self) -> int:
        """Numbers per input (pixels per image): an MLP's input width."""
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        """The model's output width: the classes, or the regression targets per row."""
        return self.classes if self.classes is not None else self.y_train.shape[1]

    def original_mse(self, mse: float) -> float:
        """A mean squared error on the standardised targets, in the data's own units (R² needs none)."""
        return mse if self.target_std is None else mse * self.target_std**2

    def original_targets(self, y: Tensor) -> Tensor:
        """Targets or predictions on the standardised scale, back in the data's own units."""
        if self.target_std is None or self.target_mean is None:
            return y
        return y * self.target_std + self.target_mean

    def to(self, device: torch.device | str) -> Dataset:
        """The same dataset with its four tensors on `device`."""
        moved = {k: getattr(self, k).to(device) for k in ARRAYS}
        return replace(self, **moved)


def fingerprint(data: Dataset) -> str:
    """`sha256:HEX` of what a dataset holds as loaded: each array's name, dtype, shape and bytes, and
    the task, classes and target scaling. The same data, wherever its file is, has the same one;
    a file re-saved with equal arrays too (an .npz's bytes hold the time it was written)."""
    import hashlib

    digest = hashlib.sha256(repr((data.task, data.classes, data.target_mean, data.target_std)).encode())
    for key in ARRAYS:
        t = getattr(data, key).detach().to("cpu").contiguous()
        digest.update(f"{key} {t.dtype} {tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()}"


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
    if not body:
        return torch.empty(shape, dtype=torch.uint8)
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
            f"cannot read {name} from {raw} (truncated or corrupt file: {first_line(e)}); "
            "delete the files to download them again"
        ) from None
    if len(x) != len(y):
        raise DataError(f"cannot read {name} from {raw}: images and labels do not match")
    return _images(x), y.long()


def _check_images(name: str, root: Path, *tensors: Tensor) -> None:
    """Refuse splits no intact download holds: images of two sizes, no rows, labels beyond the
    dataset's 10 classes (each would fail later as the model's error, mid-run or at the test)."""
    x_train, y_train, x_test, y_test = tensors
    problem = (
        f"train images are {tuple(x_train.shape[2:])} but test images {tuple(x_test.shape[2:])}"
        if x_train.shape[1:] != x_test.shape[1:]
        else "a split holds no images" if not (len(y_train) and len(y_test))
        else f"labels up to {int(max(y_train.max(), y_test.max()))} in a dataset of 10 classes"
        if max(y_train.max(), y_test.max()) >= 10 or min(y_train.min(), y_test.min()) < 0
        else None
    )
    if problem is not None:
        raw = root / TORCHVISION[name] / "raw"
        raise DataError(f"cannot read {name} from {raw} ({problem}); delete the files to download them again")


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
            why = "could not be downloaded" if download else "downloading is off (PURESTEP_OFFLINE)"
            raise DataError(
                f"{name} is not in {raw} and {why}; "
                "connect to the internet once, or use --dataset digits to work offline"
            ) from None
        cause = first_line(e)
        raise DataError(
            f"cannot read {name} from {raw} (truncated or corrupt file: {cause}); "
            "delete the files to download them again"
        ) from None
    if len(ds.data) != len(ds.targets) or ds.data.ndim != 3:
        raise DataError(f"cannot read {name} from {raw}: images and labels do not match")
    return _images(ds.data), ds.targets.long()



def _bundled(name: Literal["digits", "diabetes"]) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled `name` as `(data, target)`: digits' 8x8 images, diabetes' raw rows.

    Read through scikit-learn once, then from a copy under `cache_home()/data` keyed by its
    version: importing scikit-learn is most of a small study's start, and the copy is not.
    """
    import numpy as np

    try:
        version = importlib.metadata.version("scikit-learn")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"the {name} dataset needs scikit-learn: pip install 'purestep[digits]'") from None
    copy = cache_home() / "data" / f"scikit-learn-{version}-{name}.npz"
    unreadable = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
    with contextlib.suppress(*unreadable), np.load(copy, allow_pickle=False) as saved:
        return saved["data"], saved["target"]
    from sklearn import datasets

    bunch = datasets.load_digits() if name == "digits" else datasets.load_diabetes(scaled=False)
    data = bunch.images if name == "digits" else bunch.data
    with contextlib.suppress(OSError), replacing(copy) as tmp, open(tmp, "wb") as f:
        np.savez(f, data=data, target=bunch.target)
    return data, bunch.target


def _seeded_split(n: int, test_size: int) -> tuple[Tensor, Tensor]:
    """Row indices `(train, test)`: a permutation seeded by 0, its first `test_size` rows the test set."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return order[test_size:], order[:test_size]


def _digits() -> Dataset:
    images, target = _bundled("digits")
    x = torch.from_numpy(images).to(torch.get_default_dtype()).div(16).unsqueeze(1)
    y = torch.from_numpy(target).long()
    train, test = _seeded_split(len(y), DIGITS_TEST_SIZE)
    return Dataset("digits", x[train], y[train], x[test], y[test], "classification", 10)


def _diabetes() -> Dataset:
    """scikit-learn's raw diabetes data (442 rows, 10 features), standardised on the training rows.

    Each input column and the target get the training rows' mean and (population) std, applied
    to both splits, so the test set informs nothing; the target's mean and std travel along.
    """
    rows, target = _bundled("diabetes")
    x = torch.from_numpy(rows).double()
    y = torch.from_numpy(target).double().unsqueeze(1)
    train, test = _seeded_split(len(y), DIABETES_TEST_SIZE)
    x_mean, x_std = x[train].mean(0), x[train].std(0, correction=0)
    y_mean, y_std = y[train].mean(), y[train].std(correction=0)
    dtype = torch.get_default_dtype()
    x, y = ((x - x_mean) / x_std).to(dtype), ((y - y_mean) / y_std).to(dtype)
    return Dataset(
        "diabetes", x[train], y[train], x[test], y[test], "regression", None, y_mean.item(), y_std.item()
    )


# --- a user's own arrays --------------------------------------------------------------------------


def read_arrays(path: str | os.PathLike[str]) -> Dataset:
    """A user's dataset from an `.npz` or `.safetensors` file holding `x_train, y_train, x_test, y_test`.

    Used as given, not standardised (what is trained on is what the file holds, and a saved model
    predicts in the file's units). Inputs of any float dtype (float8 included) and any trailing
    shape become float32; integer labels (>= 0, unsigned of any width included) mean classification
    with `max + 1` classes, float targets regression (a 1-D target becomes `(N, 1)`). Pickled arrays
    are never loaded.
    Raises:
        DataError: one line naming the file and its problem.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'}; use .npz or .safetensors")
    if not path.is_file():
        raise DataError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        arrays = _read_npz(path) if suffix == ".npz" else _read_safetensors(path)
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    return _from_arrays(path, arrays)


def _read_npz(path: Path) -> dict[str, Tensor]:
    import numpy as np

    with path.open("rb") as f:
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise DataError(f"{path}: not an .npz archive (np.savez writes one)")
    arrays: dict[str, Tensor] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            _require_keys(path, archive.files)
            for key in ARRAYS:
                try:
                    array = archive[key]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise DataError(f"{path}: {key} holds Python objects, never loaded") from None
                    raise
                if not isinstance(array, np.ndarray):  # a member np.save did not write: its raw bytes
                    raise DataError(f"{path}: {key} is not an .npy array (np.savez writes one)")
                arrays[key] = _from_numpy(path, key, array)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: an array's header claims more memory than this machine has") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise DataError(f"{path}: corrupt .npz archive ({first_line(e)})") from None
    except (RuntimeError, NotImplementedError) as e:  # an encrypted member; a compression zipfile lacks
        raise DataError(f"{path}: unreadable .npz archive ({first_line(e)})") from None
    return arrays


def _from_numpy(path: Path, key: str, array: np.ndarray) -> Tensor:
    """Numbers as a tensor of their dtype, or the nearest torch has (float128: float64)."""
    import numpy as np

    kind, dtype = array.dtype.kind, array.dtype.newbyteorder("=")
    if kind not in "biufc":
        raise DataError(f"{path}: {key} has dtype {array.dtype}; dataset arrays hold numbers")
    if kind in "fc" and dtype.itemsize > 8 * (1 + (kind == "c")):
        dtype = np.dtype(np.float64 if kind == "f" else np.complex128)
    return torch.from_numpy(np.asarray(array, dtype=dtype, order="C"))


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise DataError(f"{path}: corrupt .safetensors file ({first_line(e)})") from None
    _require_keys(path, list(tensors))
    return {key: tensors[key] for key in ARRAYS}


def _require_keys(path: Path, present: list[str]) -> None:
    missing = [key for key in ARRAYS if key not in present]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} (a dataset file holds {', '.join(ARRAYS)})")


def _from_arrays(path: Path, arrays: dict[str, Tensor]) -> Dataset:
    """Check a file's four arrays and make them a dataset (every problem a `DataError` naming the file)."""

    def check(ok: bool | Tensor, problem: str) -> None:
        if not ok:
            raise DataError(f"{path}: {problem}")

    arrays = {key: _widened(path, key, t) for key, t in arrays.items()}
    x_train, y_train, x_test, y_test = (arrays[key] for key in ARRAYS)
    for key, t in arrays.items():
        check(t.ndim > 0, f"{key} is a single number; it needs one row per sample")
        dtype = _dtype_name(t)
        if key.startswith("x"):
            check(t.is_floating_point(), f"{key} has dtype {dtype}; inputs must be floating point")
        else:
            usable = t.dtype != torch.bool and not t.is_complex()
            check(usable, f"{key} has dtype {dtype}; targets are integer class labels or float values")
        check(not t.is_floating_point() or torch.isfinite(t).all(), f"{key} has NaN or infinite values")
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        check(len(x) == len(y), f"x_{part} has {len(x)} rows but y_{part} has {len(y)}")
        check(len(y) > 0, f"the {part} set is empty")
    x_train, x_test = (x if x.ndim > 1 else x.unsqueeze(1) for x in (x_train, x_test))
    shapes = f"x_train rows are {tuple(x_train.shape[1:])}, x_test rows {tuple(x_test.shape[1:])}"
    check(x_train.shape[1:] == x_test.shape[1:], f"{shapes}; they must match")
    check(x_train[0].numel() > 0, f"inputs have no features ({shapes})")
    check(
        y_train.is_floating_point() == y_test.is_floating_point(),
        f"y_train is {_dtype_name(y_train)} but y_test {_dtype_name(y_test)}; "
        "both integer labels or both float targets",
    )
    if y_train.is_floating_point():
        task, classes = "regression", None
        y_train, y_test = (y if y.ndim > 1 else y.unsqueeze(1) for y in (y_train, y_test))
        shapes = f"y_train {tuple(y_train.shape)}, y_test {tuple(y_test.shape)}"
        check(y_train.ndim == y_test.ndim == 2, f"regression targets are (rows, targets); got {shapes}")
        check(y_train.shape[1] == y_test.shape[1], f"the splits have different targets: {shapes}")
        check(y_train.shape[1] > 0, f"regression targets have no columns: {shapes}")
        y_train, y_test = _as_float(path, "y_train", y_train), _as_float(path, "y_test", y_test)
    else:
        task = "classification"
        for key, y in (("y_train", y_train), ("y_test", y_test)):
            check(y.ndim == 1, f"{key} has shape {tuple(y.shape)}; class labels are 1-D, one per row")
            check(y.min() >= 0, f"{key} has a negative label ({y.min().item()}); labels are 0, 1, 2, ...")
        classes = int(max(y_train.max(), y_test.max())) + 1
        y_train, y_test = y_train.long(), y_test.long()
    x_train, x_test = _as_float(path, "x_train", x_train), _as_float(path, "x_test", x_test)
    return Dataset(path.stem, x_train, y_train, x_test, y_test, task, classes)


_WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def _widened(path: Path, key: str, t: Tensor) -> Tensor:
    """A file's array in a dtype torch computes with (it has few ops for these): labels of unsigned
    ints wider than a byte as int64, refusing uint64 values beyond it; float8 values as float32."""
    if key.startswith("y") and t.dtype in _WIDE_UNSIGNED:
        if t.dtype == torch.uint64 and bool((t.view(torch.int64) < 0).any()):
            raise DataError(f"{path}: {key} holds labels beyond int64")
        return t.to(torch.int64)
    if t.is_floating_point() and t.itemsize == 1:
        try:
            return t.to(torch.float32)
        except (NotImplementedError, RuntimeError):  # packed float4 pairs: no conversion in torch
            dtype = _dtype_name(t)
            raise DataError(f"{path}: {key} has dtype {dtype}, which torch cannot compute with") from None
    return t


def _as_float(path: Path, key: str, t: Tensor) -> Tensor:
    """`t` in the default float dtype (float32), refusing values that overflow it."""
    cast = t.to(torch.get_default_dtype())
    if not torch.isfinite(cast).all():
        raise DataError(f"{path}: {key} has values beyond {_dtype_name(cast)}'s range")
    return cast


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def is_file_name(name: str) -> bool:
    """Whether a dataset name that is not built in means a file: it has a suffix or a folder, or exists."""
    return bool(name) and (bool(Path(name).suffix) or "/" in name or os.sep in name or Path(name).exists())


def default_data_dir() -> Path:
    """`$PURESTEP_DATA` if set, else `./data` (the tutorial's `root="data"`)."""
    return Path(os.environ.get("PURESTEP_DATA", "data"))


def load_dataset(
    name: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    download: bool | None = None,
) -> Dataset:
    """Load a dataset once into tensors on `device`.

    Args:
        name: one of `DATASETS` (`fashion-mnist`, `mnist`, `kmnist` through torchvision;
            `digits` (classification) and `diabetes` (regression), bundled with scikit-learn,
            offline), or the path of an `.npz`/`.safetensors` file (see `read_arrays`).
        root: directory of the torchvision files (downloaded there when missing).
        device: where the tensors live for the whole run.
        download: fetch missing torchvision files, as the tutorial does; by default
            yes unless `$PURESTEP_OFFLINE` is set (to anything but 0).
    Raises:
        DataError: unknown name, no data and no network, or unreadable files.
    """
    if not isinstance(name, str) or (name not in DATASETS and is_file_name(name)):
        data = read_arrays(name)
    elif name == "digits":
        data = _digits()
    elif name == "diabetes":
        data = _diabetes()
    elif name in TORCHVISION:
        root = Path(root) if root is not None else default_data_dir()
        if download is None:
            download = os.environ.get("PURESTEP_OFFLINE", "0") in ("", "0")
        x_train, y_train = _torchvision_split(name, root, True, download)
        x_test, y_test = _torchvision_split(name, root, False, download)
        _check_images(name, root, x_train, y_train, x_test, y_test)
        data = Dataset(name, x_train, y_train, x_test, y_test, "classification", 10)
    else:
        choices = ", ".join(DATASETS)
        raise DataError(f"unknown dataset {name!r}; choose one of {choices}, or an .npz/.safetensors file")
    return data.to(device)


def dataset_task(name: str) -> Task:
    """A dataset's task before it is loaded: built-in ones by name; a file's from its targets' dtype.

    Raises:
        DataError: the file cannot be read as a dataset.
    """
    if name == "diabetes":
        return "regression"
    if name not in DATASETS and is_file_name(name):
        return read_arrays(name).task
    return "classification"


def split(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Seeded split of `(x, y)` into `(x_a, y_a, x_b, y_b)` with `fraction` of the rows in b."""
    if not 0 < fraction < 1:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    n_b = max(1, round(len(y) * fraction))
    if n_b >= len(y):
        raise ValueError(f"holding out {fraction} of {len(y)} rows leaves none to train on")
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
