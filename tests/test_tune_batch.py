"""`purestep tune --batch K`: trials trained in a pool of K slots equal the same trials trained alone."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import select
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from optuna.trial import FrozenTrial, TrialState
from test_tune_cli import FAST, PURESTEP, _wait, finished, invoke, trials

from purestep import load_dataset
from purestep.core import denormals
from purestep.core.optim import needs_third_buffer
from purestep.search.objective import (
    EVAL_BATCH_SIZE,
    Splits,
    TrialConfig,
    eager_step_seconds,
    graph_configs,
    make_splits,
    train,
)
from purestep.search.space import default_space, parse_space
from purestep.search.tune import (
    COMPILE_MIN_EAGER_SECONDS,
    COMPILE_MIN_TIMEOUT,
    CUDA_BATCH,
    TuneOptions,
    choose_batch,
    choose_speed,
    choose_threads,
    usable_cores,
    use_compiled,
)

STABLE_RATES = "[sgd_lr]\nhigh = 0.1\n[adam_lr]\nhigh = 0.01\n[rmsprop_lr]\nhigh = 0.001\n"
"""The default space with learning rates where training is not chaotic: vmap's batched kernels
round differently from the unbatched ones (by 3e-6 after one Adam step on digits), and Adam at
lr 0.06 on batches of 32 amplifies that to 5e-3 in three epochs, as DESIGN.md's bounds say."""


