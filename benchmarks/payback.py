"""What a cold compile costs and what each compiled step saves, per MLP shape: `--impl auto`'s inputs.

    python -m benchmarks.payback --shapes 64x512,784x512,64x1024,784x256,64x128 --steps 3000 --rounds 2

For each shape (`INPUTSxHIDDEN`: the MLP `INPUTS-HIDDEN-HIDDEN-10`) it trains one trial of
`--steps` steps at batch 64 on random data with Adam and evaluates 2048 rows once, as `tune`
trains a trial (`objective.train`), each run in a new process on `--threads` threads: eager;
compiled on a new, empty compile cache (cold); compiled on the cache the cold run filled (graphs
saved). Alternated, reversed every other round. Per shape it prints the compile's cost (cold minus
saved), each step's gain (eager minus saved, over the steps), an eager step as `--impl auto` times
it (`eager_step_seconds`, in the eager run's process), and the break-even: steps (cost over gain)
and those steps' eager seconds at the timed step, what `COMPILE_MIN_EAGER_SECONDS` is set against.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
VARIANTS = ("eager", "cold", "saved", "step")


def run(inputs: int, hidden: int, steps: int, compiled: bool, threads: int) -> tuple[float, float]:
    """One trial of `steps` steps at batch 64 and one evaluation in this process, as `tune` trains
    it (`objective.train`); its seconds, and an eager step's as `--impl auto` times it (eager runs)."""
    import torch

    from purestep.core.allocator import keep_freed_memory
    from purestep.search.objective import Splits, TrialConfig, eager_step_seconds, train

    torch.set_num_threads(threads)
    keep_freed_memory()  # as `tune` runs
    if compiled:
        from purestep.core.step import set_compile_cache

        set_compile_cache(os.environ["PAYBACK_CACHE"])
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(steps * 64, inputs, generator=g), torch.randint(0, 10, (steps * 64,), generator=g)
    xv, yv = torch.rand(2048, inputs, generator=g), torch.randint(0, 10, (2048,), generator=g)
    splits = Splits(x, y, xv, yv, (inputs,), 10, "mlp", (("hidden", (hidden, hidden)),))
    config = TrialConfig(optimizer="adam", lr=1e-3)
    timed = 0.0 if compiled else eager_step_seconds(splits, threads)
    start = time.perf_counter()
    train(config, x, y, (xv, yv), splits=splits, epochs=1, seed=0, compiled=compiled)
    return time.perf_counter() - start, timed


def child(args: argparse.Namespace) -> None:
    inputs, hidden = (int(v) for v in args.child.split("x"))
    print(json.dumps(run(inputs, hidden, args.steps, args.compiled, args.threads)))


def main() -> None:
    """Run every shape's three variants in new processes, alternated; print one table."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.payback", description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="64x512,784x512")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    shapes = args.shapes.split(",")
    walls: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def timed(shape: str, variant: str, cache: Path) -> None:
            command = [sys.executable, "-m", "benchmarks.payback", "--child", shape]
            command += ["--steps", str(args.steps), "--threads", str(args.threads)]
            command += ["--compiled"] if variant != "eager" else []
            env = os.environ | {"PAYBACK_CACHE": str(cache)}
            done = subprocess.run(command, env=env, cwd=HERE, check=True, capture_output=True, text=True)
            wall, step = json.loads(done.stdout.splitlines()[-1])
            walls.setdefault((shape, variant), []).append(wall)
            if variant == "eager":
                walls.setdefault((shape, "step"), []).append(step)
            print(f"{shape} {variant}: {wall:.2f} s", flush=True)

        for r in range(args.rounds):
            for shape in shapes if r % 2 == 0 else reversed(shapes):
                cold = Path(tmp) / f"{shape}-{r}"
                order = ["eager", "cold", "saved"] if r % 2 == 0 else ["cold", "saved", "eager"]
                for variant in order:
                    timed(shape, variant, cold)  # "saved" runs on the cache this round's cold run filled
    print(f"\n{args.steps} steps at batch 64, {args.threads} threads, {args.rounds} rounds, medians\n")
    print("| MLP | eager s | cold s | saved s | compile s | gain ms/step | timed eager step ms "
          "| break-even steps | break-even, eager s |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for shape in shapes:
        inputs, hidden = (int(v) for v in shape.split("x"))
        eager, cold, saved, step = (statistics.median(walls[shape, v]) for v in VARIANTS)
        cost, gain = cold - saved, (eager - saved) / args.steps
        steps = cost / gain if gain > 0 else float("inf")
        print(
            f"| {inputs}-{hidden}-{hidden}-10 | {eager:.2f} | {cold:.2f} | {saved:.2f} | {cost:.1f} "
            f"| {gain * 1e3:.3f} | {step * 1e3:.3f} | {steps:.0f} | {steps * step:.0f} |"
        )


if __name__ == "__main__":
    main()
