"""The performance harness runs end to end on a tiny shape; what it relies on holds. No timing asserts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from purestep import compile_step, make_train_step, mlp, sgd
from purestep.check import max_rel_diff
from purestep.core import fastpath

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import data as bench_data  # noqa: E402
from benchmarks import floor as bench_floor  # noqa: E402
from benchmarks import harness  # noqa: E402
from benchmarks import optim as bench_optim  # noqa: E402


def test_synthetic_idx_files_read_back_through_torchvision(tmp_path):
    from torchvision import datasets

    bench_data.write_fashion_mnist(tmp_path, n_train=50, n_test=20, seed=3)
    assert bench_data.has_fashion_mnist(tmp_path)
    train = datasets.FashionMNIST(str(tmp_path), train=True, download=False)
    images, labels = bench_data.synthetic(50, 4, class_seed=3)
    assert torch.equal(train.data, images) and torch.equal(train.targets, labels)
    assert len(datasets.FashionMNIST(str(tmp_path), train=False, download=False)) == 20
    assert labels.unique().numel() > 1


def test_floor_records_every_product_of_the_step():
    model, optimizer = mlp(), sgd(1e-3)
    params, buffers = model.init(0)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    step = make_train_step(model, optimizer)
    matmuls = bench_floor.record_matmuls(step, params, buffers, optimizer.init(params), x, y)
    forward = 784 * 512 + 512 * 512 + 512 * 10
    # forward, weight gradients, and input gradients of every layer but the first
    assert sum(m.flops for m in matmuls) == 2 * 64 * (2 * forward + 512 * 512 + 512 * 10)
    assert len(matmuls) == 8


def test_floor_takes_each_products_best_time_over_the_rounds():
    a, b = (bench_floor.Matmul(torch.ops.aten.mm.default, ((n, n), (n, 1), torch.float32)) for n in (2, 3))
    rounds = [
        (bench_floor.MatmulTime(a, 5.0, 2.0), bench_floor.MatmulTime(b, 1.0, None)),
        (bench_floor.MatmulTime(a, 4.0, 3.0), bench_floor.MatmulTime(b, 2.0, None)),
    ]
    best = bench_floor.best_of(rounds)
    assert [(t.aten_s, t.onednn_s, t.best_s) for t in best] == [(4.0, 2.0, 2.0), (1.0, None, 1.0)]


@pytest.mark.compile
def test_compiled_step_stays_close_to_eager_and_never_recompiles():
    model = mlp(784, (512, 512), 10)
    step = make_train_step(model, sgd(1e-3))
    compiled = compile_step(step)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g)
    params, _ = model.init(0)
    state = sgd(1e-3, momentum=0.9).init(params)
    for n in (64, 32):
        compiled(params, {}, state, x[:n], y[:n])
    torch.compiler.set_stance("fail_on_recompile")
    try:
        for seed, lr in enumerate((1e-3, 0.1, 0.02)):
            p_eager = p_comp = model.init(seed)[0]
            s_eager = s_comp = sgd(lr, momentum=0.9).init(p_eager)
            for start in (0, 64, 0, 64):
                xb, yb = x[start : start + 64], y[start : start + 64]
                p_eager, _, s_eager, l_eager = step(p_eager, {}, s_eager, xb, yb)
                p_comp, _, s_comp, l_comp = compiled(p_comp, {}, s_comp, xb, yb)
                assert abs(l_eager.item() - l_comp.item()) <= 1e-5
            assert max_rel_diff(p_comp, p_eager) <= 1e-5
    finally:
        torch.compiler.set_stance("default")


@pytest.mark.compile
def test_optim_benchmark_prints_a_row_per_optimizer(capsys):
    bench_optim.main(["--modes", "eager", "--rounds", "1", "--steps", "1", "--optimizers", "sgd", "adam"])
    out = capsys.readouterr().out
    assert "| sgd | " in out and "| adam | " in out


def test_optuna_share_times_a_small_study_and_puts_optuna_back(capsys):
    import optuna

    from benchmarks import optuna_share

    before = optuna.Trial.report, optuna.Study.tell
    optuna_share.main(["--", "--dataset", "digits", "--epochs", "2", "--n-trials", "3", "--batch", "2"])
    out = capsys.readouterr().out
    assert "| Trial.report | 6 |" in out and "| Study.tell | 3 |" in out and "inside Optuna's calls" in out
    assert (optuna.Trial.report, optuna.Study.tell) == before


def test_harness_runs_end_to_end_on_a_tiny_shape(tmp_path, capsys):
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    argv = ["--n-train", "160", "--n-test", "80", "--rounds", "1", "--steps", "2", "--trials", "2"]
    argv += ["--precision", "bf16", "--accuracy-epochs", "1", "--no-probe", "--quiet"]
    report = harness.main([*argv, "--markdown", str(out), "--json", str(raw)])
    names = [row.name for row in report.rows]
    assert names[:5] == [
        "tutorial loop as written (FashionMNIST + ToTensor + DataLoader)",
        "tutorial train_loop, preloaded tensors (DataLoader over TensorDataset)",
        "nn.Module + torch.optim, batches as tensor slices",
        "purestep eager step",
        "purestep compiled step",
    ]
    assert any(n.startswith("purestep compiled, 2 trials") for n in names)
    assert any(n.startswith("JAX") for n in names)
    assert any(n.startswith("purestep compiled step, bf16") for n in names)
    assert all(row.seconds > 0 and row.rss_bytes > 0 for row in report.rows)
    assert report.floor is not None and report.floor_epoch_s > 0
    assert report.floor_runs == [report.floor_epoch_s]  # one round: its floor is the floor
    assert set(report.accuracy) == {"fp32", "bf16"}
    text = out.read_text()
    assert text in capsys.readouterr().out
    assert "| purestep compiled step | " in text and "| 1.00 |" in text and "| target |" in text
    assert json.loads(raw.read_text())["rows"][0]["seconds_per_epoch"] > 0


@pytest.mark.compile
def test_compile_probe_reports_every_graph():
    cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    cmd = [sys.executable, "-m", "benchmarks.probe", "--cache-dir", cache]
    cmd += ["--n-train", "96", "--n-test", "80"]
    run = harness.run_measured(cmd)
    assert run["returncode"] == 0, run["stderr"]
    probe = json.loads(run["stdout"].strip().splitlines()[-1])
    assert {"train full", "train tail", "eval full", "eval tail"} <= set(probe["graphs"])
    assert run["rss_bytes"] > 0
    warm = harness.run_measured(cmd)  # every graph saved above: loaded, tails included
    assert warm["returncode"] == 0, warm["stderr"]
    if fastpath.enabled():  # the public loader, with the fast paths off, imports Dynamo
        assert json.loads(warm["stdout"].strip().splitlines()[-1])["dynamo_imported"] is False


def _bench(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`purestep bench ARGS` run in `cwd` (the source checkout unless given), its output captured."""
    command = [sys.executable, "-c", "from purestep.cli import main; main()", "bench", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd)


