"""Data contract: torchvision files read as ToTensor() does; batches cover every sample once."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision import datasets
from torchvision.transforms import ToTensor

from purestep import DataError, batches, epoch_order, load_dataset, split
from purestep.core.data import num_batches, write_fake_mnist


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


def test_missing_data_offline_names_the_directory_and_digits(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", tmp_path / "nowhere", download=False)
    message = str(e.value)
    assert str(tmp_path / "nowhere") in message and "--dataset digits" in message and "\n" not in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_files_give_a_clear_error(tmp_path, damage):
    raw = write_fake_mnist(tmp_path, "fashion-mnist", 30, 10)
    target = raw / "train-images-idx3-ubyte"
    data = target.read_bytes()
    target.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage])
    with pytest.raises(DataError, match="cannot read fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path, download=False)


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
    if n > 20:
        assert not torch.equal(a, epoch_order(n, epoch + 1, seed))


@given(n=st.integers(2, 400), fraction=st.floats(0.05, 0.5), seed=st.integers(0, 999))
def test_split_is_seeded_disjoint_and_complete(n, fraction, seed):
    x, y = torch.arange(n).float(), torch.arange(n)
    xa, ya, xb, yb = split(x, y, fraction, seed)
    assert sorted(torch.cat([ya, yb]).tolist()) == list(range(n))
    assert len(yb) == max(1, round(n * fraction))
    assert torch.equal(split(x, y, fraction, seed)[3], yb)
