"""Data contract: torchvision files read as ToTensor() does; diabetes standardised on its training
split; a user's .npz/.safetensors arrays round-trip, and a bad file is one line; batches cover every
sample once."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file
from torchvision import datasets
from torchvision.transforms import ToTensor
from typer.testing import CliRunner

from purestep import DATASETS, DataError, batches, epoch_order, load_dataset, split
from purestep.cli import app
from purestep.core.data import ARRAYS, is_file_name, num_batches, write_fake_mnist, write_idx


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "kmnist"])
def test_idx_files_load_through_torchvision_with_totensor_values(tmp_path, name):
    write_fake_mnist(tmp_path, name, 50, 12, seed=3)
    data = load_dataset(name, tmp_path, download=False)
    assert data.x_train.shape == (50, 1, 28, 28) and data.x_test.shape == (12, 1, 28, 28)
    assert data.in_features == 784 and data.y_train.dtype == torch.int64
    cls = getattr(datasets, {"fashion-mnist": "FashionMNIST", "mnist": "MNIST", "kmnist": "KMNIST"}[name])
    reference = cls(str(tmp_path), train=True, transform=ToTensor())
    for i in (0, 17, 49):
        image, label = reference[i]
        assert torch.equal(data.x_train[i], image)
        assert data.y_train[i].item() == label


def test_digits_is_offline_and_split_1437_360():
    data = load_dataset("digits")
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert set(data.y_train.tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["digits", "diabetes"])
def test_bundled_data_is_read_through_scikit_learn_once_then_from_a_cached_copy(tmp_path, monkeypatch, name):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def arrays(name):
        data = load_dataset(name)
        return [getattr(data, key) for key in ARRAYS]

    first = arrays(name)
    (copy,) = (tmp_path / "purestep" / "data").glob(f"scikit-learn-*-{name}.npz")
    assert all(torch.equal(a, b) for a, b in zip(first, arrays(name), strict=True))
    # the copy is what a later load reads: rows reversed in it are reversed in the data
    with np.load(copy) as saved:
        data, target = saved["data"], saved["target"]
    np.savez(copy, data=data[::-1], target=target[::-1])
    assert not torch.equal(arrays(name)[0], first[0])
    # a damaged copy is read through scikit-learn again and written whole
    copy.write_bytes(b"not an npz")
    assert all(torch.equal(a, b) for a, b in zip(first, arrays(name), strict=True))
    with np.load(copy) as saved:
        assert np.array_equal(saved["data"], data) and np.array_equal(saved["target"], target)


def test_missing_data_offline_names_the_directory_and_digits(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", tmp_path / "nowhere", download=False)
    message = str(e.value)
    assert str(tmp_path / "nowhere") in message and "--dataset digits" in message and "\n" not in message
    assert "downloading is off" in message  # nothing was tried: not "could not be downloaded"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_give_a_clear_error(tmp_path, damage):
    raw = write_fake_mnist(tmp_path, "fashion-mnist", 30, 10)
    target = raw / "train-images-idx3-ubyte"
    data = target.read_bytes()
    target.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage])
    with pytest.raises(DataError, match="cannot read fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path, download=False)


@pytest.mark.parametrize(
    ("file", "tensor", "said"),
    [
        ("t10k-images-idx3-ubyte", torch.zeros(10, 7, 7, dtype=torch.uint8), "train images are (28, 28) but"),
        ("train-labels-idx1-ubyte", torch.full((30,), 200, dtype=torch.uint8), "labels up to 200 in a"),
        ("t10k-images-idx3-ubyte", torch.zeros(0, 28, 28, dtype=torch.uint8), "a split holds no images"),
    ],
)
def test_files_no_intact_download_holds_are_refused_as_data(tmp_path, file, tensor, said):
    """Each failed later as the model's error: test images of another size at the final test,
    labels beyond 10 as "--model mlp gives 10 outputs", no rows as torch's buffer message."""
    raw = write_fake_mnist(tmp_path, "fashion-mnist", 30, 10)
    write_idx(raw / file, tensor)
    if len(tensor) == 0:
        write_idx(raw / "t10k-labels-idx1-ubyte", torch.zeros(0, dtype=torch.uint8))
    with pytest.raises(DataError, match=re.escape(f"cannot read fashion-mnist from {raw} ({said}")):
        load_dataset("fashion-mnist", tmp_path, download=False)


