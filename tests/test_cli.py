"""The CLI: the tutorial's lines, JSON and safetensors output, and one-line errors with exit codes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from purestep.cli import app

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_help_does_not_import_torch():
    out = _python(
        "import sys\n"
        "from purestep.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    assert "train" in out and "check" in out
    assert "TORCH False" in out


def test_import_purestep_imports_neither_optuna_nor_jax():
    out = _python(
        "import sys, purestep\n"
        "[getattr(purestep, name) for name in purestep.__all__]\n"
        "print(sorted(m for m in ('optuna', 'jax', 'matplotlib', 'typer') if m in sys.modules))"
    )
    assert out.strip() == "[]"


def test_reference_and_eager_print_identical_tutorial_lines():
    args = ["train", "--dataset", "digits", "--epochs", "2", "--lr", "0.05", "--impl"]
    reference, eager = run(*args, "reference"), run(*args, "eager")
    assert reference.exit_code == 0 and eager.exit_code == 0, reference.output + eager.output
    assert reference.stdout == eager.stdout
    lines = eager.stdout.splitlines()
    assert lines[:3] == ["Epoch 1", "-------------------------------", lines[2]]
    assert lines[2].startswith("loss: ") and lines[2].endswith("[    0/ 1437]")
    assert lines[3] == "Test Error: " and lines[4].startswith(" Accuracy: ") and ", Avg loss: " in lines[4]
    assert lines[-1] == "Done!"


@pytest.mark.parametrize("model", ["cnn", "file"])
def test_any_model_prints_identical_lines_by_reference_and_eager(tmp_path, model):
    """The CNN (BatchNorm, dropout) and a user's factory: the module loop and the functional step
    print the same lines, dropout included (the same seed gives the same masks)."""
    if model == "file":
        (tmp_path / "net.py").write_text(
            "import torch.nn as nn\n"
            "def make(in_features, classes, width=16, p=0.2):\n"
            "    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(),\n"
            "                         nn.Dropout(p), nn.Linear(width, classes))\n"
        )
        model = f"{tmp_path / 'net.py'}:make"
    args = ["train", "--dataset", "digits", "--model", model, "--epochs", "2", "--lr", "0.05"]
    args += ["--model-arg", "width=8"] if model == "cnn" else ["--model-arg", "p=0.3"]
    reference, eager = run(*args, "--impl", "reference"), run(*args, "--impl", "eager")
    assert reference.exit_code == 0 and eager.exit_code == 0, reference.output + eager.output
    assert reference.stdout == eager.stdout
    lines = eager.stdout.splitlines()
    assert lines[2].startswith("loss: ") and lines[4].startswith(" Accuracy: ") and lines[-1] == "Done!"


SQUEEZED = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self, in_features, out_features, squeeze=True):
        super().__init__()
        self.net, self.squeeze = nn.Linear(in_features, out_features), squeeze

    def forward(self, x):
        return self.net(x).squeeze(-1) if self.squeeze else self.net(x)
"""


@pytest.mark.parametrize("impl", ["reference", "eager", "compiled"])
def test_a_regression_model_whose_outputs_miss_the_targets_shape_is_refused_by_every_impl(tmp_path, impl):
    """Outputs (N,) for targets (N, 1): mse would broadcast them to (N, N) and train to an R² of -50
    with only torch's warning. Refused before anything trains, one line naming both shapes; the
    same model returning a column trains."""
    (tmp_path / "net.py").write_text(SQUEEZED)
    args = ["train", "--dataset", "diabetes", "--model", f"{tmp_path / 'net.py'}:Net", "--epochs", "1"]
    result = run(*args, "--impl", impl, "--save", str(tmp_path / "net.safetensors"))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    shapes = "gives outputs of shape (2,) for targets of shape (2, 1): mse needs the same shape"
    assert shapes in result.stderr
    assert not (tmp_path / "net.safetensors").exists()
    if impl == "eager":
        column = run(*args, "--impl", impl, "--model-arg", "squeeze=false", "--json")
        assert column.exit_code == 0 and json.loads(column.stdout)["test_r2"] > -1, column.output