def test_each_pooled_trial_has_the_validation_metrics_it_has_alone(tmp_path: Path) -> None:
    """Every optimizer family, batch size and schedule of the default space shares the pool."""
    space = tmp_path / "space.toml"
    space.write_text(STABLE_RATES)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    args = ["--epochs", "3", "--n-trials", "8", "--batch", "4", "--sampler", "random", "--pruner", "none"]
    result = invoke(*args, "--space", str(space), "--storage", storage, "--no-final", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    done = [t for t in trials(storage) if t.state == TrialState.COMPLETE]
    assert len(done) == 8
    drawn = [TrialConfig.from_dict(t.user_attrs["config"]) for t in done]
    assert len({c.optimizer for c in drawn}) > 1 and len({c.batch_size for c in drawn}) > 1
    splits = make_splits(load_dataset("digits"), 0.2, 0)
    callers = torch.get_num_threads()
    torch.set_num_threads(usable_cores())  # as `tune` trained (`--threads auto`); it leaves the caller's
    try:
        histories = {t.number: _alone(t, splits) for t in done}
    finally:
        torch.set_num_threads(callers)
    for t in done:
        alone = histories[t.number]
        assert len(splits.y_val) <= EVAL_BATCH_SIZE
        # on a CPU the pool runs each trial's own steps (stacked, off the CPU: within 1e-5)
        for row in alone:
            assert t.intermediate_values[row.epoch + 1] == row.eval_accuracy, t.number
        assert t.user_attrs["val_loss"] == alone[-1].eval_loss, t.number


def _alone(t: FrozenTrial, splits: Splits) -> list:
    """The history of trial `t`'s configuration trained alone, eager, as `tune` trains it."""
    config = TrialConfig.from_dict(t.user_attrs["config"])
    with denormals.flushed():  # as `tune` trains by default
        fit_split, val = (splits.x_fit, splits.y_fit), (splits.x_val, splits.y_val)
        return train(config, *fit_split, val, splits=splits, epochs=3, seed=0, compiled=False).history


def test_ctrl_c_mid_pool_fails_the_pooled_trials_and_a_rerun_completes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    cmd = [*PURESTEP, *FAST[:3], "--epochs", "30", "--n-trials", "6", "--batch", "3", "--pruner", "none"]
    cmd += ["--storage", storage, "--no-final", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def refilled_and_running() -> bool:
        """Trials finished, and refills mid-training (trials end at different steps in the pool)."""
        ts = trials(storage)
        running = [t for t in ts if t.state == TrialState.RUNNING]
        return len(finished(ts)) >= 2 and any(len(t.intermediate_values) >= 2 for t in running)

    try:
        ready, _, _ = select.select([proc.stderr], [], [], 240)
        assert ready and "(new study)" in proc.stderr.readline()
        _wait(refilled_and_running, 240, proc)
        done_before = {t.number: t.value for t in finished(trials(storage))}
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    ts = trials(storage)
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    failed = [t for t in ts if t.state == TrialState.FAIL]
    assert 1 <= len(failed) <= 3 and all(t.user_attrs["reason"] == "interrupted (SIGINT)" for t in failed)
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    ts = trials(storage)
    assert len(finished(ts)) == 6 and not [t for t in ts if t.state == TrialState.RUNNING]
    assert {t.number: t.value for t in finished(ts) if t.number in done_before} == done_before


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_batches_in_two_workers_stop_at_exactly_n(tmp_path: Path, kind: str) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    cmd = [*PURESTEP, *FAST, "--n-trials", "7", "--workers", "2", "--batch", "3", "--storage", storage]
    out = subprocess.run(
        [*cmd, "--no-final", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    ts = trials(storage)
    done = finished(ts)
    assert len(done) == 7 and len({t.number for t in done}) == 7
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@given(
    device=st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:3"]),
    left=st.integers(0, 1000),
    workers=st.integers(1, 64),
)
def test_batch_auto_is_one_on_a_cpu_and_a_gpu_fills_up_to_the_trials_left(
    device: str, left: int, workers: int
) -> None:
    k = choose_batch(device, left, workers)
    if device == "cpu":
        assert k == 1
        return
    assert 1 <= k <= CUDA_BATCH
    assert (k - 1) * workers < max(left, 1)  # no worker's pool is larger than its share of the trials left
    assert k == CUDA_BATCH or k * workers >= left  # and the pools are as large as that allows


@given(cores=st.integers(1, 256), workers=st.integers(1, 64))
def test_threads_auto_shares_the_cores_among_the_workers(cores: int, workers: int) -> None:
    n = choose_threads(cores, workers)
    assert n >= 1
    assert n * workers <= cores or n == 1  # no more threads than cores, unless one each is too many
    assert (n + 1) * workers > cores  # and every core that can be given is given


def test_usable_cores_honours_omp_num_threads_as_torch_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert usable_cores() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert usable_cores() == len(os.sched_getaffinity(0))


def _options(device: str = "cpu", **kw: object) -> TuneOptions:
    return TuneOptions(
        "digits", "data", device, 10, 30, 0, None, "tpe", "median", "sqlite:///s.db", "s",
        default_space().to_json(), **kw,
    )  # fmt: skip


DIGITS_STEP = 0.002
"""Seconds an eager step of the default MLP takes on digits' shape on a 2-core CPU (about)."""


def _step(threads: int) -> float:
    return DIGITS_STEP


def test_speed_keeps_what_is_given_and_says_which_it_picked() -> None:
    auto = choose_speed(_options(), n_fit=1150, trials_left=30, step_seconds=_step)
    assert (auto.compiled, auto.batch, auto.impl_auto, auto.batch_auto) == (False, 1, True, True)
    assert auto.to_json() == {
        "impl": {"value": "eager", "chosen": "auto"},
        "batch": {"value": 1, "chosen": "auto"},
        "threads": {"value": usable_cores(), "chosen": "auto"},
        "denormals": "kept",  # until `tune` flushes them
    }
    shared = choose_speed(_options(workers=2), n_fit=1150, trials_left=30, step_seconds=_step)
    assert (shared.threads, shared.threads_auto) == (choose_threads(usable_cores(), 2), True)
    slow = choose_speed(_options(), n_fit=64, trials_left=1, step_seconds=lambda n: COMPILE_MIN_EAGER_SECONDS)
    assert slow.compiled and slow.impl_auto  # one step as long as a compile is worth: compiled
    for threads in (2, 3):  # the step is timed on the run's own threads
        timed = choose_speed(_options(threads=threads), 64, 1, lambda n: COMPILE_MIN_EAGER_SECONDS * (n == 3))
        assert timed.compiled == (threads == 3)
    gpu = choose_speed(_options(device="cuda", workers=2), n_fit=1150, trials_left=10, step_seconds=_step)
    assert (gpu.batch, gpu.batch_auto) == (5, True)

    def untimed(threads: int) -> float:
        raise AssertionError("a step was timed for nothing")

    warm = choose_speed(_options(), 1150, 30, step_seconds=untimed, saved=lambda threads: True)
    assert warm.compiled and warm.impl_auto  # every graph saved: compiling costs nothing, nothing timed
    for threads in (2, 3):  # saved for the run's own thread count (inductor writes it into CPU kernels)
        on = choose_speed(_options(threads=threads), 1150, 30, _step, saved=lambda n: n == 3)
        assert on.compiled == (threads == 3)
    pooled = choose_speed(_options(batch=4), 1150, 30, step_seconds=_step, saved=lambda n: True)
    assert pooled.compiled  # a pool on a CPU runs each trial's own saved graphs
    for told in (_options(impl="eager"), _options(device="cuda", batch=4)):  # as given; a stack's own graphs
        assert not choose_speed(told, 1150, 30, _step, saved=lambda n: True).compiled
    given = _options(device="cuda", impl="eager", batch=3, threads=5)
    given_ = choose_speed(given, n_fit=10**6, trials_left=1, step_seconds=untimed)
    assert given_.to_json() == {
        "impl": {"value": "eager", "chosen": "given"},
        "batch": {"value": 3, "chosen": "given"},
        "threads": {"value": 5, "chosen": "given"},
        "denormals": "kept",
    }


def test_auto_compiles_a_study_whose_eager_steps_would_repay_it_unless_its_timeout_is_short() -> None:
    per_trial = 10 * 18  # digits: 1150 rows to fit, 18 batches of 64, 10 epochs
    enough = math.ceil(COMPILE_MIN_EAGER_SECONDS / (per_trial * DIGITS_STEP))
    assert per_trial * DIGITS_STEP < COMPILE_MIN_EAGER_SECONDS  # no one trial of them repays a compile

    def compiled(trials: int, step: float = DIGITS_STEP, **kw: object) -> bool:
        return choose_speed(_options(**kw), 1150, trials, step_seconds=lambda n: step).compiled

    assert compiled(enough) and not compiled(enough - 1)
    assert not compiled(enough, workers=2) and compiled(2 * enough, workers=2)  # each compiles for its share
    assert compiled(enough, timeout=COMPILE_MIN_TIMEOUT)
    assert not compiled(10**6, timeout=COMPILE_MIN_TIMEOUT - 1)  # the compile would take much of the budget
    assert compiled(enough // 4 + 1, step=4 * DIGITS_STEP)  # a model 4x as slow a step: 4x fewer trials
    assert not compiled(enough // 4 - 1, step=4 * DIGITS_STEP)


@given(
    n_fit=st.integers(1, 10**5),
    epochs=st.integers(1, 50),
    trials=st.integers(1, 10**4),
    step=st.floats(1e-6, 10.0),
    timeout=st.none() | st.floats(1.0, 1e5),
)
def test_auto_never_compiles_less_for_more_work(
    n_fit: int, epochs: int, trials: int, step: float, timeout: float | None
) -> None:
    """More rows, epochs, trials, time or a slower eager step never turn compiling off; a full cache
    always turns it on."""
    def timed() -> float:
        return step

    def slower() -> float:
        return 2 * step

    before = use_compiled("auto", n_fit, epochs, timed, trials, timeout)
    longer = None if timeout is None else 2 * timeout
    for more in ((2 * n_fit, epochs, timed, trials, timeout), (n_fit, epochs + 1, timed, trials, timeout),
                 (n_fit, epochs, slower, trials, timeout), (n_fit, epochs, timed, trials + 1, timeout),
                 (n_fit, epochs, timed, trials, longer), (n_fit, epochs, timed, trials, None)):  # fmt: skip
        assert use_compiled("auto", *more) >= before
    assert use_compiled("auto", n_fit, epochs, timed, trials, timeout, saved=lambda: True)
    assert not use_compiled("eager", n_fit, epochs, timed, trials, timeout, saved=lambda: True)


def test_an_eager_step_is_timed_for_its_model_and_leaves_threads_and_random_state_as_they_were() -> None:
    """`eager_step_seconds` times the model it is given (a step of 1024-wide layers is much slower
    than one of 8-wide: 8 ms against 0.3 ms here), and leaves torch's threads and generator alone."""
    splits = make_splits(load_dataset("digits"), 0.2, 0)
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    small, big = (eager_step_seconds(splits, 1, TrialConfig(optimizer="adam", hidden=h)) for h in (8, 1024))
    assert small > 0 and 5 * small < big
    assert torch.get_num_threads() == threads and torch.equal(torch.random.get_rng_state(), state)
    wrong = dataclasses.replace(splits, in_shape=(7,))  # a model its rows cannot run: its trials say why
    assert eager_step_seconds(wrong, 1) == 0.0 and torch.get_num_threads() == threads


def test_denormals_are_flushed_only_when_asked_and_on_a_cpu() -> None:
    assert _options().flushes() and not _options(denormals="keep").flushes()
    assert not _options(device="cuda").flushes()  # CUDA kernels keep them: the run says so


def test_graph_configs_cover_every_shape_a_space_can_draw() -> None:
    configs = graph_configs(default_space())
    assert configs is not None and sorted(c.batch_size for c in configs) == [32, 64, 128, 256]
    assert len(configs) == 4
    ranged = parse_space("[batch_size]\nlow = 16\nhigh = 256\n")
    assert graph_configs(ranged) is None  # which graphs a range needs is open
    widths = graph_configs(parse_space("[hidden]\nchoices = [64, 128]\n[batch_size]\nvalue = 32\n"))
    assert sorted((c.hidden, c.batch_size) for c in widths or []) == [(64, 32), (128, 32)]
    # RMSprop with momentum keeps a third buffer: a graph of its own, wherever a space can draw it
    assert not any(needs_third_buffer(c.optimizer_config()) for c in configs)
    rmsprop_momentum = '[momentum]\nlow = 0.0\nhigh = 0.9\nwhen = { optimizer = "rmsprop" }\n'
    both = graph_configs(parse_space(rmsprop_momentum, base=default_space())) or set()
    assert sorted((c.batch_size, needs_third_buffer(c.optimizer_config())) for c in both) == [
        (b, third) for b in (32, 64, 128, 256) for third in (False, True)
    ]


def test_a_dropout_rate_from_a_range_shapes_no_graph_and_a_width_from_one_does() -> None:
    """The CNN's default space draws its dropout rate from a range, which a saved step takes as an
    input: its graphs are one per width and batch size, known before the study; a width drawn from
    a range leaves them open, as does any range without the model at hand."""
    splits = make_splits(load_dataset("digits"), 0.2, 0, model="cnn")
    space = default_space("cnn")
    configs = graph_configs(space, splits)
    assert graph_configs(space) is None
    assert configs is not None and len(configs) == 4 * 3
    assert {dict(c.model_args)["width"] for c in configs} == {16, 32, 64}
    assert {dict(c.model_args)["dropout"] for c in configs} == {0.0}  # one rate stands for all
    ranged = parse_space('[width]\nkey = "model.width"\nlow = 8\nhigh = 64\n', base=space)
    assert graph_configs(ranged, splits) is None


@pytest.mark.compile
def test_auto_compiles_once_every_graph_of_the_run_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--impl auto` trains eager while compiling would cost time, and compiled once a run has saved
    every graph the study calls: two (train and eval), one for every batch size. The final re-train,
    likewise, once its own are saved: at batch 4 the whole training set's 1437 rows end in a 1-row
    batch, which has a graph of its own (the study's 1150 end in 2 rows, which the two serve)."""
    monkeypatch.setenv("PURESTEP_COMPILE_CACHE", str(tmp_path / "cache"))
    space = tmp_path / "space.toml"
    space.write_text("[batch_size]\nvalue = 4\n")
    storage = f"sqlite:///{tmp_path / 's.db'}"
    common = ["--space", str(space), "--storage", storage, "--json", "--out", str(tmp_path)]
    compiled = ["--impl", "compiled"]
    runs = [  # flags, the study's pick, and the final re-train's (None: --no-final)
        ([], ("eager", "auto"), None),
        (compiled, ("compiled", "given"), None),  # saves the study's graphs
        ([], ("compiled", "auto"), "eager"),  # the re-train's 1-row batch is not saved yet
        (compiled, ("compiled", "given"), "compiled"),  # saves it
        ([], ("compiled", "auto"), "compiled"),
    ]
    packages = [0, 2, 2, 3, 3]
    for n, (flags, (value, chosen), final) in enumerate(runs, start=1):
        result = invoke("--n-trials", str(n), *flags, *common, *([] if final else ["--no-final"]))
        line, impl, _ = _speed(result)
        assert f"{value} steps ({chosen})" in line and impl == {"value": value, "chosen": chosen}
        assert (json.loads(result.stdout).get("final") or {}).get("impl") == final
        assert len(list((tmp_path / "cache" / "steps").glob("*.pt2"))) == packages[n - 1]
    assert len(finished(trials(storage))) == len(runs)


def _speed(result) -> tuple[str, dict, dict]:
    """The announce line and the `impl` and `batch` entries of `--json`."""
    assert result.exit_code == 0, result.output
    best = json.loads(result.stdout)
    return result.stderr.splitlines()[0], best["impl"], best["batch"]


def test_tune_reports_what_it_picked_and_what_was_given_and_resumes_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PURESTEP_COMPILE_CACHE", str(tmp_path / "cache"))  # nothing saved: auto is eager
    storage = f"sqlite:///{tmp_path / 's.db'}"
    common = ["--storage", storage, "--no-final", "--json", "--out", str(tmp_path)]

    from purestep.core import step

    before = step._ARTIFACTS, os.environ["TORCHINDUCTOR_CACHE_DIR"]
    callers = torch.get_num_threads()  # the count `tune` leaves, whatever it trained on
    line, impl, batch = _speed(invoke("--n-trials", "3", *common))
    assert (step._ARTIFACTS, os.environ["TORCHINDUCTOR_CACHE_DIR"]) == before  # looking set nothing
    n = usable_cores()
    threads = "1 thread" if n == 1 else f"{n} threads"
    picked = f"eager steps (auto), 1 trial at a time (auto), {threads} (auto), denormals flushed"
    assert f"(new study); {picked}" in line
    assert impl == {"value": "eager", "chosen": "auto"} and batch == {"value": 1, "chosen": "auto"}
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["batch"] == batch and best["threads"] == {"value": n, "chosen": "auto"}
    assert torch.get_num_threads() == callers

    assert best["denormals"] == "flushed" and not denormals.flushing()  # flushed while it ran

    args = ["--batch", "3", "--impl", "eager", "--threads", "1", "--denormals", "keep"]
    line, impl, batch = _speed(invoke("--n-trials", "6", *args, *common))
    assert "(resuming: 3 finished); eager steps (given), 3 trials at once (given), 1 thread (given), " in line
    assert line.endswith("denormals kept")
    assert impl == {"value": "eager", "chosen": "given"} and batch == {"value": 3, "chosen": "given"}
    assert torch.get_num_threads() == callers

    line, _, batch = _speed(invoke("--n-trials", "7", *common))
    assert "(resuming: 6 finished); eager steps (auto), 1 trial at a time (auto)" in line
    assert batch == {"value": 1, "chosen": "auto"} and len(finished(trials(storage))) == 7


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", "2"),
        ("n_trials", 0),
        ("threads", 0),
        ("workers", 0),
        ("batch", -4),
        ("batch", 257),
        ("timeout", -1.0),
        ("timeout", math.nan),
        ("val_fraction", 0),
        ("impl", "fast"),
        ("denormals", "flsh"),
        ("study", ""),
        ("space_json", "[1, 2]"),
    ],
)
def test_tune_from_python_refuses_what_the_command_line_refuses_and_writes_nothing(
    tmp_path: Path, field: str, value: object
) -> None:
    """From Python these failed once the study was made (`epochs=0` left a failed trial 0,
    `threads=0` a waiting one), or ran as something else (`impl="fast"` as eager, `batch=-4` as 1,
    `val_fraction=0` as the automatic fraction)."""
    from purestep.search.tune import UsageError, tune

    options = dataclasses.replace(_options(), storage=f"sqlite:///{tmp_path / 's.db'}", **{field: value})
    with pytest.raises(UsageError, match=f"^TuneOptions.{field} "):
        tune(options)
    assert list(tmp_path.iterdir()) == []


def test_tune_from_python_trains_on_its_threads_and_leaves_the_callers_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`threads=1` holds while trials train and while the best one is re-trained; after, a notebook
    goes on with its own count (it was left at 1)."""
    import torch

    from purestep.search import tune as tune_module

    seen: list[int] = []
    final_train = tune_module.final_train

    def recording(*args: object) -> object:
        seen.append(torch.get_num_threads())
        return final_train(*args)

    monkeypatch.setattr(tune_module, "final_train", recording)
    options = dataclasses.replace(
        _options(), data_dir=str(tmp_path), epochs=1, n_trials=2, storage=f"sqlite:///{tmp_path / 's.db'}",
        threads=1, impl="eager", batch=1,
    )  # fmt: skip
    was = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        outcome, data = tune_module.tune(options, progress=lambda p: seen.append(torch.get_num_threads()))
        assert torch.get_num_threads() == 3
        tune_module.finish(outcome, data, options, tmp_path / "out", final=True)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(was)
    assert len(seen) >= 3 and set(seen) == {1}, seen