def test_a_file_suffix_in_capitals_is_read(tmp_path):
    _npz()(tmp_path / "d.npz")
    (tmp_path / "d.npz").rename(tmp_path / "D.NPZ")
    assert load_dataset(str(tmp_path / "D.NPZ")).name == "D"


def test_unknown_dataset_is_refused():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar10")


@given(n=st.integers(1, 300), batch_size=st.integers(1, 70), shuffle=st.booleans(), seed=st.integers(0, 99))
def test_an_epoch_covers_every_sample_exactly_once(n, batch_size, shuffle, seed):
    x = torch.arange(n).float().unsqueeze(1)
    y = torch.arange(n)
    order = epoch_order(n, 0, seed) if shuffle else None
    seen = [b for _, b in batches(x, y, batch_size, order)]
    assert len(seen) == num_batches(n, batch_size)
    assert all(len(b) == batch_size for b in seen[:-1]) and 1 <= len(seen[-1]) <= batch_size
    assert sorted(torch.cat(seen).tolist()) == list(range(n))
    if not shuffle:
        assert torch.cat(seen).tolist() == list(range(n))


def test_file_order_batches_are_views():
    x, y = torch.rand(10, 3), torch.arange(10)
    xb, yb = next(iter(batches(x, y, 4)))
    assert xb.data_ptr() == x.data_ptr() and yb._base is y


@given(n=st.integers(2, 500), epoch=st.integers(0, 50), seed=st.integers(0, 10**6))
def test_seeded_shuffle_is_a_deterministic_permutation(n, epoch, seed):
    a, b = epoch_order(n, epoch, seed), epoch_order(n, epoch, seed)
    assert torch.equal(a, b)
    assert sorted(a.tolist()) == list(range(n))
    if n > 20:  # another epoch, another seed: another order
        assert not torch.equal(a, epoch_order(n, epoch + 1, seed))
        assert not torch.equal(a, epoch_order(n, epoch, seed + 1))


@given(n=st.integers(2, 400), fraction=st.floats(0.05, 0.5), seed=st.integers(0, 999))
def test_split_is_seeded_disjoint_and_complete(n, fraction, seed):
    x, y = torch.arange(n).float(), torch.arange(n)
    xa, ya, xb, yb = split(x, y, fraction, seed)
    assert sorted(torch.cat([ya, yb]).tolist()) == list(range(n))
    assert len(yb) == max(1, round(n * fraction))
    assert torch.equal(split(x, y, fraction, seed)[3], yb)


# --- what a dataset carries ------------------------------------------------------------------------


def test_image_datasets_describe_themselves(tmp_path):
    write_fake_mnist(tmp_path, "mnist", 20, 5)
    for data in (load_dataset("mnist", tmp_path, download=False), load_dataset("digits")):
        assert data.task == "classification" and data.classes == data.out_features == 10
        assert data.in_shape == tuple(data.x_train.shape[1:]) and data.in_features == math.prod(data.in_shape)
        assert data.target_mean is None and data.original_mse(0.25) == 0.25


