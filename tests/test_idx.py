"""The MNIST family read straight from its IDX files: torchvision's tensors, without torchvision."""

from __future__ import annotations

import subprocess
import sys

import torch

from purestep.core.data import _images, load_dataset, write_fake_mnist


def test_reading_idx_files_gives_torchvisions_tensors(tmp_path):
    from torchvision import datasets

    write_fake_mnist(tmp_path, "fashion-mnist", 30, 10)
    data = load_dataset("fashion-mnist", tmp_path, download=False)
    for train, x, y in ((True, data.x_train, data.y_train), (False, data.x_test, data.y_test)):
        theirs = datasets.FashionMNIST(str(tmp_path), train=train, download=False)
        assert torch.equal(x, _images(theirs.data)) and torch.equal(y, theirs.targets.long())


def test_loading_present_files_does_not_import_torchvision(tmp_path):
    write_fake_mnist(tmp_path, "mnist", 12, 4)
    script = (
        "import sys\n"
        "from purestep.core.data import load_dataset\n"
        f"load_dataset('mnist', {str(tmp_path)!r}, download=False)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
