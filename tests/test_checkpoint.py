"""Resumable training: per-epoch checkpoints, atomic writes, bitwise resume, NaN keeps the last good one."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from purestep import load, mlp, save, sgd
from purestep.cli import app
from purestep.core.checkpoint import LATEST, load_checkpoint, restore_generators, save_checkpoint
from purestep.core.errors import PurestepError

runner = CliRunner()
BASE = ["train", "--dataset", "digits", "--impl", "eager", "--lr", "0.05", "--momentum", "0.9", "--shuffle"]


FROZEN = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.head = nn.Linear(64, 16), nn.Linear(16, 10)
        self.first.requires_grad_(False)  # a frozen trunk: no gradient, no update, no optimizer state

    def forward(self, x):
        return self.head(self.first(x.flatten(1)).relu())
"""


@pytest.mark.parametrize(
    "model", [[], ["--model", "cnn", "--model-arg", "width=4", "--model-arg", "dense=16"], ["frozen"]]
)
def test_resume_ends_bitwise_equal_to_an_unbroken_run(tmp_path, model):
    """The MLP; the CNN: its BatchNorm buffers and its dropout's generator resume as they were; and
    a model with a frozen layer, whose momentum state holds none for it."""
    full, resumed, ckpt = tmp_path / "full.safetensors", tmp_path / "resumed.safetensors", tmp_path / "ckpt"
    if model == ["frozen"]:
        (tmp_path / "frozen.py").write_text(FROZEN)
        model = ["--model", f"{tmp_path / 'frozen.py'}:Net"]
    base = [*BASE, *model]
    assert runner.invoke(app, [*base, "--epochs", "3", "--save", str(full)]).exit_code == 0
    assert runner.invoke(app, [*base, "--epochs", "2", "--checkpoint", str(ckpt)]).exit_code == 0
    assert json.loads((ckpt / LATEST).read_text())["epoch"] == 1
    result = runner.invoke(
        app, [*base, "--epochs", "3", "--checkpoint", str(ckpt), "--resume", "--save", str(resumed)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Epoch 3\n")
    a, _ = load(full)
    b, meta = load(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["epoch"] for h in meta["history"]] == [0, 1, 2]


@pytest.fixture(scope="module")
def one_epoch_checkpoint(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("resume") / "ckpt"
    assert runner.invoke(app, [*BASE, "--epochs", "1", "--checkpoint", str(ckpt)]).exit_code == 0
    return ckpt


@pytest.mark.parametrize(
    ("changed", "said"),
    [
        (["--lr", "0.1"], "optimizer.lr: 0.05 in the checkpoint, 0.1 now"),
        (["--seed", "1"], "seed: 0 in the checkpoint, 1 now"),
        (["--no-shuffle"], "shuffle: true in the checkpoint, false now"),
        (["--batch-size", "32"], "batch_size: 64 in the checkpoint, 32 now"),
        (["--hidden", "32"], "hidden: [512, 512] in the checkpoint, [32] now"),
        (["--optimizer", "rmsprop"], "optimizer.name: sgd in the checkpoint, rmsprop now"),
        (["--model", "cnn"], "model: mlp in the checkpoint, cnn now"),
        (["--loss", "nll"], "loss: cross_entropy in the checkpoint, nll now"),
    ],
)
def test_resume_with_other_settings_is_refused_and_the_checkpoint_kept(one_epoch_checkpoint, changed, said):
    """Every setting the rest of the run depends on (`RESUME_KEYS`): another seed or order, another
    model, loss or optimizer would silently be another run."""
    ckpt = one_epoch_checkpoint
    before = {p.name: p.stat().st_mtime_ns for p in ckpt.rglob("*")}
    result = runner.invoke(app, [*BASE, "--epochs", "2", *changed, "--checkpoint", str(ckpt), "--resume"])
    assert result.exit_code == 2, result.output
    assert said in result.stderr, result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in ckpt.rglob("*")} == before


def _bytes(folder):
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("written, given", [("fp32", "bf16"), ("bf16", "fp32")])
def test_resume_with_another_precision_is_refused_naming_both_and_the_checkpoint_kept(
    tmp_path, written, given
):
    """bf16 matmuls are other arithmetic than fp32's: resuming with the other would silently change the
    rest of the run. A usage error before any training, one line naming the setting and both values,
    every byte of the checkpoint as it was."""
    ckpt = tmp_path / "ckpt"
    first = runner.invoke(app, [*BASE, "--epochs", "1", "--precision", written, "--checkpoint", str(ckpt)])
    assert first.exit_code == 0, first.output
    before = _bytes(ckpt)
    result = runner.invoke(
        app, [*BASE, "--epochs", "2", "--precision", given, "--checkpoint", str(ckpt), "--resume"]
    )
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert f"other settings (precision: {written} in the checkpoint, {given} now)" in result.stderr
    assert _bytes(ckpt) == before


@pytest.mark.parametrize("given, exit_code", [("fp32", 0), ("bf16", 2)])
def test_a_checkpoint_that_records_no_precision_resumes_as_the_fp32_run_that_wrote_it(
    tmp_path, given, exit_code
):
    """Checkpoints written before the precision was recorded come from fp32 runs (the only precision
    then): they resume at fp32 and are refused at bf16."""
    ckpt = tmp_path / "ckpt"
    assert runner.invoke(app, [*BASE, "--epochs", "1", "--checkpoint", str(ckpt)]).exit_code == 0
    meta = json.loads((ckpt / "epoch-0001" / "meta.json").read_text())
    del meta["run"]["precision"]
    (ckpt / "epoch-0001" / "meta.json").write_text(json.dumps(meta))
    result = runner.invoke(
        app, [*BASE, "--epochs", "2", "--precision", given, "--checkpoint", str(ckpt), "--resume"]
    )
    assert result.exit_code == exit_code, result.output
    if exit_code:
        assert "other settings (precision: fp32 in the checkpoint, bf16 now)" in result.stderr
    else:
        assert result.stdout.startswith("Epoch 2\n")


def test_resume_with_fewer_epochs_than_the_checkpoint_ran_is_refused_and_the_checkpoint_kept(tmp_path):
    """A checkpoint past `--epochs` cannot be resumed to it: a usage error naming both counts,
    before any training, and the checkpoint's bytes as they were."""
    ckpt = tmp_path / "ckpt"
    assert runner.invoke(app, [*BASE, "--epochs", "2", "--checkpoint", str(ckpt)]).exit_code == 0
    before = {str(p): p.read_bytes() for p in sorted(ckpt.rglob("*")) if p.is_file()}
    result = runner.invoke(app, [*BASE, "--epochs", "1", "--checkpoint", str(ckpt), "--resume"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "--epochs 1 is fewer than the 2 epochs" in result.stderr and str(ckpt) in result.stderr
    assert result.stdout == ""
    assert {str(p): p.read_bytes() for p in sorted(ckpt.rglob("*")) if p.is_file()} == before


def test_a_crash_mid_write_leaves_the_previous_checkpoint_latest(tmp_path):
    params, buffers = mlp(4, (3,), 2).init(0)
    state = sgd(0.1, momentum=0.9).init(params)
    save_checkpoint(tmp_path, 0, params, buffers, state, {"history": []}, device="cpu")
    # what a crash leaves behind: a half-written folder and pointer under temporary names
    (tmp_path / ".epoch-0002.abc").mkdir()
    (tmp_path / ".epoch-0002.abc" / "params.safetensors").write_bytes(b"\x00" * 5)
    (tmp_path / f".{LATEST}.xyz").write_text('{"checkpoint": "epo')
    found = load_checkpoint(tmp_path)
    assert found is not None and found.epoch == 0
    assert all(torch.equal(found.params[k], params[k]) for k in params)
    assert all(
        torch.equal(found.state[k], state[k]) and found.state[k].dtype == state[k].dtype for k in state
    )
    save_checkpoint(tmp_path, 1, params, buffers, state, {"history": []}, device="cpu")
    assert load_checkpoint(tmp_path).epoch == 1


def test_a_write_that_fails_leaves_no_half_written_folder_and_the_previous_checkpoint_latest(tmp_path):
    params, buffers = mlp(4, (3,), 2).init(0)
    state = sgd(0.1).init(params)
    save_checkpoint(tmp_path, 0, params, buffers, state, {"history": []}, device="cpu")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TypeError):  # meta.json cannot hold it: the last file of the folder fails
        save_checkpoint(tmp_path, 1, params, buffers, state, {"history": [object()]}, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert load_checkpoint(tmp_path).epoch == 0


def test_nan_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    args = ["train", "--dataset", "digits", "--impl", "eager", "--lr", "100", "--momentum", "0.5"]
    result = runner.invoke(app, [*args, "--batch-size", "256", "--epochs", "4", "--checkpoint", str(ckpt)])
    assert result.exit_code == 1
    assert (
        result.stderr.count("\n") == 1
        and "became nan in epoch 2" in result.stderr
        and str(ckpt) in result.stderr
    )
    found = load_checkpoint(ckpt)
    assert found.epoch == 0 and all(torch.isfinite(v).all() for v in found.params.values())


def test_a_run_without_resume_is_refused_a_folder_holding_another_runs_checkpoints(tmp_path):
    """Forgetting `--resume`: the new run would replace some of the old run's epochs and leave the
    rest; a usage error before any training instead, every byte of the folder as it was."""
    ckpt = tmp_path / "ckpt"
    assert runner.invoke(app, [*BASE, "--epochs", "2", "--checkpoint", str(ckpt)]).exit_code == 0
    before = {str(p): p.read_bytes() for p in sorted(ckpt.rglob("*")) if p.is_file()}
    result = runner.invoke(app, [*BASE, "--epochs", "1", "--lr", "0.01", "--checkpoint", str(ckpt)])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.count("\n") == 1 and "pass --resume" in result.stderr, result.stderr
    assert {str(p): p.read_bytes() for p in sorted(ckpt.rglob("*")) if p.is_file()} == before


def test_the_latest_checkpoint_is_never_written_over(tmp_path):
    """Writing again the epoch `latest.json` names would delete the folder it points at before the
    new one is in place; refused, the folder kept and no temporary one left."""
    params, buffers = mlp(4, (3,), 2).init(0)
    state = sgd(0.1).init(params)
    save_checkpoint(tmp_path, 0, params, buffers, state, {"history": []}, device="cpu")
    before = {str(p): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    with pytest.raises(PurestepError, match="latest checkpoint"):
        save_checkpoint(
            tmp_path, 0, {k: v + 1 for k, v in params.items()}, buffers, state, {"history": []}, device="cpu"
        )
    assert {str(p): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001", LATEST]


def test_a_checkpoint_on_a_gpu_keeps_and_restores_that_devices_generator_and_the_cpus(tmp_path, monkeypatch):
    """Dropout on a GPU draws its masks from that device's generator, not the CPU's: a checkpoint of
    a run there saves both, and resuming sets both (CUDA's calls stubbed: no GPU is needed)."""
    params, buffers = mlp(4, (3,), 2).init(0)
    state = sgd(0.1).init(params)
    gpu = torch.device("cuda", 0)
    gpu_state, calls = torch.arange(16, dtype=torch.uint8), []
    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or gpu_state
    )
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda s, device: calls.append(("set", device, s.clone()))
    )
    torch.manual_seed(3)
    save_checkpoint(tmp_path, 0, params, buffers, state, {"history": []}, device=gpu)
    expected = torch.rand(5)  # what the CPU's generator draws next after the checkpoint
    torch.rand(100)
    found = load_checkpoint(tmp_path)
    assert sorted(found.rng) == ["cpu", "cuda"] and torch.equal(found.rng["cuda"], gpu_state)
    restore_generators(found.rng, gpu)
    assert torch.equal(torch.rand(5), expected)
    assert [c[:2] for c in calls] == [("get", gpu), ("set", gpu)] and torch.equal(calls[1][2], gpu_state)


def test_a_checkpoint_written_on_the_cpu_resumes_on_a_gpu_leaving_its_generator_alone(tmp_path, monkeypatch):
    """A checkpoint without the GPU's generator (written on the CPU, or before it was kept) loads, and
    resuming it on a GPU sets the CPU's generator and leaves the GPU's as the run's seed left it."""
    params, buffers = mlp(4, (3,), 2).init(0)
    state = sgd(0.1).init(params)
    torch.manual_seed(4)
    save_checkpoint(tmp_path, 0, params, buffers, state, {"history": []}, device="cpu")
    expected = torch.rand(5)
    found = load_checkpoint(tmp_path)
    assert sorted(found.rng) == ["cpu"]

    def set_rng_state(s, device):
        raise AssertionError("the GPU's generator was set from a checkpoint that holds none")

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    restore_generators(found.rng, "cuda")
    assert torch.equal(torch.rand(5), expected)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads fds' paths from /proc")
def test_each_rename_into_place_is_followed_by_a_sync_of_the_folder_holding_it(tmp_path, monkeypatch):
    """A rename is on disk only once its folder is: without syncing it, a power loss after the rename
    can bring back the old name. The checkpoint folder's rename and latest.json's are each followed
    by a sync of `tmp_path` before anything else happens."""
    params, buffers = mlp(4, (3,), 2).init(0)
    state = sgd(0.1).init(params)
    events: list[tuple[str, Path]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("replace", Path(dst)))

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    folder = tmp_path.resolve()
    save_checkpoint(folder, 0, params, buffers, state, {"history": []}, device="cpu")
    for renamed in (folder / "epoch-0001", folder / LATEST):
        i = events.index(("replace", renamed))
        assert events[i + 1] == ("fsync", folder), events
    assert events.index(("replace", folder / "epoch-0001")) < events.index(("replace", folder / LATEST))


def test_a_folder_that_cannot_be_opened_to_sync_is_skipped(tmp_path, monkeypatch):
    """Where a folder cannot be opened (Windows), its renames go without the sync and nothing fails."""
    params, buffers = mlp(4, (3,), 2).init(0)
    state = sgd(0.1).init(params)
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    save_checkpoint(tmp_path, 0, params, buffers, state, {"history": []}, device="cpu")
    assert load_checkpoint(tmp_path).epoch == 0


@pytest.mark.parametrize(
    "file, text",
    [
        (LATEST, "[]"),
        (LATEST, '{"checkpoint": null}'),
        (LATEST, '{"checkpoint": "../elsewhere"}'),
        ("epoch-0001/meta.json", '{"epoch": null}'),
        ("epoch-0001/meta.json", '{"epoch": 0}'),  # no run, no history
    ],
)
def test_a_checkpoint_whose_json_was_edited_is_one_line_naming_it(tmp_path, file, text):
    ckpt = tmp_path / "ckpt"
    assert runner.invoke(app, [*BASE, "--epochs", "1", "--checkpoint", str(ckpt)]).exit_code == 0
    (ckpt / file).write_text(text)
    result = runner.invoke(app, [*BASE, "--epochs", "2", "--checkpoint", str(ckpt), "--resume"])
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"Error: cannot read the checkpoint in {ckpt}"), result.stderr


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_and_checkpoints_take_the_umasks_mode_and_a_file_written_over_keeps_its_own(tmp_path, umask):
    """What is written under a private temporary name and renamed into place gets the mode `open`
    and `mkdir` would give it under the umask (others can read a saved model where the umask lets
    them), and a file written over keeps the mode it had."""
    from purestep.core.files import write_json

    params, buffers = mlp(4, (3,), 2).init(0)
    before = os.umask(umask)
    try:
        folder = save_checkpoint(tmp_path, 0, params, buffers, sgd(0.1).init(params), {}, device="cpu")
        save(tmp_path / "model.safetensors", params)
        kept = tmp_path / "kept.json"
        kept.write_text("{}")
        kept.chmod(0o640)
        write_json(kept, {"a": 1})
    finally:
        os.umask(before)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    for path in [*folder.iterdir(), tmp_path / LATEST, tmp_path / "model.safetensors"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    assert kept.stat().st_mode & 0o777 == 0o640


def test_an_epoch_that_diverged_after_its_training_loss_is_not_kept_as_good(tmp_path):
    """Each batch's loss is taken before its update: an epoch whose last updates blew the params up
    read a finite training loss, and was checkpointed as good with every param NaN (its test loss
    NaN), so a resume failed at once. It stops the run now, and is not written."""
    ckpt = tmp_path / "ckpt"
    args = ["train", "--dataset", "digits", "--impl", "eager", "--hidden", "32", "--lr", "1e38"]
    args += ["--weight-decay", "100", "--batch-size", "2000", "--epochs", "3", "--checkpoint", str(ckpt)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.stderr == "Error: test loss became nan in epoch 1\n", result.stderr
    assert not ckpt.exists() or load_checkpoint(ckpt) is None


NETS = {
    "relu": "import torch.nn as nn\ndef net(in_features, classes):\n"
    "    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 8), nn.ReLU(), nn.Linear(8, classes))\n",
    "tanh": "import torch.nn as nn\ndef net(in_features, classes):\n"
    "    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 8), nn.Tanh(), nn.Linear(8, classes))\n",
}


@pytest.mark.parametrize("changed", ["data", "model file"])
def test_resume_refuses_other_data_or_model_source_under_the_same_names(tmp_path, monkeypatch, changed):
    """A checkpoint recorded the dataset's file stem and the model's `path:factory`: another file
    named `digits.npz`, or the model file edited, resumed silently on what the run never saw."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    x, y = rng.random((300, 64), dtype=np.float32), rng.integers(0, 10, 300)
    Path("data").mkdir()
    np.savez("data/digits.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    Path("net.py").write_text(NETS["relu"])
    args = ["train", "--impl", "eager", "--model", "net.py:net", "--checkpoint", "ckpt"]
    assert runner.invoke(app, [*args, "--dataset", "data/digits.npz", "--epochs", "1"]).exit_code == 0
    if changed == "data":
        y[:5] = (y[:5] + 1) % 10
        np.savez("data/digits.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    else:
        Path("net.py").write_text(NETS["tanh"])  # the same params, another function
    result = runner.invoke(app, [*args, "--dataset", "data/digits.npz", "--epochs", "2", "--resume"])
    assert result.exit_code == 2, result.output
    said = "data sha256" if changed == "data" else "model source file sha256"
    assert said in " ".join(result.stderr.split()) and result.stdout == "", result.output
    assert load_checkpoint("ckpt").epoch == 0


def test_resume_with_nothing_to_resume_says_it_starts_from_the_first_epoch(tmp_path):
    ckpt = tmp_path / "ckpt"
    result = runner.invoke(app, [*BASE, "--epochs", "1", "--checkpoint", str(ckpt), "--resume"])
    assert result.exit_code == 0, result.output
    assert f"Note: {ckpt} holds no checkpoint (no {LATEST}); training from the first epoch" in result.stderr


@pytest.mark.parametrize(
    "states, said",
    [
        ({"cpu": torch.zeros(3)}, "holds 'cpu' of torch.float32 (3,), not a generator's state"),
        ({"cpu": torch.zeros(7, dtype=torch.uint8)}, "holds a CPU generator state of 7 bytes"),
        ({}, "holds no state of the CPU's generator"),
    ],
)
def test_a_checkpoint_whose_generator_states_are_not_states_is_one_line_naming_it(tmp_path, states, said):
    """torch's `set_rng_state` failed on them as a bug (`TypeError: RNG state must be a
    torch.ByteTensor`), and an empty file left the generator where it was, silently."""
    ckpt = tmp_path / "ckpt"
    assert runner.invoke(app, [*BASE, "--epochs", "1", "--checkpoint", str(ckpt)]).exit_code == 0
    save(ckpt / "epoch-0001" / "rng.safetensors", states)
    result = runner.invoke(app, [*BASE, "--epochs", "2", "--checkpoint", str(ckpt), "--resume"])
    assert result.exit_code == 1 and result.stdout == "", result.output
    where = f"Error: cannot read the checkpoint in {ckpt}: epoch-0001/rng.safetensors"
    assert result.stderr.startswith(where)
    assert said in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_file_written_whole_is_synced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """The rename may reach the disk before the file's data: without a sync of the file first, a
    power loss can leave `best.json` (or a saved model) empty under its new name."""
    from purestep.core.files import write_json

    events: list[tuple[str, str]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        events.append(("replace", os.fspath(src)))
        real_replace(src, dst)

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    write_json(tmp_path.resolve() / "best.json", {"value": 1})
    (renamed,) = [name for kind, name in events if kind == "replace"]
    assert events.index(("fsync", renamed)) < events.index(("replace", renamed)), events


def test_a_write_that_fails_part_way_leaves_the_old_file_and_no_temporary_one(tmp_path):
    """Files are written whole or not at all: under a temporary name, renamed onto theirs only once
    the writer is done."""
    from purestep.core.files import replacing

    path = tmp_path / "best.json"
    path.write_text("the old contents")
    with pytest.raises(RuntimeError, match="disk full"), replacing(path) as tmp:
        tmp.write_text("half of the n")
        raise RuntimeError("disk full")
    assert path.read_text() == "the old contents" and list(tmp_path.iterdir()) == [path]
    with replacing(path) as tmp:
        tmp.write_text("the new contents")
        assert path.read_text() == "the old contents"
    assert path.read_text() == "the new contents" and list(tmp_path.iterdir()) == [path]