def test_diabetes_is_offline_standardised_on_the_training_split():
    data = load_dataset("diabetes")
    assert data.name == "diabetes" and data.task == "regression" and data.classes is None
    assert data.x_train.shape == (354, 10) and data.y_train.shape == (354, 1)
    assert data.x_test.shape == (88, 10) and data.y_test.shape == (88, 1)
    assert data.in_shape == (10,) and data.in_features == 10 and data.out_features == 1
    assert all(t.dtype == torch.float32 for t in (data.x_train, data.y_train, data.x_test, data.y_test))
    for t in (data.x_train, data.y_train):
        assert torch.allclose(t.mean(0), torch.zeros(t.shape[1]), atol=1e-5)
        assert torch.allclose(t.std(0, correction=0), torch.ones(t.shape[1]), atol=1e-5)
    # the test split is scaled by the training statistics, not its own
    assert data.x_test.mean(0).abs().max() > 1e-3


def test_diabetes_rows_stay_aligned_and_return_to_the_original_units():
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    raw = torch.from_numpy(load_diabetes(scaled=False).target).float()
    data = load_dataset("diabetes")
    back = data.original_targets(torch.cat([data.y_train, data.y_test])).squeeze(1)
    assert torch.allclose(back.sort().values, raw.sort().values, rtol=1e-5, atol=1e-3)
    assert data.target_mean == pytest.approx(
        data.original_targets(data.y_train).double().mean().item(), rel=1e-6
    )
    # inputs and targets moved together: a linear model explains a good part of the test variance
    fit = LinearRegression().fit(data.x_train.numpy(), data.y_train.numpy())
    assert fit.score(data.x_test.numpy(), data.y_test.numpy()) > 0.3


@given(predictions=st.lists(st.floats(-3, 3, width=32), min_size=88, max_size=88))
def test_original_mse_is_the_mse_of_the_original_units(predictions):
    data = load_dataset("diabetes")
    p = torch.tensor(predictions).double().unsqueeze(1)
    y = data.y_test.double()
    standardised = ((p - y) ** 2).mean().item()
    original = ((data.original_targets(p) - data.original_targets(y)) ** 2).mean().item()
    assert data.original_mse(standardised) == pytest.approx(original, rel=1e-9)


@given(
    n=st.integers(2, 60), targets=st.integers(1, 3), seed=st.integers(0, 99), batch_size=st.integers(1, 16)
)
def test_split_and_batches_carry_float_targets_row_for_row(n, targets, seed, batch_size):
    x = torch.arange(n).float().unsqueeze(1).expand(n, 4)
    y = torch.arange(n).float().unsqueeze(1).expand(n, targets) / 7
    xa, ya, xb, yb = split(x, y, 0.3, seed)
    assert ya.shape == (len(xa), targets) and yb.shape == (len(xb), targets)
    assert torch.equal(xa[:, 0] / 7, ya[:, 0]) and torch.equal(xb[:, 0] / 7, yb[:, 0])
    for xs, ys in batches(xa, ya, batch_size, epoch_order(len(ya), 0, seed)):
        assert torch.equal(xs[:, :1] / 7, ys[:, :1])


# --- a user's own arrays ---------------------------------------------------------------------------

FLOATS = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
FLOAT8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}  # safetensors only
LABELS = [
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
]


def save_arrays(path, arrays: dict[str, torch.Tensor]) -> None:
    """Write tensors as the file type `path` names (`.npz` through numpy)."""
    if path.suffix == ".npz":
        np.savez(path, **{k: v.numpy() for k, v in arrays.items()})
    else:
        save_file({k: v.contiguous() for k, v in arrays.items()}, path)


