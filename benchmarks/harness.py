"""The performance harness: every way of training the tutorial's MLP, timed in one process.

    python -m benchmarks                      # full FashionMNIST shape, prints the tables
    python -m benchmarks --markdown out.md    # and writes them as Markdown
    python -m benchmarks --cli                # adds whole `purestep train` runs vs the tutorial script

On FashionMNIST-shaped data (the real files under --data-dir when present, else
deterministic synthetic ones written as IDX files, so the tutorial's own torchvision
path runs), it times: the tutorial loop as written, the tutorial's loop on preloaded
tensors, nn.Module + torch.optim on tensor slices, purestep eager, compiled (and with
`apply` as an `F.linear` chain, measured, not shipped), batched over K trials, JAX jitted
(when installed), and optionally bf16; all built first, run once untimed (`--warmup`), then
timed in interleaved rounds (best of). It prints seconds per epoch and each one's ratio
to the compiled step, the floor (the step's matmuls at this machine's best measured fp32
throughput at the same shapes, timed in each round with the variants), compile seconds cold
and warm (fresh processes sharing one fresh inductor cache), peak RSS, and the targets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from benchmarks import data as bench_data
from benchmarks import floor as bench_floor
from benchmarks import variants
from benchmarks.variants import Variant
from purestep.core.files import finite

REPO = Path(__file__).resolve().parent.parent
GB = 1024**3


@dataclass
class Row:
    """One line of the main table: a variant, its timed rounds, and the peak RSS after its set-up."""

    name: str
    how: str
    runs: list[float]
    info: dict[str, Any]
    rss_bytes: int

    @property
    def seconds(self) -> float:
        """Best of the rounds, seconds per epoch."""
        return min(self.runs)


@dataclass
class Report:
    """Everything a run measured, and how the run was invoked."""

    command: str
    machine: dict[str, str]
    rows: list[Row] = field(default_factory=list)
    floor: bench_floor.Floor | None = None
    floor_epoch_s: float | None = None
    floor_runs: list[float] = field(default_factory=list)
    compile: dict[str, Any] = field(default_factory=dict)
    cli: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def seconds(self, prefix: str) -> float | None:
        """Seconds per epoch of the first row whose name starts with `prefix`."""
        return next((r.seconds for r in self.rows if r.name.startswith(prefix)), None)


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Runs the command from a small process, so that its peak RSS is its own: a child forked from the
# harness would count the harness's pages until it execs.
_WRAPPER = (
    "import resource, subprocess, sys, time; start = time.perf_counter(); "
    "rc = subprocess.call(sys.argv[2:]); wall = time.perf_counter() - start; "
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
    "open(sys.argv[1], 'w').write(f'{wall} {peak}'); sys.exit(rc)"
)


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd` from the repository root; its wall seconds, own peak RSS (bytes), exit code, output."""
    with tempfile.TemporaryDirectory(prefix="purestep-bench-run-") as tmp:
        figures = Path(tmp) / "figures"
        proc = subprocess.run(
            [sys.executable, "-c", _WRAPPER, str(figures), *cmd],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        wall, peak = figures.read_text().split()
    return {
        "wall_s": float(wall),
        "rss_bytes": int(peak) * 1024,
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def machine(threads: int) -> dict[str, str]:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        have = set(text.split("flags", 1)[1].split("\n", 1)[0].split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in have)
    except (OSError, IndexError):
        pass
    load = os.getloadavg()
    return {
        "cpu": f"{model}, {os.cpu_count()} logical cores ({flags})",
        "torch": f"{torch.__version__}, torch threads: {torch.get_num_threads()}"
        + (" (--threads; JAX keeps its own thread pool)" if threads else " (default)")
        + f", ATen CPU capability {torch.backends.cpu.get_cpu_capability()}",
        "python": platform.python_version(),
        "load at start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)",
    }


def _purestep_cmd() -> list[str]:
    script = Path(sys.executable).with_name("purestep")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from purestep.cli import main; main()"]


def measure_compile(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Cold then warm compile in two fresh processes sharing one fresh inductor cache."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="purestep-bench-cache-") as cache:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.probe",
            "--cache-dir",
            cache,
            "--n-train",
            str(args.n_train),
            "--n-test",
            str(args.n_test),
            "--batch-size",
            str(args.batch_size),
        ]
        for name in ("cold", "warm"):
            run = run_measured(
                cmd, {**env, "TORCHINDUCTOR_CACHE_DIR": cache, "PURESTEP_COMPILE_CACHE": cache}
            )
            if run["returncode"] != 0:
                raise RuntimeError(f"compile probe failed: {run['stderr'].strip().splitlines()[-1:]}")
            result[name] = json.loads(run["stdout"].strip().splitlines()[-1]) | {
                "wall_s": run["wall_s"],
                "rss_bytes": run["rss_bytes"],
            }
    return result


def measure_cli(args: argparse.Namespace, root: Path, env: dict[str, str]) -> dict[str, Any]:
    """`purestep --help`; whole `purestep train` runs (cold and warm cache) and the tutorial script."""
    purestep = _purestep_cmd()
    result: dict[str, Any] = {
        "help": min(run_measured([*purestep, "--help"], env)["wall_s"] for _ in range(3))
    }
    train = [
        *purestep,
        "train",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(root),
        "--epochs",
        str(args.cli_epochs),
    ]
    with tempfile.TemporaryDirectory(prefix="purestep-bench-cli-cache-") as cache:
        cli_env = {**env, "PURESTEP_COMPILE_CACHE": cache, "PURESTEP_OFFLINE": "1"}
        for name in ("cold", "warm"):
            run = run_measured([*train, "--impl", "compiled"], cli_env)
            if run["returncode"] != 0:
                raise RuntimeError(f"purestep train failed: {run['stderr'].strip()}")
            result[f"compiled {name}"] = run | {"cmd": [*train, "--impl", "compiled"]}
        for impl in args.cli_impls:
            run = run_measured([*train, "--impl", impl], cli_env)
            result[impl] = run | {"cmd": [*train, "--impl", impl]}
    tutorial = [
        sys.executable,
        "-m",
        "benchmarks.tutorial",
        "--root",
        str(root),
        "--epochs",
        str(args.cli_epochs),
    ]
    run = run_measured(tutorial, env)
    if run["returncode"] != 0:
        raise RuntimeError(f"tutorial script failed: {run['stderr'].strip()}")
    result["tutorial"] = run | {"cmd": tutorial}
    return result


def _relative_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    import numpy as np

    return max(float(np.abs(a[k][i] - b[k][i]).max() / np.abs(b[k][i]).max()) for k in b for i in (0, 1))


def run(args: argparse.Namespace, command: str) -> Report:
    """Measure everything `args` asks for; returns the report (also printed as it goes)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report(command, machine(args.threads))
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    from purestep.core.data import load_dataset
    from purestep.core.model import mlp
    from purestep.core.step import set_compile_cache

    if args.cache_dir:
        set_compile_cache(args.cache_dir)
    spec = mlp()
    with tempfile.TemporaryDirectory(prefix="purestep-bench-data-") as tmp:
        root = Path(args.data_dir) if args.data_dir else Path(tmp)
        if bench_data.has_fashion_mnist(root):
            report.machine["data"] = f"FashionMNIST from {root}"
        else:
            root = bench_data.write_fashion_mnist(Path(tmp), args.n_train, args.n_test, args.seed)
            report.machine["data"] = (
                f"synthetic, FashionMNIST-shaped ({args.n_train} + {args.n_test} x 1 x 28 x 28 uint8), "
                "written as IDX files"
            )
        data = load_dataset("fashion-mnist", root, download=False)
        x, y = data.x_train, data.y_train
        args.n_train, args.n_test = len(y), len(data.y_test)
        common = {"lr": args.lr, "batch_size": args.batch_size, "seed": args.seed}
        prepare: list[tuple[str, Any]] = [
            ("tutorial", lambda: variants.tutorial(root, spec, steps=args.steps, **common)),
            ("loader", lambda: variants.reference_loader(spec, x, y, steps=args.steps, **common)),
            ("slices", lambda: variants.reference_slices(spec, x, y, **common)),
            ("eager", lambda: variants.functional(spec, x, y, compiled=False, **common)),
            ("compiled", lambda: variants.functional(spec, x, y, compiled=True, **common)),
        ]
        if not args.no_proposed:
            prepare.append(("proposed", lambda: variants.proposed(x, y, **common)))
        if args.trials > 1:
            lrs = [args.lr * 2.0**k for k in range(args.trials)]
            prepare.append(("batched", lambda: variants.batched(spec, x, y, lrs, args.batch_size, args.seed)))
        if args.precision == "bf16":
            prepare.append(("bf16", lambda: variants.bf16(spec, x, y, **common)))
        if not args.no_jax and _jax_available():
            from benchmarks import jax_step

            init, _ = spec.init(args.seed)
            prepare.append(("jax", lambda: jax_step.jax_jit(init, x, y, args.lr, args.batch_size)))
        prepared: list[tuple[str, Variant, int]] = []
        for key, build in prepare:
            say(f"preparing {key} ...")
            prepared.append((key, build(), peak_rss()))
        tail = len(y) % args.batch_size
        full_matmuls = bench_floor.record_matmuls(*_one_step(spec, args, x, y, args.batch_size))
        tail_matmuls = bench_floor.record_matmuls(*_one_step(spec, args, x, y, tail)) if tail else []
        floor_rounds: list[tuple[tuple[bench_floor.MatmulTime, ...], tuple[bench_floor.MatmulTime, ...]]] = []
        for w in range(args.warmup):
            say(f"warm-up {w + 1} of {args.warmup} (untimed): " + ", ".join(key for key, _, _ in prepared))
            for _, variant, _ in prepared:
                variant.once()
        for r in range(args.rounds):
            say(f"round {r + 1} of {args.rounds}: " + ", ".join(key for key, _, _ in prepared) + ", floor")
            for _, variant, _ in prepared:
                variant.info.setdefault("runs", []).append(variant.once())
            floor_rounds.append(
                (bench_floor.time_matmuls(full_matmuls), bench_floor.time_matmuls(tail_matmuls))
            )
            report.floor_runs.append(_floor_epoch(*floor_rounds[-1], len(y) // args.batch_size))
        for key, variant, rss in prepared:
            info = variant.info
            runs = info.pop("runs")
            report.rows.append(Row(variant.name, variant.how, runs, info, rss))
            say(f"  {key}: {min(runs):.3f} s/epoch (rounds: {', '.join(f'{t:.3f}' for t in runs)})")
        _compare(report, args, spec, data)

        full_times = bench_floor.best_of([full for full, _ in floor_rounds])
        tail_times = bench_floor.best_of([tail for _, tail in floor_rounds]) if tail else ()
        report.floor = bench_floor.Floor(sum(m.flops for m in full_matmuls), full_times)
        report.floor_epoch_s = _floor_epoch(full_times, tail_times, len(y) // args.batch_size)

        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        if not args.no_probe:
            say("compiling cold and warm in fresh processes ...")
            report.compile = measure_compile(args, env)
        if args.cli:
            say("timing whole runs: purestep train and the tutorial script ...")
            report.cli = measure_cli(args, root, env)
    load = os.getloadavg()
    report.machine["load at end"] = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)"
    return report


def _floor_epoch(
    full: tuple[bench_floor.MatmulTime, ...], tail: tuple[bench_floor.MatmulTime, ...], full_steps: int
) -> float:
    """An epoch's floor: its full-batch steps' products and the short last step's."""
    return sum(t.best_s for t in full) * full_steps + sum(t.best_s for t in tail)


def _compare(report: Report, args: argparse.Namespace, spec: Any, data: Any) -> None:
    """Numbers that say the variants computed the same thing; the bf16 accuracy comparison."""
    compiled = next((r for r in report.rows if r.name == "purestep compiled step"), None)
    params = compiled.info.pop("params", None) if compiled is not None else None
    for row in report.rows:
        row.info.pop("params", None)
        layers = row.info.pop("layers", None)
        if layers is not None and params is not None:
            torch_layers = {}
            for i in layers:
                name = f"linear_relu_stack.{2 * int(i)}"
                torch_layers[i] = (params[f"{name}.weight"].numpy(), params[f"{name}.bias"].numpy())
            row.info["max_rel_diff_vs_compiled"] = _relative_diff(layers, torch_layers)
        step = row.info.pop("step", None)
        if step is not None:
            report.accuracy = _accuracy(args, spec, data, step)


def _jax_available() -> bool:
    from benchmarks import jax_step

    return jax_step.available()


def _one_step(spec: Any, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, n: int):
    from purestep.core.optim import sgd
    from purestep.core.step import make_train_step

    optimizer = sgd(args.lr)
    params, buffers = spec.init(args.seed)
    return make_train_step(spec, optimizer), params, buffers, optimizer.init(params), x[:n], y[:n]


def _accuracy(
    args: argparse.Namespace, spec: Any, data: Any, bf16_step: Any
) -> dict[str, tuple[float, float]]:
    from purestep.core.loop import steps_for
    from purestep.core.optim import sgd

    train, test = (data.x_train, data.y_train), (data.x_test, data.y_test)
    fp32_step, _ = steps_for(spec, sgd(args.lr), compiled=True)
    common = (spec, train, test, args.lr, args.batch_size, args.seed, args.accuracy_epochs)
    return {
        "fp32": variants.accuracy_after(fp32_step, *common),
        "bf16": variants.accuracy_after(bf16_step, *common),
    }


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def markdown(report: Report, args: argparse.Namespace) -> str:
    """The tables that go in BENCHMARKS.md, with the command and the machine."""
    compiled = report.seconds("purestep compiled step")
    lines = [
        f"Command: `{report.command}`",
        "",
        *(f"- {k}: {v}" for k, v in report.machine.items()),
        "",
        f"Seconds per training epoch, best of {args.rounds} interleaved rounds after {args.warmup} untimed; "
        "ratio = this variant / the compiled step.",
        "",
        "| variant | s / epoch | ratio to compiled | measured as | peak RSS so far |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for row in report.rows:
        ratio = f"{row.seconds / compiled:.2f}" if compiled else "-"
        runs = ", ".join(_fmt_s(t) for t in row.runs)
        how = f"{row.how}; rounds {runs}"
        rss = f"{row.rss_bytes / GB:.2f} GB"
        lines.append(f"| {row.name} | {_fmt_s(row.seconds)} | {ratio} | {how} | {rss} |")
    if report.floor is not None and report.floor_epoch_s is not None:
        f = report.floor
        ratio = f"{report.floor_epoch_s / compiled:.2f}" if compiled else "-"
        runs = ", ".join(f"{t:.3f}" for t in report.floor_runs)
        lines.append(
            "| floor: the step's matmuls at the best measured fp32 throughput "
            f"| {_fmt_s(report.floor_epoch_s)} | {ratio} "
            f"| {f.flops / 1e6:.1f} MFLOP/step at {f.gflops:.0f} GFLOP/s (ATen alone: "
            f"{f.flops / f.aten_seconds / 1e9:.0f}); per product, best of the rounds {runs} | - |"
        )
    lines.append("")
    if report.floor is not None:
        lines += [
            "Floor, per product of one full-batch step (best of 5 per round and of the rounds, "
            "fresh tensors of the step's layout):",
            "",
            "| product | MFLOP | ATen us | oneDNN us |",
            "| --- | ---: | ---: | ---: |",
        ]
        for t in report.floor.times:
            onednn = f"{t.onednn_s * 1e6:.1f}" if t.onednn_s is not None else "-"
            lines.append(
                f"| {t.matmul.label()} | {t.matmul.flops / 1e6:.2f} | {t.aten_s * 1e6:.1f} | {onednn} |"
            )
        lines.append("")
    extra = _extras(report)
    if extra:
        lines += ["| figure | value |", "| --- | ---: |", *extra, ""]
    if report.accuracy:
        lines += [
            f"bf16 vs fp32: test accuracy and loss after {args.accuracy_epochs} epoch(s), "
            "same init and batches:",
            "",
            "| precision | accuracy | loss |",
            "| --- | ---: | ---: |",
            *(f"| {k} | {acc:.4f} | {loss:.5f} |" for k, (acc, loss) in report.accuracy.items()),
            "",
        ]
    targets = _targets(report)
    if targets:
        lines += ["| target | measured | met |", "| --- | ---: | --- |", *targets, ""]
    return "\n".join(lines)


def _extras(report: Report) -> list[str]:
    lines = []
    for row in report.rows:
        if "compile_s" in row.info:
            lines.append(f"| {row.name}: compile in this process, s | {row.info['compile_s']:.2f} |")
        if "max_rel_diff_vs_compiled" in row.info:
            lines.append(
                f"| {row.name}: params after one epoch vs the compiled step's, max rel diff "
                f"| {row.info['max_rel_diff_vs_compiled']:.1e} |"
            )
    for name, probe in report.compile.items():
        graphs = ", ".join(f"{k} {v:.2f}" for k, v in probe["graphs"].items())
        lines.append(
            f"| compile, {name} cache (fresh process): {graphs} | {probe['compile_s']:.2f} s "
            f"(import {probe['import_s']:.2f} s, peak RSS {probe['rss_bytes'] / GB:.2f} GB) |"
        )
    for name, run in report.cli.items():
        if name == "help":
            lines.append(f"| `purestep --help`, wall, best of 3 | {run:.2f} s |")
        else:
            lines.append(
                f"| `{' '.join(_short(run['cmd']))}` ({name}), wall | {run['wall_s']:.1f} s "
                f"(peak RSS {run['rss_bytes'] / GB:.2f} GB) |"
            )
    return lines


def _short(cmd: list[str]) -> list[str]:
    out = []
    for part in cmd:
        p = Path(part)
        out.append(p.name if p.is_absolute() and p.exists() and p.is_file() else part)
    return ["DIR" if len(part) > 20 and "/" in part else part for part in out]


def _targets(report: Report) -> list[str]:
    compiled = report.seconds("purestep compiled step")
    if compiled is None:
        return []
    rows = []

    def add(name: str, value: float, ok: bool, fmt: str = "{:.3f}") -> None:
        rows.append(f"| {name} | {fmt.format(value)} | {'yes' if ok else 'no'} |")

    tutorial = report.seconds("tutorial loop as written")
    jax = report.seconds("JAX")
    steps = [("compiled", compiled)]
    proposed = report.seconds("purestep compiled step + apply as an F.linear chain")
    if proposed is not None:
        steps.append(("compiled + apply as an F.linear chain (not shipped)", proposed))
    for label, seconds in steps:
        if tutorial is not None:
            speedup = tutorial / seconds
            add(f"{label}: >= 5x faster per epoch than the tutorial", speedup, speedup >= 5, "{:.2f}x")
        if jax is not None:
            add(f"{label} / JAX jit <= 1.0", seconds / jax, seconds / jax <= 1.0)
        if report.floor_epoch_s:
            ratio = seconds / report.floor_epoch_s
            add(f"{label} / floor <= 1.25", ratio, ratio <= 1.25)
    if "warm" in report.compile:
        warm = report.compile["warm"]["compile_s"]
        add("warm-cache compile <= 3 s", warm, warm <= 3.0, "{:.2f} s")
    if "tutorial" in report.cli:
        tut = report.cli["tutorial"]["wall_s"]
        for name in ("compiled cold", "compiled warm"):
            wall = report.cli[name]["wall_s"]
            add(
                f"`purestep train` ({name} cache) / tutorial script, wall <= 0.35",
                wall / tut,
                wall / tut <= 0.35,
            )
        rss = max(report.cli[n]["rss_bytes"] for n in ("compiled cold", "compiled warm")) / GB
        add("`purestep train` peak RSS <= 1.5 GB", rss, rss <= 1.5, "{:.2f} GB")
        add("`purestep --help` <= 0.5 s", report.cli["help"], report.cli["help"] <= 0.5, "{:.2f} s")
    return rows


class _Parser(argparse.ArgumentParser):
    """argparse with a bad option reported as `purestep` reports one: one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"Error: {message} (--help lists the options)\n")


def parser() -> argparse.ArgumentParser:
    """The harness's options; the defaults are the tutorial's shape."""
    p = _Parser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="use the real FashionMNIST here when present (else synthetic)")
    p.add_argument("--n-train", type=int, default=60_000, help="synthetic training rows")
    p.add_argument("--n-test", type=int, default=10_000, help="synthetic test rows")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds over all variants (best of)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes of every variant before the rounds")
    p.add_argument("--steps", type=int, default=300, help="timed steps of the DataLoader variants")
    p.add_argument("--trials", type=int, default=4, help="K for the batched variant (1 skips it)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 adds its rows")
    p.add_argument("--accuracy-epochs", type=int, default=2, help="epochs of the bf16 vs fp32 comparison")
    p.add_argument("--cache-dir", help="inductor cache of this process (default: purestep's)")
    p.add_argument("--no-jax", action="store_true", help="skip the JAX variant")
    p.add_argument("--no-probe", action="store_true", help="skip the cold/warm compile processes")
    p.add_argument("--no-proposed", action="store_true", help="skip the F.linear-chain step (not shipped)")
    p.add_argument("--cli", action="store_true", help="time whole `purestep train` runs and the tutorial")
    p.add_argument("--cli-epochs", type=int, default=10)
    p.add_argument("--cli-impls", nargs="*", default=[], help="also time `purestep train --impl` these")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    p.add_argument("--json", type=Path, help="write the raw figures here")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> Report:
    """Run the harness; print the Markdown tables; write them (and JSON) where asked."""
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args = p.parse_args(argv)
    problem = args_problem(args)
    if problem is not None:
        p.error(problem)
    command = shlex.join(["python", "-m", "benchmarks", *argv])
    report = run(args, command)
    text = markdown(report, args)
    print(text)
    for path in (args.markdown, args.json):  # their folders, as purestep's commands make theirs
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        raw = finite(_raw(report))  # strict JSON, as purestep writes it: a NaN figure is null
        args.json.write_text(json.dumps(raw, indent=1, default=str, allow_nan=False))
    return report


LEAST = {
    "n_train": 1,
    "n_test": 1,
    "batch_size": 1,
    "seed": 0,
    "rounds": 1,
    "warmup": 0,
    "steps": 1,
    "trials": 1,
    "threads": 0,
    "accuracy_epochs": 1,
    "cli_epochs": 1,
}
"""The least value each whole-number option takes: checked before any work (`args_problem`)."""


def args_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options' values (a count below `LEAST`, a learning rate that is not
    a positive number), as one line naming the option and the value; None when nothing is."""
    for name, least in LEAST.items():
        value = getattr(args, name)
        if value < least:
            return f"argument --{name.replace('_', '-')}: must be {least} or more, got {value}"
    if not (math.isfinite(args.lr) and args.lr > 0):
        return f"argument --lr: must be a positive number, got {args.lr}"
    import typer

    from purestep.cli.common import check_output

    outputs = [("--markdown", args.markdown, False), ("--json", args.json, False)]
    outputs.append(("--cache-dir", args.cache_dir and Path(args.cache_dir), True))
    for option, path, directory in outputs:
        if path is None:
            continue
        try:  # before the run, as purestep's commands check theirs: its end could not write there
            check_output(path, option, directory=directory)
        except typer.BadParameter as e:
            return f"argument {option}: {e.message}"
    return None


def command(argv: list[str] | None = None) -> int:
    """`main` as a command, with `purestep`'s exit codes: 0 done; a failure is one line on stderr
    and exit 1 (`PURESTEP_DEBUG=1`, as `purestep --debug` sets it: the traceback too); Ctrl-C 130."""
    from purestep.core.errors import PurestepError, one_line

    try:
        main(argv)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("PURESTEP_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        cause = one_line(e) if isinstance(e, PurestepError) else f"{type(e).__name__}: {one_line(e)}"
        print(f"Error: {cause}", file=sys.stderr)
        return 1
    return 0


def _raw(report: Report) -> dict[str, Any]:
    return {
        "command": report.command,
        "machine": report.machine,
        "rows": [
            {
                "name": r.name,
                "seconds_per_epoch": r.seconds,
                "rounds": r.runs,
                "how": r.how,
                "info": r.info,
                "peak_rss_bytes": r.rss_bytes,
            }
            for r in report.rows
        ],
        "floor_epoch_s": report.floor_epoch_s,
        "floor_rounds": report.floor_runs,
        "floor_gflops": report.floor.gflops if report.floor else None,
        "compile": report.compile,
        "cli": {
            k: v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk not in ("stdout",)}
            for k, v in report.cli.items()
        },
        "accuracy": report.accuracy,
    }


if __name__ == "__main__":
    sys.exit(command())