@pytest.mark.parametrize("impl", ["reference", "eager"])
def test_a_model_with_fewer_classes_than_the_labels_is_refused_before_an_epoch(tmp_path, impl):
    """Three outputs a row for digits' labels 0 to 9: torch failed mid-epoch (`Target 7 is out of
    bounds`, after `Epoch 1` was printed). One line, exit 2, before anything runs or is written."""
    save = tmp_path / "cnn.safetensors"
    args = ["train", "--dataset", "digits", "--model", "cnn", "--model-arg", "classes=3", "--epochs", "1"]
    result = run(*args, "--impl", impl, "--save", str(save))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "--model cnn gives 3 outputs a row for labels up to 9" in result.stderr
    assert result.stdout == "" and not save.exists()

TIED = """
import torch, torch.nn as nn

class Tied(nn.Module):
    def __init__(self, in_features, classes):
        super().__init__()
        self.inp, self.mix, self.mix2 = nn.Linear(in_features, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.mix2.weight = self.mix.weight  # tied, as a decoder shares its encoder's
        self.head = nn.Linear(16, classes)
        self.register_buffer("table", torch.linspace(0.5, 1.5, 16), persistent=False)

    def forward(self, x):
        return self.head(self.mix2(torch.tanh(self.mix(torch.relu(self.inp(x.flatten(1)))) * self.table)))
"""


def test_both_impls_save_a_model_with_tied_weights_and_a_non_persistent_buffer_alike(tmp_path):
    """`--save` writes what `state_dict()` holds, each tied weight once: the reference loop's file
    (it crashed at the end: safetensors refuses two names of one tensor) and the functional step's
    (it held the non-persistent buffer, which `load_state_dict` refuses) have the same keys and
    tensors, and load into the module with nothing unexpected."""
    import torch

    from purestep.core.interop import load
    from purestep.core.model import resolve_factory

    (tmp_path / "tied.py").write_text(TIED)
    model = f"{tmp_path / 'tied.py'}:Tied"
    args = ["train", "--dataset", "digits", "--model", model, "--epochs", "1", "--lr", "0.05"]
    saved = {}
    for impl in ("reference", "eager"):
        result = run(*args, "--impl", impl, "--save", str(tmp_path / f"{impl}.safetensors"))
        assert result.exit_code == 0, result.output
        saved[impl], _ = load(tmp_path / f"{impl}.safetensors")
    assert saved["reference"].keys() == saved["eager"].keys() and "table" not in saved["eager"]
    assert all(torch.equal(saved["reference"][k], saved["eager"][k]) for k in saved["eager"])
    module = resolve_factory(model)(in_features=64, classes=10)
    missing, unexpected = module.load_state_dict(saved["eager"], strict=False)
    assert unexpected == [] and missing == ["mix2.weight"]


def test_rmsprop_reference_and_eager_print_identical_tutorial_lines():
    args = ["train", "--dataset", "digits", "--epochs", "2", "--optimizer", "rmsprop", "--lr", "1e-3"]
    args += ["--momentum", "0.5", "--centered", "--alpha", "0.9", "--eps", "1e-6", "--impl"]
    reference, eager = run(*args, "reference"), run(*args, "eager", "--json")
    assert reference.exit_code == 0 and eager.exit_code == 0, reference.output + eager.output
    summary = json.loads(eager.stdout)
    assert summary["config"]["optimizer"] | {"lr": 1e-3} == {
        "name": "rmsprop",
        "lr": 1e-3,
        "momentum": 0.5,
        "nesterov": False,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1e-6,
        "alpha": 0.9,
        "centered": True,
    }
    assert run(*args, "eager").stdout == reference.stdout
    assert summary["test_accuracy"] > 0.8


def test_bf16_trains_as_well_as_fp32_and_is_recorded():
    args = ["train", "--dataset", "digits", "--epochs", "3", "--lr", "0.05", "--impl", "eager", "--json"]
    fp32, bf16 = run(*args), run(*args, "--precision", "bf16")
    assert fp32.exit_code == 0 and bf16.exit_code == 0, fp32.output + bf16.output
    fp32, bf16 = json.loads(fp32.stdout), json.loads(bf16.stdout)
    assert fp32["config"]["precision"] == "fp32" and bf16["config"]["precision"] == "bf16"
    assert fp32["test_accuracy"] > 0.7
    assert abs(bf16["test_accuracy"] - fp32["test_accuracy"]) <= 0.03
    assert bf16["test_loss"] == pytest.approx(fp32["test_loss"], rel=0.02)
    assert bf16["test_loss"] != fp32["test_loss"]