@st.composite
def user_arrays(draw):
    suffix = draw(st.sampled_from([".npz", ".safetensors"]))
    names = [n for n in FLOATS if suffix == ".safetensors" or n != "bfloat16"]  # numpy has no bfloat16
    names += list(FLOAT8) if suffix == ".safetensors" else []
    shape = tuple(draw(st.lists(st.integers(1, 4), max_size=3)))
    sizes = {"train": draw(st.integers(1, 30)), "test": draw(st.integers(1, 10))}
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x_dtype = (FLOATS | FLOAT8)[draw(st.sampled_from(names))]
    arrays = {f"x_{p}": torch.randn((n, *shape), generator=g).to(x_dtype) for p, n in sizes.items()}
    if draw(st.booleans()):
        classes, dtype = draw(st.integers(1, 12)), draw(st.sampled_from(LABELS))
        arrays |= {f"y_{p}": torch.randint(0, classes, (n,), generator=g).to(dtype) for p, n in sizes.items()}
    else:
        columns = draw(st.sampled_from([(), (1,), (3,)]))
        y_dtype = (FLOATS | FLOAT8)[draw(st.sampled_from(names))]
        arrays |= {f"y_{p}": torch.randn((n, *columns), generator=g).to(y_dtype) for p, n in sizes.items()}
    return suffix, arrays


@given(case=user_arrays())
def test_npz_and_safetensors_round_trip(tmp_path_factory, case):
    suffix, arrays = case
    path = tmp_path_factory.mktemp("arrays") / f"my-data{suffix}"
    save_arrays(path, arrays)
    data = load_dataset(str(path))
    assert data.name == "my-data" and data.target_mean is None and data.original_mse(2.0) == 2.0
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        x_loaded, y_loaded = getattr(data, f"x_{part}"), getattr(data, f"y_{part}")
        assert torch.equal(x_loaded, (x if x.ndim > 1 else x.unsqueeze(1)).float())
        if y.is_floating_point():
            assert torch.equal(y_loaded, (y if y.ndim > 1 else y.unsqueeze(1)).float())
        else:
            assert y_loaded.dtype == torch.int64 and torch.equal(y_loaded, y.long())
    assert data.in_shape == (tuple(arrays["x_train"].shape[1:]) or (1,))
    if arrays["y_train"].is_floating_point():
        assert data.task == "regression" and data.classes is None
        assert data.out_features == data.y_train.shape[1] == data.y_test.shape[1]
    else:
        labels = torch.cat([arrays["y_train"], arrays["y_test"]]).long()
        assert data.task == "classification" and data.classes == data.out_features == labels.max() + 1
    assert load_dataset(path).name == "my-data"  # a Path works as well as its string


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64], ids=lambda d: str(d)[6:])
def test_unsigned_labels_of_any_width_load_as_int64(tmp_path, suffix, dtype):
    labels = {"y_train": torch.tensor([0, 4, 2, 1, 3, 0]), "y_test": torch.tensor([1, 4])}
    arrays = {"x_train": torch.rand(6, 3), "x_test": torch.rand(2, 3)}
    save_arrays(tmp_path / f"d{suffix}", arrays | {k: v.to(dtype) for k, v in labels.items()})
    data = load_dataset(tmp_path / f"d{suffix}")
    assert data.task == "classification" and data.classes == 5
    assert torch.equal(data.y_train, labels["y_train"]) and torch.equal(data.y_test, labels["y_test"])