def test_bench_command_passes_its_arguments_to_the_harness():
    run = _bench("--help")
    assert run.returncode == 0
    assert "--markdown" in run.stdout and "--precision" in run.stdout


def test_trials_benchmark_prints_each_variants_row_and_the_epochs_it_trained(capsys, monkeypatch):
    from benchmarks import trials

    argv = ["--dataset", "digits", "--epochs", "2", "--n-trials", "3", "--batches", "2", "--pruner", "median"]
    monkeypatch.setattr(sys, "argv", ["trials", *argv])
    trials.main()
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ")][2:]  # after the header
    labels = [r[0].strip() for r in rows]
    plain = "plain Optuna objective (nn.Module + DataLoader)"
    assert labels == [plain, "purestep sequential", "purestep --batch 2"]
    for row in rows:
        assert 3 <= int(row[-1]) <= 3 * 2  # every trial trains an epoch at least, none more than 2


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--threads", "-5"], "argument --threads: must be 0 or more, got -5"),
        (["--n-train", "0"], "argument --n-train: must be 1 or more, got 0"),
        (["--rounds", "-1"], "argument --rounds: must be 1 or more, got -1"),
        (["--lr", "nan"], "argument --lr: must be a positive number, got nan"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--rounds", "abc"], "argument --rounds: invalid int value: 'abc'"),
        (["--markdown", ""], "argument --markdown: "),  # the folder: ran the whole harness, then failed
        (["--markdown", "/dev/null"], "argument --markdown: /dev/null exists and is not a regular file"),
        (["--cache-dir", "/dev/null"], "argument --cache-dir: /dev/null is a file, not a directory"),
    ],
)
def test_a_bad_harness_option_is_one_line_and_exit_2_before_any_work(capsys, argv, fragment):
    """`--threads -5` was a traceback, `--rounds -1` one after six minutes, `--bogus` argparse's usage."""
    with pytest.raises(SystemExit) as ended:
        harness.command(argv)
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: ") and fragment in err, err


def test_a_harness_failure_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    """Unreadable FashionMNIST files under --data-dir: one line naming them, not a traceback."""
    monkeypatch.delenv("PURESTEP_DEBUG", raising=False)
    raw = bench_data.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in bench_data.FILES.values():
        (raw / name).write_bytes(b"not idx")
    assert harness.command(["--data-dir", str(tmp_path), "--quiet", "--no-probe"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: ") and "Traceback" not in err, err


def test_bench_reads_and_writes_its_paths_from_where_it_is_run(tmp_path):
    """Run from the source checkout, a relative --markdown landed in the repository and a relative
    --data-dir was not found (synthetic data instead, silently)."""
    tiny = ["--n-train", "256", "--n-test", "64", "--rounds", "1", "--warmup", "0", "--steps", "1"]
    tiny += ["--trials", "1", "--no-jax", "--no-probe", "--no-proposed", "--quiet"]
    bench_data.write_fashion_mnist(tmp_path / "fm", 256, 64)
    run = _bench(*tiny, "--data-dir", "fm", "--markdown", "out/t.md", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "- data: FashionMNIST from fm\n" in (tmp_path / "out" / "t.md").read_text()
    assert not (REPO / "out").exists()


def test_bench_command_refuses_a_bad_option_in_one_line():
    run = _bench("--bogus")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == "Error: unrecognized arguments: --bogus (--help lists the options)\n"