def test_json_and_save_write_params_with_config_and_metrics(tmp_path):
    from safetensors import safe_open

    from purestep import load, mlp

    out = tmp_path / "model.safetensors"
    result = run(
        "train", "--dataset", "digits", "--epochs", "1", "--impl", "eager", "--json", "--save", str(out)
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["config"]["optimizer"]["lr"] == 1e-3 and summary["config"]["batch_size"] == 64
    assert len(summary["history"]) == 1 and 0 <= summary["test_accuracy"] <= 1
    params, meta = load(out)
    assert set(params) == set(mlp(64).init(0)[0])
    assert (
        meta["config"]["dataset"] == "digits"
        and meta["history"][0]["eval_accuracy"] == summary["test_accuracy"]
    )
    with safe_open(str(out), framework="numpy") as f:
        assert "purestep" in f.metadata()


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["train", "--dataset", "digits", "--epochs", "1", "--impl", "eager", "--json"], 0),
        (["train", "--dataset", "digits", "--epochs", "1", "--hidden", "0"], 2),
        (["train", "--dataset", "kmnist", "--data-dir", "{tmp}"], 1),
    ],
)
def test_the_entry_point_flushes_runs_atexit_and_keeps_the_exit_code(tmp_path, args, code):
    """`main()` skips the interpreter's teardown once torch is loaded: output, atexit handlers
    and the exit code must all survive that."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        f"sys.argv = ['purestep', *{[a.format(tmp=tmp_path) for a in args]!r}]\n"
        "from purestep.cli import main\n"
        "sys.stdout.write('partial line without a newline')\n"
        "main()\n"
    )
    env = {**os.environ, "PURESTEP_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == code, done.stderr
    assert done.stdout.startswith("partial line without a newline")
    assert done.stdout.rstrip().endswith("atexit ran")
    if code == 0:
        summary = json.loads(done.stdout.splitlines()[-2].removeprefix("partial line without a newline"))
        assert summary["config"]["epochs"] == 1
    else:
        assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1


def test_missing_data_offline_is_one_line_exit_1(tmp_path):
    result = run("train", "--data-dir", str(tmp_path / "empty"), env={"PURESTEP_OFFLINE": "1"})
    assert result.exit_code == 1
    assert (
        result.stderr.count("\n") == 1
        and "--dataset digits" in result.stderr
        and "Traceback" not in result.output
    )


def test_corrupt_data_is_one_line_exit_1(tmp_path):
    from purestep.core.data import write_fake_mnist

    raw = write_fake_mnist(tmp_path, "fashion-mnist", 20, 5)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08")
    result = run("train", "--data-dir", str(tmp_path), "--epochs", "1", env={"PURESTEP_OFFLINE": "1"})
    assert result.exit_code == 1 and result.stderr.startswith("Error: cannot read fashion-mnist")


BAD_VALUES = {
    "--lr": st.sampled_from(["0", "-1", "nan", "inf", "abc", "-1e-9"]),
    "--batch-size": st.sampled_from(["0", "-5", "1.5", "x"]),
    "--epochs": st.sampled_from(["0", "-1", "two"]),
    "--momentum": st.sampled_from(["-0.1", "1", "1.5", "nan"]),
    "--weight-decay": st.sampled_from(["-1", "inf", "nan"]),
    "--dataset": st.sampled_from(["cifar10", "", "MNIST!"]),
    "--optimizer": st.sampled_from(["lion", "SGD2"]),
    "--alpha": st.sampled_from(["-0.1", "1.5", "nan", "x"]),
    "--eps": st.sampled_from(["0", "-1e-8", "inf", "nan"]),
    "--impl": st.sampled_from(["jit", "fast"]),
    "--device": st.sampled_from(["tpu", "cuda:x", "gpu"]),
    "--hidden": st.sampled_from(["", "0", "512,", "a,b", "-3"]),
    "--seed": st.sampled_from(["-1", "x"]),
}


@given(data=st.data(), command=st.sampled_from(["train", "check"]))
def test_every_bad_value_is_one_line_and_exit_2(data, command):
    train_only = ("--epochs", "--optimizer", "--impl", "--alpha", "--eps")
    options = [o for o in BAD_VALUES if command == "train" or o not in train_only]
    option = data.draw(st.sampled_from(options))
    value = data.draw(BAD_VALUES[option])
    result = run(command, "--dataset", "digits", option, value)
    assert result.exit_code == 2, (option, value, result.output)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--nesterov"],
        ["train", "--optimizer", "adam", "--momentum", "0.5"],
        ["train", "--optimizer", "rmsprop", "--nesterov", "--momentum", "0.5"],
        ["train", "--alpha", "0.9"],
        ["train", "--optimizer", "adamw", "--centered"],
        ["train", "--eps", "1e-6"],
        ["train", "--impl", "reference", "--precision", "bf16"],
        ["train", "--precision", "fp16"],
        ["train", "--bogus"],
        ["train", "--dataset", "digits", "--loss", "mse"],
        ["train", "--dataset", "digits", "--model", "vgg"],
        ["train", "--dataset", "digits", "--model-arg", "width"],
        ["train", "--dataset", "digits", "--model-arg", "depth=3"],
        ["train", "--dataset", "digits", "--model", "cnn", "--hidden", "64"],
        ["train", "--dataset", "digits", "--model", "missing.py:make"],
        ["fly"],
    ],
)
def test_impossible_combinations_and_unknown_words_exit_2(args):
    result = run(*args)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


@pytest.mark.compile
def test_check_passes_every_pair_on_digits():
    result = run("check", "--dataset", "digits", "--steps", "6", "--momentum", "0.9", "--nesterov", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["printed_lines_identical"]
    rows = {r["pair"].split(" (")[0]: r for r in report["rows"]}
    assert rows["eager vs reference"]["max_abs_param_diff"] == 0.0
    assert rows["compiled vs eager"]["how"] == "lockstep" and rows["compiled vs eager"]["passed"]
    assert rows["compiled vs eager"]["free_running_distance"] is not None
    assert all(r["steps"] == 6 for r in report["rows"] if r["pair"] != "safetensors round trip")


def test_a_checkpoint_written_before_the_rmsprop_fields_still_resumes(tmp_path):
    ckpt = tmp_path / "ckpt"
    base = ["train", "--dataset", "digits", "--impl", "eager", "--lr", "0.05", "--checkpoint", str(ckpt)]
    assert run(*base, "--epochs", "1").exit_code == 0
    meta_file = next(ckpt.glob("epoch-*")) / "meta.json"
    meta = json.loads(meta_file.read_text())
    for field in ("alpha", "centered"):
        del meta["run"]["optimizer"][field]
    meta_file.write_text(json.dumps(meta))
    result = run(*base, "--epochs", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Epoch 2\n")
    assert run(*base, "--epochs", "3", "--resume", "--alpha", "0.5").exit_code == 2


def test_ctrl_c_while_the_commands_load_is_one_line_and_130():
    """A Ctrl-C before the commands are loaded (typer, rich and the command modules take a tenth of a
    second) ends the run as one later does, not with Python's traceback. The import of typer is made
    slow here, and the signal sent while it runs."""
    script = (
        "import builtins, sys, time\n"
        "real = builtins.__import__\n"
        "def slow(name, *args, **kwargs):\n"
        "    if name == 'typer' and 'typer' not in sys.modules:\n"
        "        print('loading', flush=True)\n"
        "        time.sleep(60)\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = slow\n"
        "sys.argv = ['purestep', 'train', '--dataset', 'digits', '--epochs', '1']\n"
        "from purestep.cli import main\n"
        "main()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "loading\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "Interrupted.\n", (proc.returncode, err)


def test_ctrl_c_ends_train_with_one_line_and_keeps_the_checkpoints_it_wrote(tmp_path):
    """SIGINT mid-run, in a real process: `Interrupted.` on stderr and exit 130, as `tune`; every
    checkpoint written before it is intact, and `--resume` goes on from the latest."""
    ckpt = tmp_path / "ckpt"
    base = ["train", "--dataset", "digits", "--impl", "eager", "--lr", "0.05", "--checkpoint", str(ckpt)]
    cmd = [sys.executable, "-c", "from purestep.cli import main; main()", *base, "--epochs", "10000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (ckpt / "epoch-0002").is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, proc.poll()
            time.sleep(0.05)
        written = _listing(ckpt / "epoch-0001") | _listing(ckpt / "epoch-0002")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == "Interrupted.\n", (proc.returncode, err)
    assert {k: v for k, v in _listing(ckpt).items() if k in written} == written
    latest = json.loads((ckpt / "latest.json").read_text())["epoch"] + 1
    result = run(*base, "--epochs", str(latest + 1), "--resume")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Epoch {latest + 1}\n")


def _listing(folder) -> dict[str, bytes | None]:
    return {str(p): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _usage_error(result, option: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), result.stderr
    assert option in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_a_save_path_that_cannot_be_written_is_refused_before_training(tmp_path, where):
    """`--save` into a directory, or below a file, would fail only once training is done and lose
    it: it is a usage error before any work, and nothing is written."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_bytes(b"mine")
    save = tmp_path / ("adir" if where == "a directory" else "afile/x.safetensors")
    before = _listing(tmp_path)
    result = run("train", "--dataset", "digits", "--epochs", "1", "--impl", "eager", "--save", str(save))
    _usage_error(result, "--save")
    assert result.stdout == "" and _listing(tmp_path) == before