@pytest.mark.parametrize("dtype", list(FLOAT8.values()), ids=list(FLOAT8))
def test_float8_inputs_and_targets_load_as_float32(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    x = {p: torch.randn(n, 3, generator=g).to(dtype) for p, n in (("train", 6), ("test", 2))}
    arrays = {f"x_{p}": v for p, v in x.items()} | {f"y_{p}": v[:, 0].clone() for p, v in x.items()}
    save_file(arrays, tmp_path / "d.safetensors")
    data = load_dataset(tmp_path / "d.safetensors")
    assert data.task == "regression" and data.x_train.dtype == data.y_train.dtype == torch.float32
    for p, v in x.items():
        assert torch.equal(getattr(data, f"x_{p}"), v.float())
        assert torch.equal(getattr(data, f"y_{p}"), v[:, :1].float())


def test_a_safetensors_file_of_narrow_dtypes_trains_from_the_cli(tmp_path):
    """uint16 labels and float8 inputs: `train` runs its epoch on them."""
    arrays = {k: torch.from_numpy(v) for k, v in _good(70, 12).items()}
    arrays |= {k: v.to(torch.uint16 if k.startswith("y") else torch.float8_e4m3fn) for k, v in arrays.items()}
    save_arrays(tmp_path / "narrow.safetensors", arrays)
    args = ["train", "--dataset", str(tmp_path / "narrow.safetensors"), "--epochs", "1", "--impl", "eager"]
    result = CliRunner().invoke(app, [*args, "--json", "--hidden", "8"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["config"]["dataset"] == "narrow" and len(summary["history"]) == 1


def _good(n_train: int = 10, n_test: int = 4) -> dict[str, np.ndarray]:
    r = np.random.default_rng(0)
    return {
        "x_train": r.random((n_train, 5), dtype=np.float32),
        "y_train": r.integers(0, 3, n_train),
        "x_test": r.random((n_test, 5), dtype=np.float32),
        "y_test": r.integers(0, 3, n_test),
    }


def _npz(**changes):
    """Writer of an .npz holding the good arrays with `changes` (None deletes a key)."""

    def write(path):
        arrays = {k: v for k, v in (_good() | changes).items() if v is not None}
        np.savez(path, **arrays)

    return write


class _MakesADirectory:
    """Unpickling this creates the directory `marker`: a file that runs code when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _pickled(path):
    path.write_bytes(pickle.dumps(_MakesADirectory(str(path.parent / "unpickled"))))


def _pickle_inside(path):
    arrays = _good() | {"y_test": np.array([_MakesADirectory(str(path.parent / "unpickled"))] * 4)}
    np.savez(path, **arrays)


def _truncated(path):
    _npz()(path)
    path.write_bytes(path.read_bytes()[:300])


def _raw_members(path):
    """A zip whose members are the four names' raw bytes, not arrays np.save wrote."""
    with zipfile.ZipFile(path, "w") as archive:
        for key in ARRAYS:
            archive.writestr(key, b"abc")


def _claims_too_much(path):
    """An .npz whose x_train header claims 10**12 rows (18 TiB)."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in _good().items():
            member = io.BytesIO()
            if key == "x_train":
                header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 5)}
                np.lib.format.write_array_header_1_0(member, header)
                member.write(bytes(40))
            else:
                np.save(member, array)
            archive.writestr(f"{key}.npy", member.getvalue())


def _packed_float4(path):
    """A .safetensors whose x_train is packed float4 pairs, a dtype torch stores but cannot convert."""
    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("this torch has no float4_e2m1fn_x2")
    try:
        _safetensors(x_train=torch.zeros(10, 5, dtype=torch.uint8).view(torch.float4_e2m1fn_x2))(path)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        pytest.skip(f"this safetensors cannot write float4: {e}")


def _central_field(offset: int, value: bytes):
    """Writer of a good .npz whose first central-directory entry has `value` at `offset`: 8 holds
    the flags (bit 0: encrypted), 10 the compression method."""

    def write(path):
        _npz()(path)
        data = bytearray(path.read_bytes())
        at = data.index(b"PK\x01\x02") + offset
        data[at : at + len(value)] = value
        path.write_bytes(bytes(data))

    return write


def safetensors_writes_complex() -> bool:
    """Whether this safetensors can write complex64 (0.7 and later can; 0.4.4 raises KeyError)."""
    import safetensors.torch

    try:
        safetensors.torch.save({"c": torch.zeros(1, dtype=torch.complex64)})
    except KeyError:
        return False
    return True


def _safetensors(**changes):
    """Writer of a .safetensors holding the good arrays with `changes` (tensors or NumPy; None deletes)."""

    def write(path):
        arrays = {k: torch.as_tensor(v) for k, v in (_good() | changes).items() if v is not None}
        if any(t.is_complex() for t in arrays.values()) and not safetensors_writes_complex():
            pytest.skip("this safetensors cannot write complex64 (0.7 and later can)")
        save_file(arrays, path)

    return write


BAD_FILES = {
    "missing key": ("d.npz", _npz(y_test=None), "missing y_test"),
    "missing keys, safetensors": (
        "d.safetensors",
        _safetensors(x_train=None, y_train=None),
        "missing x_train, y_train",
    ),
    "x and y lengths": (
        "d.npz",
        _npz(y_train=np.zeros(9, dtype=np.int64)),
        "x_train has 10 rows but y_train has 9",
    ),
    "train and test shapes": ("d.npz", _npz(x_test=np.zeros((4, 6), np.float32)), "they must match"),
    "target columns": (
        "d.npz",
        _npz(y_train=np.zeros((10, 2)), y_test=np.zeros((4, 3))),
        "the splits have different targets",
    ),
    "string labels": ("d.npz", _npz(y_train=np.array(["cat"] * 10)), "y_train has dtype <U3"),
    "complex inputs": (
        "d.npz",
        _npz(x_train=np.zeros((10, 5), np.complex64)),
        "inputs must be floating point",
    ),
    "complex inputs, safetensors": (
        "d.safetensors",
        _safetensors(x_test=np.zeros((4, 5), np.complex64)),
        "x_test has dtype complex64; inputs must be floating point",
    ),
    "integer inputs": ("d.npz", _npz(x_train=np.zeros((10, 5), np.uint8)), "x_train has dtype uint8; inputs"),
    "bool labels": ("d.npz", _npz(y_test=np.ones(4, bool)), "y_test has dtype bool"),
    "labels and targets": ("d.npz", _npz(y_test=np.zeros(4)), "both integer labels or both float targets"),
    "negative label": ("d.npz", _npz(y_train=np.arange(10) - 1), "y_train has a negative label (-1)"),
    "uint64 labels beyond int64": (
        "d.npz",
        _npz(y_test=np.full(4, 2**63, np.uint64)),
        "y_test holds labels beyond",
    ),
    "uint64 labels beyond int64, safetensors": (
        "d.safetensors",
        _safetensors(y_train=np.arange(10, dtype=np.uint64) << np.uint64(60)),
        "y_train holds labels beyond int64",
    ),
    "float8 NaN input, safetensors": (
        "d.safetensors",
        _safetensors(x_train=torch.full((10, 5), math.nan).to(torch.float8_e4m3fn)),
        "x_train has NaN or infinite values",
    ),
    "2-D labels": ("d.npz", _npz(y_train=np.zeros((10, 2), np.int64)), "class labels are 1-D"),
    "NaN input": (
        "d.npz",
        _npz(x_test=np.full((4, 5), np.nan, np.float32)),
        "x_test has NaN or infinite values",
    ),
    "inf target": (
        "d.npz",
        _npz(y_train=np.full(10, np.inf), y_test=np.zeros(4)),
        "y_train has NaN or infinite",
    ),
    "float32 overflow": ("d.npz", _npz(x_train=np.full((10, 5), 1e300)), "x_train has values beyond float32"),
    "empty split": (
        "d.npz",
        _npz(x_test=np.zeros((0, 5), np.float32), y_test=np.zeros(0, np.int64)),
        "test set is empty",
    ),
    "no features": (
        "d.npz",
        _npz(x_train=np.zeros((10, 0), np.float32), x_test=np.zeros((4, 0), np.float32)),
        "no features",
    ),
    "scalar": ("d.npz", _npz(y_test=np.int64(3)), "y_test is a single number"),
    "truncated npz": ("d.npz", _truncated, "corrupt .npz archive"),
    "not an npz": ("d.npz", lambda p: p.write_bytes(b"x_train,y_train\n1,2\n"), "not an .npz archive"),
    "a pickle": ("d.npz", _pickled, "not an .npz archive"),
    "a pickle inside": ("d.npz", _pickle_inside, "y_test holds Python objects, never loaded"),
    "corrupt safetensors": (
        "d.safetensors",
        lambda p: p.write_bytes(b"\x00" * 5),
        "corrupt .safetensors file",
    ),
    "raw zip members": ("d.npz", _raw_members, "x_train is not an .npy array"),
    "a header beyond memory": ("d.npz", _claims_too_much, "claims more memory than this machine has"),
    "an encrypted member": ("d.npz", _central_field(8, b"\x01\x00"), "unreadable .npz archive"),
    "an unknown compression": ("d.npz", _central_field(10, b"\x61\x00"), "unreadable .npz archive"),
    "targets of no columns": (
        "d.npz",
        _npz(y_train=np.zeros((10, 0), np.float32), y_test=np.zeros((4, 0), np.float32)),
        "regression targets have no columns",
    ),
    "packed float4 inputs, safetensors": (
        "d.safetensors",
        _packed_float4,
        "x_train has dtype float4_e2m1fn_x2, which torch cannot compute with",
    ),
    "wrong extension": ("d.csv", lambda p: p.write_text("1,2\n"), "unsupported file type .csv"),
    "missing file": ("d.npz", lambda p: None, "no such file"),
    "a directory": ("d.npz", lambda p: p.mkdir(), "not a file"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_is_one_line_naming_the_file_and_the_problem(tmp_path, case):
    name, write, problem = BAD_FILES[case]
    path = tmp_path / name
    write(path)
    with pytest.raises(DataError) as e:
        load_dataset(str(path))
    message = str(e.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message, message
    assert not (tmp_path / "unpickled").exists()


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_through_the_cli_is_one_line_and_exit_1(tmp_path, case):
    name, write, problem = BAD_FILES[case]
    path = tmp_path / name
    write(path)
    result = CliRunner().invoke(app, ["train", "--dataset", str(path), "--epochs", "1", "--impl", "eager"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"Error: {path}: ") and problem in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert not (tmp_path / "unpickled").exists()


# --- the --dataset option ---------------------------------------------------------------------------


def test_the_cli_knows_every_built_in_name_and_lists_it_in_help():
    from purestep.cli.options import DATASET_NAMES

    assert DATASET_NAMES == DATASETS
    text = " ".join(CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).stdout.split())
    assert all(name in text for name in DATASETS) and ".npz/.safetensors" in text


@pytest.mark.parametrize("value", ["cifar10", "", "MNIST!", "Digits"])
def test_a_value_that_is_neither_a_name_nor_a_file_is_a_usage_error(value):
    result = CliRunner().invoke(app, ["train", "--dataset", value])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "--dataset" in result.stderr and "or an .npz/.safetensors file" in result.stderr
    assert not is_file_name(value)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_file_trains_and_is_labelled_by_its_stem(tmp_path, monkeypatch, task):
    arrays = _good(70, 12)
    if task == "regression":
        arrays |= {"y_train": arrays["x_train"].sum(1), "y_test": arrays["x_test"].sum(1)}
    save_arrays(tmp_path / "blobs.npz", {k: torch.from_numpy(v) for k, v in arrays.items()})
    monkeypatch.chdir(tmp_path)  # a relative path works, and is read from where the command runs
    args = ["train", "--dataset", "blobs.npz", "--epochs", "1", "--impl", "eager", "--json", "--hidden", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["config"]["dataset"] == "blobs" and len(summary["history"]) == 1
    assert summary["config"]["loss"] == ("mse" if task == "regression" else "cross_entropy")


def test_tune_names_its_study_after_the_file(tmp_path):
    save_arrays(tmp_path / "blobs.safetensors", {k: torch.from_numpy(v) for k, v in _good(70, 12).items()})
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ["tune", "--dataset", str(tmp_path / "blobs.safetensors"), "--epochs", "1", "--n-trials", "1"]
    result = CliRunner().invoke(
        app, [*args, "--storage", storage, "--no-final", "--json", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["study"] == "purestep-blobs"