@pytest.mark.parametrize("out", ["afile/out", "afile/deeper/out", "purestep-digits"])
def test_a_tune_out_that_cannot_be_written_is_refused_before_the_storage_is_opened(
    tmp_path, monkeypatch, out
):
    """`--out` (or the default, ./STUDY) below a file or over one is refused before any trial runs:
    exit 2 naming --out, and no storage file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_bytes(b"mine")
    (tmp_path / "purestep-digits").write_bytes(b"mine too")
    args = ["tune", "--dataset", "digits", "--epochs", "1", "--n-trials", "2", "--storage", "sqlite:///s.db"]
    if out != "purestep-digits":
        args += ["--out", str(tmp_path / out)]
    before = _listing(tmp_path)
    result = run(*args)
    _usage_error(result, "--out")
    assert _listing(tmp_path) == before and not (tmp_path / "s.db").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any directory")
def test_an_output_in_a_read_only_directory_is_refused_before_any_work(tmp_path):
    """A folder this user cannot write in is as final as a file in the way: refused up front."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        save = run("train", "--dataset", "digits", "--epochs", "1", "--impl", "eager",
                   "--save", str(locked / "m.safetensors"))  # fmt: skip
        tune = run("tune", "--dataset", "digits", "--epochs", "1", "--n-trials", "2",
                   "--storage", f"sqlite:///{tmp_path / 's.db'}", "--out", str(locked / "out"))  # fmt: skip
    finally:
        locked.chmod(0o700)
    for result, option in ((save, "--save"), (tune, "--out")):
        _usage_error(result, option)
        assert "not writable" in result.stderr
    assert list(locked.iterdir()) == [] and not (tmp_path / "s.db").exists()


def test_an_unexpected_error_is_one_line_pointing_at_debug_which_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PURESTEP_DEBUG", "0")  # and put back as it was: --debug sets it in this process
    (tmp_path / "boom.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.l = nn.Linear(64, 10)\n"
        "    def forward(self, x):\n"
        "        if len(x) > 2:\n            raise RuntimeError('boom')\n"  # past the two rows checked first
        "        return self.l(x.flatten(1))\n"
    )
    args = ["train", "--dataset", "digits", "--impl", "eager", "--epochs", "1", "--model", "boom.py:Net"]
    plain = run(*args)
    assert plain.exit_code == 1 and "Traceback" not in plain.stderr
    assert plain.stderr == "Error: RuntimeError: boom (purestep --debug ... for the traceback)\n"
    debug = run("--debug", *args)
    assert debug.exit_code == 1 and "Traceback" in debug.stderr
    assert debug.stderr.endswith("\nError: RuntimeError: boom\n")


def _fifo(folder, name: str = "fifo"):
    path = folder / name
    os.mkfifo(path)
    return path


def test_a_save_path_that_is_a_fifo_is_refused_and_left_as_it_is(tmp_path):
    """A rename onto a device or a FIFO would replace it with a regular file (as root, `--save
    /dev/null` would replace /dev/null): a usage error before training; the node stays."""
    fifo = _fifo(tmp_path)
    result = run("train", "--dataset", "digits", "--epochs", "1", "--impl", "eager", "--save", str(fifo))
    _usage_error(result, "--save")
    assert "not a regular file" in result.stderr and result.stdout == ""
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_checkpoint_folder_whose_pointer_is_a_fifo_is_refused_before_training(tmp_path):
    """`latest.json` as a FIFO: reading it would hang, renaming onto it replace it."""
    (tmp_path / "ck").mkdir()
    fifo = _fifo(tmp_path / "ck", "latest.json")
    args = ["train", "--dataset", "digits", "--epochs", "1", "--impl", "eager", "--checkpoint"]
    _usage_error(run(*args, str(tmp_path / "ck")), "--checkpoint")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--dataset", "digits", "--epochs", "1", "--impl", "eager", "--save", ""],
        ["train", "--dataset", "digits", "--epochs", "1", "--impl", "eager", "--checkpoint", ""],
        ["train", "--dataset", "digits", "--epochs", "1", "--impl", "eager", "--data-dir", ""],
        ["tune", "--dataset", "digits", "--epochs", "1", "--n-trials", "2", "--out", ""],
        ["report", "--storage", "journal:s.log", "--out", ""],
    ],
)
def test_an_empty_path_is_refused_for_every_path_option(tmp_path, monkeypatch, args):
    """An empty path is the current folder to `Path`: refused, exit 2, and nothing is written there."""
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    _usage_error(result, args[args.index("") - 1])
    assert "must not be empty" in result.stderr and list(tmp_path.iterdir()) == []


def test_an_out_that_cannot_be_created_is_refused_before_the_study_opens(tmp_path, monkeypatch):
    """`/proc` takes no new folder, whatever its permissions say (root may write anywhere else):
    the folder is created and a file written in it before any trial, and nothing is left."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    monkeypatch.chdir(tmp_path)
    args = ["tune", "--dataset", "digits", "--epochs", "1", "--n-trials", "2", "--storage", "sqlite:///s.db"]
    result = run(*args, "--out", "/proc/purestep-out")
    _usage_error(result, "--out")
    assert "cannot write in /proc/purestep-out" in result.stderr and list(tmp_path.iterdir()) == []


CNN = ["--dataset", "digits", "--epochs", "1", "--model", "cnn", "--model-arg"]


@given(
    spelling=st.sampled_from(["True", "true", "FALSE", "false"]),
    command=st.sampled_from(["train", "tune"]),
)
def test_a_flag_is_not_a_number_for_a_model_argument(spelling, command):
    """`dropout=true` trained with dropout 1.0: a bool is not a float (nor an int) here."""
    result = run(command, *CNN, f"dropout={spelling}")
    _usage_error(result, "--model-arg")
    assert f"model 'cnn' takes a number for 'dropout' (default 0.5); got {spelling.title()}" in result.stderr


@given(
    value=st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity"]),
    command=st.sampled_from(["train", "tune"]),
)
def test_a_model_argument_that_is_not_finite_is_a_usage_error_in_train_and_tune(value, command):
    result = run(command, *CNN, f"dropout={value}")
    _usage_error(result, "--model-arg")
    assert "takes finite numbers only" in result.stderr


@given(digits=st.integers(20, 400), command=st.sampled_from(["train", "tune"]))
def test_an_integer_beyond_64_bits_is_a_short_usage_error(digits, command):
    """torch refused it with 1.9 KB of C++ frames (`Exception raised from THPUtils_unpackLong`)."""
    result = run(command, *CNN, "width=" + "9" * digits)
    _usage_error(result, "--model-arg")
    assert "takes integers up to 9223372036854775807" in result.stderr
    assert len(result.stderr) < 200 + digits


@given(
    head=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40).filter(
        lambda t: t.strip() and "Exception raised from " not in t
    ),
    frames=st.text(max_size=200),
)
def test_one_line_never_shows_torch_cpp_frames(head, frames):
    from purestep.core.errors import first_line, one_line

    error = RuntimeError(f"{head}\nException raised from THPUtils_unpackLong at x.cpp:1\nframe #0: {frames}")
    assert one_line(error) == " ".join(head.split())
    assert "frame #" not in first_line(error) and "Exception raised from" not in first_line(error)


@pytest.mark.parametrize("hidden", ["32", "64,16"])
@pytest.mark.parametrize("command", ["train", "check"])
def test_hidden_beside_a_model_argument_of_other_widths_is_refused(command, hidden):
    """--hidden was ignored (and recorded) when --model-arg hidden=... gave other widths."""
    result = run(command, "--dataset", "digits", "--model-arg", "hidden=64,32", "--hidden", hidden)
    _usage_error(result, "--hidden")
    assert f"--hidden {hidden} and --model-arg hidden=64,32 disagree" in result.stderr


def _strict(text: str):
    """JSON as a strict parser reads it: no NaN or Infinity."""

    def refuse(token: str):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _constant_test_targets(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path / "flat.npz"
    x = rng.standard_normal((60, 4)).astype("float32")
    np.savez(path, x_train=x[:40], y_train=x[:40, :1] * 2, x_test=x[40:], y_test=np.ones((20, 1), "float32"))
    return path


def test_train_json_and_saved_metadata_are_strict_json_when_a_metric_is_nan(tmp_path):
    """R² of constant test targets is NaN: written as null, never as a bare NaN."""
    from purestep.core.interop import META_KEY

    data, save = _constant_test_targets(tmp_path), tmp_path / "m.safetensors"
    args = ["train", "--dataset", str(data), "--epochs", "1", "--impl", "eager", "--json"]
    result = run(*args, "--save", str(save))
    assert result.exit_code == 0, result.output
    summary = _strict(result.stdout)
    assert summary["test_r2"] is None and summary["history"][-1]["eval_r2"] is None
    from safetensors import safe_open

    with safe_open(str(save), framework="pt") as f:
        assert _strict(f.metadata()[META_KEY])["history"][-1]["eval_r2"] is None


def test_no_command_shows_the_help_and_no_empty_error_line():
    result = run()
    assert result.exit_code == 2 and "Usage" in result.output
    assert "Error" not in result.output


def test_a_library_warning_is_one_line(tmp_path):
    """torch's `UserWarning: Initializing zero-element tensors is a no-op` came with the library's
    source line under it; as the console script shows it, it is one line."""
    env = {**os.environ, "PURESTEP_OFFLINE": "1"}
    args = ["train", "--dataset", "digits", "--epochs", "1", "--impl", "eager", "--model", "cnn"]
    done = subprocess.run(
        [sys.executable, "-m", "purestep", *args, "--model-arg", "width=0"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    lines = done.stderr.splitlines()
    assert "Warning: UserWarning: Initializing zero-element tensors is a no-op" in lines, done.stderr
    assert all(line.startswith(("Warning: ", "Error: ")) for line in lines), done.stderr


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_model_that_cannot_run_on_the_data_is_a_usage_error_in_train_as_in_tune(command, tmp_path):
    """`--model-arg width=0` built a CNN that failed in its first step: exit 1 in train, 2 in tune."""
    storage = ["--storage", f"journal:{tmp_path / 's.log'}", "--out", str(tmp_path / "out")]
    extra = storage if command == "tune" else []
    result = run(command, *CNN, "width=0", *extra)
    assert result.exit_code == 2, result.output
    assert "Error: " in result.stderr and "--model cnn cannot run on the data: RuntimeError" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "s.log").exists()


def test_a_choice_that_is_not_one_says_which_are_in_plain_words():
    """typer words its choice check as pydantic does: "Value error, 'fp16' is not one of ..."."""
    result = CliRunner().invoke(app, ["train", "--precision", "fp16"])
    assert result.exit_code == 2
    assert result.stderr == "Error: Invalid value for '--precision': 'fp16' is not one of 'fp32', 'bf16'.\n"


def test_train_draws_its_progress_bar_on_a_terminal_stderr_and_leaves_stdout_the_tutorials():
    """On a terminal the bar is drawn on stderr; stdout, piped, holds the tutorial's lines alone
    (rich's redirect of stdout sent them to the terminal: the pipe got `Done!` alone)."""
    import pty
    import threading

    master, follower = pty.openpty()
    drawn: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed
                return
            if not chunk:
                return
            drawn.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    command = [sys.executable, "-m", "purestep", "train", "--dataset", "digits", "--epochs", "2", "--impl"]
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "100"}
    try:
        done = subprocess.run(
            [*command, "eager"], stdout=subprocess.PIPE, stderr=follower, text=True, env=env, timeout=300
        )
    finally:
        os.close(follower)
        reader.join(timeout=10)
        os.close(master)
    assert done.returncode == 0
    assert "epoch 1" in b"".join(drawn).decode(errors="replace")
    assert "\x1b" not in done.stdout and "epoch" not in done.stdout
    assert done.stdout.startswith("Epoch 1\n-------------------------------\nloss: ")
