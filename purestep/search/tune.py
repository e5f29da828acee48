"""`purestep tune` without the CLI: prepare a study, run its trials here or in worker processes,
then write `best.json` and re-train the best configuration on the whole training set.

Order matters for "bad input leaves the storage as it was": the space, sampler, pruner and
storage URL are checked, and the data loaded, before the storage is opened; an existing
study is compared with this run's definition before anything is written to it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from purestep.core.errors import PurestepError, first_line
from purestep.core.files import finite, write_json
from purestep.core.settings import MAX_BATCH
from purestep.search.objective import (
    EVAL_BATCH_SIZE,
    Splits,
    TrialConfig,
    eager_step_seconds,
    make_objective,
    make_splits,
    train,
)
from purestep.search.runner import Shield, TrialEnd, run_trial_batches, run_trials
from purestep.search.space import Space, SpaceError, settings_of, space_from_json
from purestep.search.storage import StorageURL, open_storage, parse_storage, storage_errors
from purestep.search.study import (
    FINISHED,
    TAKEN,
    StudySpec,
    baseline_trial,
    best_trial,
    count,
    ensure_baseline,
    make_pruner,
    make_sampler,
    model_fingerprint,
    open_study,
    stored_spec,
)

if TYPE_CHECKING:
    from purestep.core.data import Dataset

BEST_JSON, BEST_WEIGHTS = OUT_FILES = ("best.json", "best.safetensors")
"""What a study writes into its `--out` folder (`report` adds its plots)."""

COMPILE_MIN_EAGER_SECONDS = 120.0
"""`--impl auto` compiles when the steps left to a process, each trial counted to its last epoch at
batch 64, would take at least this long eager, at an eager step's time measured on this machine
(`eager_step_seconds`: trial 0's model, Adam, batch 64).

A cold compile costs about 30 s on a 2-core CPU whatever the MLP's width; what each step saves
grows with the step, so the break-even sits at a number of eager seconds more than of steps. It
was measured between 50 and 170 s (one trial per MLP shape, FashionMNIST-shaped studies, digits
studies): 120 s splits the difference (BENCHMARKS.md, "What a cold compile repays").
"""
COMPILE_MIN_TIMEOUT = 300.0
"""...but not within a `--timeout` shorter than this many seconds: the compile would take much of the
budget and the trials that fit in the rest could not repay it."""
CUDA_BATCH = 16
"""`--batch auto` on a GPU: trials each process trains at once (fewer when fewer are left).

Not measured (no GPU here): one 64-row step of the tutorial's MLP leaves a GPU mostly idle, so
K trials cost little more than one until the device is busy; 16 keeps the drain short.
"""
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class TuneOptions:
    """Everything a tuning run (and each of its worker processes) needs, as plain data."""

    dataset: str
    data_dir: str
    device: str
    epochs: int
    n_trials: int
    seed: int
    val_fraction: float | None
    """None until the data is loaded: then `auto_val_fraction` of its training rows."""
    sampler: str
    pruner: str
    storage: str
    study: str
    space_json: str
    timeout: float | None = None
    workers: int = 1
    impl: str = "auto"
    threads: int | None = None
    """Torch threads per process; None is `--threads auto`, decided by `choose_threads`."""
    batch: int | None = None
    """Trials trained at once; None is `--batch auto`, decided by `choose_batch` once the study is open."""
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    loss: str | None = None
    """None until the data is loaded: then the task's default (`resolve_for_data`)."""
    denormals: str = "flush"
    """`flush`: denormal floats are zero on the CPU while trials train (`core/denormals.py`); `keep`."""
    sampler_seed: int | None = None
    """None until the study is open: then the seed its samplers draw from (`sampler_seed`)."""

    @property
    def space(self) -> Space:
        """The search space."""
        return space_from_json(self.space_json)

    def flushes(self) -> bool:
        """Whether trials train with denormals flushed: asked for, on a CPU (CUDA kernels keep them)."""
        return self.denormals == "flush" and self.device == "cpu"

    def spec(self) -> StudySpec:
        """The study definition these options ask for (once `resolve_for_data` has run)."""
        assert self.val_fraction is not None, "the validation fraction is decided with the data"
        return StudySpec(
            self.dataset,
            self.epochs,
            self.seed,
            self.val_fraction,
            self.space,
            self.model,
            self.model_args,
            self.loss or "cross_entropy",
        )

    def splits(self, data: Dataset) -> Splits:
        """The fit and validation splits of `data`, with the model and loss trials train."""
        fraction = self.val_fraction or auto_val_fraction(len(data.y_train))
        return make_splits(
            data, fraction, self.seed, self.model, self.model_args, self.loss or "cross_entropy"
        )

    def to_json(self) -> str:
        """For a worker process's command line."""
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Progress:
    """The live line: the trial under way (or None), finished trials, the best so far and elapsed time."""

    running: int | None
    finished: int
    n_trials: int
    best_value: float | None
    best_number: int | None
    elapsed: float
    accuracy: bool = True
    """Whether values are validation accuracies (else a regression's validation MSE)."""


@dataclass(frozen=True)
class Speed:
    """How a run trains its trials, eager or compiled, K at once and on how many torch threads,
    and whether `tune` picked each from the work and the machine (`--impl auto`, `--batch auto`,
    `--threads auto`) or the command line gave it."""

    compiled: bool
    batch: int
    impl_auto: bool
    batch_auto: bool
    threads: int = 1
    threads_auto: bool = False
    flush: bool = False
    """Whether denormal floats are flushed to zero while trials train (`--denormals`, as it took)."""

    def to_json(self) -> dict[str, Any]:
        """The `impl`, `batch`, `threads` and `denormals` entries of `best.json`."""
        return {
            "impl": {"value": "compiled" if self.compiled else "eager", "chosen": _chosen(self.impl_auto)},
            "batch": {"value": self.batch, "chosen": _chosen(self.batch_auto)},
            "threads": {"value": self.threads, "chosen": _chosen(self.threads_auto)},
            "denormals": self.denormals,
        }

    @property
    def denormals(self) -> str:
        """`flushed` or `kept`, as the announce line and `best.json` say it."""
        return "flushed" if self.flush else "kept"

    def describe(self) -> str:
        """For the announce line: `eager steps (auto), 1 trial at a time (auto), 2 threads (auto),
        denormals flushed`."""
        impl = "compiled" if self.compiled else "eager"
        trials = "1 trial at a time" if self.batch == 1 else f"{self.batch} trials at once"
        threads = "1 thread" if self.threads == 1 else f"{self.threads} threads"
        return (
            f"{impl} steps ({_chosen(self.impl_auto)}), {trials} ({_chosen(self.batch_auto)}), "
            f"{threads} ({_chosen(self.threads_auto)}), denormals {self.denormals}"
        )


def _chosen(auto: bool) -> str:
    return "auto" if auto else "given"


@dataclass
class Outcome:
    """What a run ended with; `final` is filled by `final_train`."""

    study: str
    storage: str
    created: bool
    baseline_queued: bool
    speed: Speed
    complete: int
    pruned: int
    failed: int
    running: int
    best: FrozenTrial | None
    baseline: FrozenTrial | None
    best_config: TrialConfig | None
    seconds: float
    accuracy: bool = True
    """Whether values are validation accuracies (else a regression's validation MSE)."""
    final: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)


def use_compiled(
    impl: str,
    n_fit: int,
    epochs: int,
    step_seconds: Callable[[], float],
    trials: int = 1,
    timeout: float | None = None,
    saved: Callable[[], bool] = lambda: False,
) -> bool:
    """`eager`/`compiled` as asked; `auto` compiles when compiling costs nothing, `saved()` (the
    compile cache holds every graph the run needs), or when the `trials` left to this process, at
    batch 64 and each to its last epoch, would take `COMPILE_MIN_EAGER_SECONDS` eager at
    `step_seconds()` a step, unless `timeout` is too short to repay a compile. Each callable is
    called only when the answer needs it (a step is timed only then)."""
    if impl != "auto":
        return impl == "compiled"
    if saved():
        return True
    from purestep.core.data import num_batches

    in_time = not timeout or timeout >= COMPILE_MIN_TIMEOUT  # as `tune`, 0 or None: no deadline
    steps = trials * epochs * num_batches(n_fit, 64)
    return in_time and steps * step_seconds() >= COMPILE_MIN_EAGER_SECONDS


def choose_batch(device: str, trials_left: int, workers: int = 1) -> int:
    """`--batch auto`: how many trials each process trains at once, from the device and the trials left.

    A CPU trains one at a time: K stacked trials are K times the products on the same cores, so a
    CPU pool runs each trial's own steps and measured no faster than sequential trials (BENCHMARKS.md,
    "The pool on a CPU"), while K in flight are pruned later. A GPU trains `CUDA_BATCH` at once,
    never more than a worker's share of the trials left.
    """
    if not device.startswith("cuda"):
        return 1
    return min(CUDA_BATCH, worker_share(trials_left, workers))


def worker_share(trials_left: int, workers: int) -> int:
    """The trials left to each of `workers` processes (at least one): what each trains and compiles for."""
    return -(-max(trials_left, 1) // max(workers, 1))


def usable_cores() -> int:
    """`OMP_NUM_THREADS` when set (as torch honours it), else the CPUs this process may run on."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdecimal() and int(given) > 0:
        return int(given)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def choose_threads(cores: int, workers: int) -> int:
    """`--threads auto`: the `cores` (`usable_cores()`) shared among the worker processes, at least
    one each, as a plain torch script uses every core.

    Threads rather than more worker processes by default: on the CPU measured they were as fast
    (BENCHMARKS.md, "Threads"), and one process keeps a seeded study repeatable.
    """
    return max(1, cores // max(workers, 1))


def choose_speed(
    options: TuneOptions,
    n_fit: int,
    trials_left: int,
    step_seconds: Callable[[int], float],
    saved: Callable[[int], bool] = lambda threads: False,
) -> Speed:
    """This run's eager-or-compiled, K and threads: as given, or picked from the work and the machine
    (`use_compiled`, `choose_batch`, `choose_threads`). A speed choice only: per DESIGN.md trials
    equal, so it is no part of the study. `step_seconds(threads)` times an eager step on that many
    threads (`eager_step_seconds`); `saved(threads)` says whether the compile cache holds every
    graph of the run on that many threads (`saved_steps`); a pool that stacks (off the CPU) compiles
    graphs of its own."""
    batch = options.batch
    if batch is None:
        batch = choose_batch(options.device, trials_left, options.workers)
    threads = options.threads
    if threads is None:
        threads = choose_threads(usable_cores(), options.workers)
    from purestep.core.pool import stacks

    own_graphs = batch > 1 and stacks(options.device)
    share = worker_share(trials_left, options.workers)
    compiled = use_compiled(
        options.impl, n_fit, options.epochs, lambda: step_seconds(threads), share, options.timeout,
        (lambda: False) if own_graphs else lambda: saved(threads),
    )  # fmt: skip
    return Speed(
        compiled, batch, options.impl == "auto", options.batch is None, threads, options.threads is None
    )


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns on experimental features; the live line replaces both."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def load_data(options: TuneOptions, download: bool = True) -> Dataset:
    """The dataset on the chosen device."""
    from purestep.core.data import load_dataset

    if options.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise PurestepError(f"--device {options.device} was asked for, but no CUDA device is available")
    return load_dataset(options.dataset, options.data_dir, options.device, download=download)


class UsageError(PurestepError):
    """Options that do not fit the data or the model (a usage error: nothing was written)."""


def check_options(options: TuneOptions) -> None:
    """Refuse, before anything is written, the values the command line's options refuse: from
    Python they failed once the study was made (`epochs=0`, `threads=0`) or ran as something else
    (`impl="fast"` as eager, `batch=-4` as 1, `val_fraction=0` as the automatic fraction).

    Raises:
        UsageError: naming the field, what it takes and the value given.
    """

    def whole(value: Any, least: int, most: float = math.inf) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and least <= value <= most

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    wanted = {
        "epochs": (whole(options.epochs, 1), "an integer >= 1"),
        "n_trials": (whole(options.n_trials, 1), "an integer >= 1"),
        "seed": (whole(options.seed, 0), "an integer >= 0"),
        "workers": (whole(options.workers, 1), "an integer >= 1"),
        "threads": (options.threads is None or whole(options.threads, 1), "None (auto) or an integer >= 1"),
        "batch": (
            options.batch is None or whole(options.batch, 1, MAX_BATCH),
            f"None (auto) or 1 to {MAX_BATCH}",
        ),
        "timeout": (
            options.timeout is None or number(options.timeout) and options.timeout > 0,
            "None or seconds > 0",
        ),
        "val_fraction": (
            options.val_fraction is None or number(options.val_fraction) and 0 < options.val_fraction < 1,
            "None (auto) or between 0 and 1",
        ),
        "impl": (options.impl in ("auto", "eager", "compiled"), "'auto', 'eager' or 'compiled'"),
        "denormals": (options.denormals in ("flush", "keep"), "'flush' or 'keep'"),
        "study": (isinstance(options.study, str) and options.study != "", "a name"),
    }
    for name, (ok, takes) in wanted.items():
        if not ok:
            raise UsageError(f"TuneOptions.{name} takes {takes}; got {getattr(options, name)!r}")
    try:
        options.space  # noqa: B018 - parsed for its errors
    except (SpaceError, ValueError, TypeError, AttributeError, KeyError) as e:
        raise UsageError(f"TuneOptions.space_json is not a search space: {first_line(e)}") from None


SMALL_TRAINING_SET = 1000
"""Below this many training rows the validation split doubles (`auto_val_fraction`)."""


def auto_val_fraction(n_train: int) -> float:
    """20% of the training set held out, or 40% of a small one (under `SMALL_TRAINING_SET` rows).

    A validation split of a few dozen rows scores trials so noisily that the search picks the
    luckiest configuration, not the best; the final re-train uses every row either way.
    """
    return 0.2 if n_train >= SMALL_TRAINING_SET else 0.4


def resolve_for_data(options: TuneOptions, data: Dataset) -> TuneOptions:
    """The options with what depends on the data decided: the loss (`--loss` if it fits the
    targets, else the task's default) and the validation fraction (`auto_val_fraction` unless set).

    Raises:
        UsageError: the loss does not fit the targets (mse for labels, a classification loss for floats).
    """
    from purestep.core.losses import loss_for_targets

    try:
        loss = loss_for_targets(options.loss, data.y_train)
    except ValueError as e:
        raise UsageError(f"{e} ({data.name})") from None
    val_fraction = options.val_fraction or auto_val_fraction(len(data.y_train))
    return replace(options, loss=loss, val_fraction=val_fraction)


def _check_model(options: TuneOptions, splits: Splits) -> None:
    """Build the model of trial 0 and of each value the space gives a model argument or the MLP's
    shape (a range at its ends), and run each on two training rows through the loss: a bad
    --model, --model-arg or space value fails here, before the study opens, not as a failed trial."""
    import torch

    from purestep.core.model import ModelError, check_model_args, check_runs
    from purestep.search.objective import ConfigError
    from purestep.search.space import MLP_SETTINGS, MODEL_PREFIX, Fixed, Range

    try:
        check_model_args(options.model, options.model_args)
    except ModelError as e:
        raise UsageError(str(e)) from None
    checks = {"": TrialConfig()}
    for p in options.space.params:
        if p.key.startswith(MODEL_PREFIX) or p.key in MLP_SETTINGS:
            domain = p.domain
            values = (
                (domain.value,) if isinstance(domain, Fixed)
                else (domain.low, domain.high) if isinstance(domain, Range)
                else domain.values
            )
            checks |= {
                f"the space's {p.key} = {v!r}: ": TrialConfig.from_settings({p.key: v})
                for v in values
            }
    x, y = splits.x_fit[:2], splits.y_fit[:2]
    labels = splits.loss in ("cross_entropy", "nll")
    top = int(torch.cat([splits.y_fit, splits.y_val]).max()) if labels else None  # the highest label
    for where, config in checks.items():
        try:
            model = splits.model_for(config)
        except ConfigError as e:
            raise UsageError(f"{where}{e}") from None
        try:
            check_runs(model, x, y, splits.loss, top)
        except ModelError as e:
            raise UsageError(f"{where}--model {options.model} {e}") from None


def model_defaults(ref: str) -> dict[str, Any]:
    """The default values of the model factory's keyword arguments (the tutorial's, for `model.NAME`)."""
    from purestep.core.model import defaults, resolve_factory

    return defaults(resolve_factory(ref))


def saved_steps(options: TuneOptions, splits: Splits) -> Callable[[int], bool]:
    """`saved(threads)` for `choose_speed`: whether the compile cache (`default_compile_cache()`)
    holds the graph of every step the study's compiled trials call on `threads` (`steps_saved`)."""

    def saved(threads: int) -> bool:
        from purestep.core.step import packages_folder
        from purestep.search.objective import graph_configs, steps_saved

        sets = [(splits.x_fit, splits.y_fit)], [(splits.x_val, splits.y_val)]
        return steps_saved(splits, graph_configs(options.space, splits), *sets, packages_folder(), threads)

    return saved


def final_compiled(
    config: TrialConfig, data: Dataset, splits: Splits, options: TuneOptions, speed: Speed
) -> bool:
    """Whether the final re-train of `config` runs compiled: as the study did, except that a study
    compiled by `--impl auto` only because its graphs were saved re-trains eager unless the re-train's
    (the whole training set, the test set) are saved too, or it is long enough to repay compiling."""
    from purestep.core.step import packages_folder
    from purestep.search.objective import steps_saved

    if not (speed.compiled and speed.impl_auto):
        return speed.compiled
    sets = [(data.x_train, data.y_train)], [(data.x_train, data.y_train), (data.x_test, data.y_test)]
    return use_compiled(
        "auto", len(data.y_train), options.epochs, lambda: eager_step_seconds(splits, speed.threads, config),
        saved=lambda: steps_saved(splits, {config}, *sets, packages_folder()),
    )  # fmt: skip


@contextmanager
def _torch_set_up(threads: int, compiled: bool) -> Iterator[None]:
    """Torch on `threads` threads while trials run, as it was after (tuning from Python, a notebook
    goes on with its own count); freed memory kept and, compiled, the compile cache pointed at."""
    import torch

    from purestep.core.allocator import keep_freed_memory

    keep_freed_memory()
    was = torch.get_num_threads()
    torch.set_num_threads(threads)
    if compiled:
        from purestep.core.step import set_compile_cache

        set_compile_cache()
    try:
        yield
    finally:
        torch.set_num_threads(was)


def tune(
    options: TuneOptions,
    progress: Callable[[Progress], None] = lambda p: None,
    on_ready: Callable[[Outcome], None] = lambda o: None,
) -> tuple[Outcome, Dataset]:
    """Prepare (or resume) the study and run its trials; returns the outcome and the data.

    Raises:
        StorageURLError, IncompatibleStudy: bad usage; nothing was written.
        StorageError, DataError: the storage or the data cannot be used.
        KeyboardInterrupt / SystemExit(143): interrupted; the running trials were failed.
    """
    start = time.time()
    quiet_optuna()
    check_options(options)
    sampler = make_sampler(options.sampler, options.seed)  # a sampler that cannot be built writes nothing
    pruner = make_pruner(options.pruner, options.epochs)
    url = parse_storage(options.storage)
    space = options.space
    data = load_data(options)
    options = resolve_for_data(options, data)
    try:
        splits = options.splits(data)
    except ValueError as e:  # too few rows for the validation fraction
        raise UsageError(f"--val-fraction: {e}") from None
    _check_model(options, splits)
    storage = open_storage(url, create=True)
    with storage_errors(url):
        study, created = open_study(storage, options.study, study_spec(options, data), sampler, pruner)
        held = len(study.get_trials(deepcopy=False))
        options = replace(options, sampler_seed=sampler_seed(options.seed, held))
        if held:  # resumed: not the first run's draws again
            study.sampler = make_sampler(options.sampler, options.sampler_seed)
        tutorial_model = model_defaults(options.model) | options.model_args  # the baseline's model
        queued = ensure_baseline(study, space, options.n_trials, tutorial_model)
        left = options.n_trials - count(study.get_trials(deepcopy=False), TAKEN)
        timed = partial(eager_step_seconds, splits)
        speed = choose_speed(options, len(splits.y_fit), left, timed, saved_steps(options, splits))
        impl = "compiled" if speed.compiled else "eager"
        options = replace(options, batch=speed.batch, threads=speed.threads, impl=impl)  # workers take them
        from purestep.core.denormals import flushed

        with _torch_set_up(speed.threads, speed.compiled), flushed(options.flushes()) as flush:
            speed = replace(speed, flush=flush)
            outcome = _outcome(study, url, created, queued, speed, start)
            on_ready(outcome)
            deadline = start + options.timeout if options.timeout else None
            if options.workers == 1:
                _run_here(study, options, splits, speed.compiled, deadline, start, progress)
            else:
                _run_workers(study, options, deadline, start, progress)
        return _outcome(study, url, created, queued, speed, start), data


def study_spec(options: TuneOptions, data: Dataset) -> StudySpec:
    """The definition this run asks for, a file dataset and a model file known by their contents
    (`fingerprint`, `model_fingerprint`); built-in ones by their names."""
    from purestep.core.data import DATASETS, fingerprint

    dataset_id = None if options.dataset in DATASETS else fingerprint(data)
    return replace(options.spec(), dataset_id=dataset_id, model_id=model_fingerprint(options.model))


def _progress(
    running: int | None, finished: int, best: FrozenTrial | None, options: TuneOptions, start: float
) -> Progress:
    return Progress(
        running,
        finished,
        options.n_trials,
        best.value if best else None,
        best.number if best else None,
        time.time() - start,
        options.loss != "mse",
    )


def _run(
    study: optuna.Study,
    options: TuneOptions,
    splits: Splits,
    compiled: bool,
    deadline: float | None,
    on_trial_start: Callable[[int, int], None] = lambda number, finished: None,
    on_trial_end: Callable[[TrialEnd], None] = lambda end: None,
) -> int:
    """Run trials in this process until the study is full, with Ctrl-C and SIGTERM shielded."""
    shield = Shield()
    common = dict(
        n_trials=options.n_trials,
        deadline=deadline,
        shield=shield,
        on_trial_start=on_trial_start,
        on_trial_end=on_trial_end,
    )
    with shield.armed():
        if options.batch is not None and options.batch > 1:
            return run_trial_batches(
                study,
                options.space,
                splits,
                batch=options.batch,
                epochs=options.epochs,
                seed=options.seed,
                compiled=compiled,
                **common,
            )
        objective = make_objective(
            options.space,
            splits,
            epochs=options.epochs,
            seed=options.seed,
            compiled=compiled,
            guard=shield.hold,
        )
        return run_trials(study, objective, **common)


def _run_here(
    study: optuna.Study,
    options: TuneOptions,
    splits: Splits,
    compiled: bool,
    deadline: float | None,
    start: float,
    progress: Callable[[Progress], None],
) -> None:
    best = [best_trial(study)]

    def started(number: int, finished: int) -> None:
        progress(_progress(number, finished, best[0], options, start))

    def ended(end: TrialEnd) -> None:
        best[0] = end.best
        progress(_progress(None, end.finished, end.best, options, start))

    _run(study, options, splits, compiled, deadline, started, ended)


def worker_device(device: str, index: int, gpus: int) -> str:
    """Worker `index`'s device: `--device cuda` spreads workers over `cuda:0..gpus-1` in turn;
    any other device (`cpu`, a named `cuda:N`) is every worker's."""
    if device != "cuda" or gpus < 1:
        return device
    return f"cuda:{index % gpus}"


def sampler_seed(seed: int, held: int) -> int:
    """The seed a study's samplers draw from: `seed` for a new study; for one resumed with `held`
    trials, a 32-bit seed drawn from both, so a re-run (after Ctrl-C, or for more trials) does
    not propose the first run's points again, and the same re-run proposes the same ones."""
    if held == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed} {held}".encode()).digest()[:4], "little")


def run_worker(options: TuneOptions, index: int, deadline: float | None) -> int:
    """One worker process's share: load the data, join the study, run trials until it is full.

    The sampler is seeded with `sampler_seed + index`, so workers do not propose the same points. With
    `--device cuda` on a machine with several GPUs, worker k runs on `cuda:k % n` (`worker_device`).
    Returns how many trials it finished.
    """
    quiet_optuna()
    if options.device == "cuda":
        import torch

        options = replace(options, device=worker_device(options.device, index, torch.cuda.device_count()))
    url = parse_storage(options.storage)
    data = load_data(options, download=False)
    splits = options.splits(data)
    assert options.impl in ("eager", "compiled"), "the parent passes the impl it decided"
    compiled = options.impl == "compiled"
    assert options.threads is not None, "the parent passes the threads it decided"
    storage = open_storage(url, create=False)
    with storage_errors(url), _torch_set_up(options.threads, compiled):
        study = optuna.load_study(
            study_name=options.study,
            storage=storage,
            sampler=make_sampler(options.sampler, (options.sampler_seed + index) % 2**32),  # 32 bits
            pruner=make_pruner(options.pruner, options.epochs),
        )
        from purestep.core.denormals import flushed

        with flushed(options.flushes()):
            return _run(study, options, splits, compiled, deadline)


def _run_workers(
    study: optuna.Study,
    options: TuneOptions,
    deadline: float | None,
    start: float,
    progress: Callable[[Progress], None],
) -> None:
    """Start `options.workers` processes on the study and show its progress until they end.

    Ctrl-C or SIGTERM here is passed on to every worker (each fails its running trial and
    exits), then re-raised once they have all ended.
    """
    spec, parent = options.to_json(), str(os.getpid())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "purestep.search.worker", spec, str(k), json.dumps(deadline), parent],
            start_new_session=True,
        )
        for k in range(options.workers)
    ]
    try:
        while any(p.poll() is None for p in procs):
            _report_storage(study, options, start, progress)
            time.sleep(POLL_SECONDS)
    except BaseException as e:
        sig = signal.SIGTERM if isinstance(e, SystemExit) else signal.SIGINT
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)
        for p in procs:
            p.wait()
        raise
    _report_storage(study, options, start, progress)
    bad = [(k, p.returncode) for k, p in enumerate(procs) if p.returncode != 0]
    if not bad:
        return
    k, code = bad[0]
    if code not in SIGNALLED:  # an error of its own, printed above
        raise PurestepError(f"worker {k} stopped with exit code {code} (its error is printed above)")
    # A signal this process did not pass on (it would have raised here): sent to the worker alone.
    stopped = f"worker {k} was {SIGNALLED[code]} (exit {code}) by a signal sent to it alone"
    left = options.n_trials - count(study.get_trials(deepcopy=False), FINISHED)
    if left > 0:
        raise PurestepError(f"{stopped}; {left} trials left: run the same command again to finish the study")
    print(f"Note: {stopped}; the other workers finished the study", file=sys.stderr)


SIGNALLED = {130: "interrupted", 143: "terminated"}
"""A worker's exit codes after SIGINT and SIGTERM, and what they mean."""


def _report_storage(
    study: optuna.Study, options: TuneOptions, start: float, progress: Callable[[Progress], None]
) -> None:
    trials = study.get_trials(deepcopy=False)
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    progress(
        _progress(running[0] if running else None, count(trials, FINISHED), best_trial(study), options, start)
    )


def _outcome(
    study: optuna.Study,
    url: StorageURL,
    created: bool,
    queued: bool,
    speed: Speed,
    start: float,
) -> Outcome:
    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    config = TrialConfig.from_settings(settings_of(study_space(study), best.params)) if best else None
    return Outcome(
        study.study_name,
        url.shown,
        created,
        queued,
        speed,
        count(trials, (TrialState.COMPLETE,)),
        count(trials, (TrialState.PRUNED,)),
        count(trials, (TrialState.FAIL,)),
        count(trials, (TrialState.RUNNING,)),
        best,
        baseline_trial(trials),
        config,
        time.time() - start,
        study.direction != optuna.study.StudyDirection.MINIMIZE,
    )


def study_space(study: optuna.Study) -> Space:
    """The space a purestep study was created with."""
    spec = stored_spec(study)
    if spec is None:
        raise PurestepError(f"study {study.study_name!r} was not created by purestep tune")
    return spec.space


def final_train(outcome: Outcome, data: Dataset, options: TuneOptions, out: Path) -> dict[str, Any]:
    """Re-train the best configuration on the whole training set, test it once, save the weights;
    the tutorial's configuration (the baseline trial) is re-trained and tested beside it.

    Returns the `final` section of `best.json`; the weights go to `out/best.safetensors`.
    """
    from purestep.core.interop import save

    assert outcome.best is not None and outcome.best_config is not None
    config = outcome.best_config
    splits = options.splits(data)
    began = time.perf_counter()
    compiled = final_compiled(config, data, splits, options, outcome.speed)
    result, test = _retrain(config, data, splits, options, compiled)
    seconds = time.perf_counter() - began
    weights = out / BEST_WEIGHTS
    final = {
        **test,
        "train_images": len(data.y_train),
        "test_images": len(data.y_test),
        "epochs": options.epochs,
        "seconds": round(seconds, 3),
        "weights": weights.name,
        "impl": "compiled" if compiled else "eager",
    }
    if outcome.baseline is not None:
        tutorial = TrialConfig.from_settings(settings_of(options.space, outcome.baseline.params))
        compiled = final_compiled(tutorial, data, splits, options, outcome.speed)
        final["baseline"] = _retrain(tutorial, data, splits, options, compiled)[1]
    meta = {
        "study": outcome.study,
        "trial": outcome.best.number,
        "config": config.to_dict(),
        "dataset": options.dataset,
        "model": options.model,
        "model_args": splits.model_for(config).kwargs,
        "loss": splits.loss,
        **{k: v for k, v in test.items() if k.startswith("test_")},
    }
    save(weights, splits.model_for(config).saved(result.params, result.buffers), finite(meta))
    outcome.files.append(str(weights))
    return final


def _retrain(
    config: TrialConfig, data: Dataset, splits: Splits, options: TuneOptions, compiled: bool
) -> tuple[Any, dict[str, Any]]:
    """`config` trained on the whole training set and tested once: the result and its test metrics
    (accuracy, or R² and MSE in the targets' own units for a regression)."""
    from purestep.core.loop import evaluate, steps_for

    result = train(
        config,
        data.x_train,
        data.y_train,
        (data.x_train, data.y_train),
        splits=splits,
        epochs=options.epochs,
        seed=options.seed,
        compiled=compiled,
    )
    model = splits.model_for(config)
    _, eval_step = steps_for(model, config.optimizer_config().build_for(compiled), compiled, loss=splits.loss)
    test = evaluate(eval_step, result.params, result.buffers, data.x_test, data.y_test, EVAL_BATCH_SIZE)
    last = result.history[-1]
    if test.accuracy is not None:
        return result, {
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "train_accuracy": last.eval_accuracy,
        }
    return result, {
        "test_r2": test.r2,
        "test_mse": data.original_mse(test.mse) if test.mse is not None else None,
        "test_loss": test.loss,
        "train_r2": last.eval_r2,
    }


def finish(outcome: Outcome, data: Dataset, options: TuneOptions, out: Path, final: bool) -> dict[str, Any]:
    """Re-train the best configuration (unless `final` is False), then write and return `best.json`.

    Raises:
        PurestepError: the study has no completed trial (nothing is written).
    """
    if outcome.best is None:
        why = f"{outcome.pruned} pruned, {outcome.failed} failed"
        raise PurestepError(f"study {outcome.study!r} has no completed trial ({why})")
    options = resolve_for_data(options, data)
    if final:
        from purestep.core.denormals import flushed

        with _torch_set_up(outcome.speed.threads, False), flushed(outcome.speed.flush):
            outcome.final = final_train(outcome, data, options, out)
    else:
        outcome.final = _kept_final(outcome, out)
    content = finite(best_json(outcome, options))
    outcome.files.insert(0, str(write_json(out / BEST_JSON, content)))
    return content


def _kept_final(outcome: Outcome, out: Path) -> dict[str, Any] | None:
    """For a run without the final re-train: the `final` section of the `best.json` in `out` when it
    is of this study's best trial still (its number, params and value), so `best.safetensors`
    stays described; else None, and a `best.safetensors` the study wrote for an earlier best
    trial is removed, as no weights beside `"final": null` mean none were trained for it."""
    assert outcome.best is not None
    before = _written(out / BEST_JSON)
    if not before or before.get("study") != outcome.study:
        return None  # none, or not this study's (`check_out` refused another's): nothing to keep
    best = outcome.best
    same = (before.get("trial"), before.get("params"), before.get("value")) == (
        best.number,
        best.params,
        best.value,
    )
    if same and isinstance(before.get("final"), dict) and (out / BEST_WEIGHTS).exists():
        return before["final"]
    (out / BEST_WEIGHTS).unlink(missing_ok=True)
    return None


def best_json(outcome: Outcome, options: TuneOptions) -> dict[str, Any]:
    """The content of `best.json`."""
    assert outcome.best is not None and outcome.best_config is not None
    base = outcome.baseline
    return {
        "study": outcome.study,
        "storage": outcome.storage,
        "dataset": options.dataset,
        "model": options.model,
        "model_args": options.model_args,
        "loss": options.loss,
        "metric": "validation MSE" if options.loss == "mse" else "validation accuracy",
        "trial": outcome.best.number,
        "value": outcome.best.value,
        "params": outcome.best.params,
        "config": outcome.best_config.to_dict(),
        "baseline": None
        if base is None
        else {"trial": base.number, "value": base.value, "state": base.state.name},
        "trials": {"complete": outcome.complete, "pruned": outcome.pruned, "failed": outcome.failed},
        **outcome.speed.to_json(),
        "final": outcome.final,
    }


def default_out(study: str) -> Path:
    """Where a study's files go by default: a directory named after it. A name that is not all
    ASCII letters, digits and `._-` is made so and given 8 hex digits of its sha256, so names that
    read alike (`exp 1`, `exp/1`; `日本語`, `中文`) keep apart: `exp_1-24dc4c5d`, `study-77710aed`."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", study).strip("._-") or "study"
    if readable != study:
        readable += "-" + hashlib.sha256(study.encode()).hexdigest()[:8]
    return Path(readable)


def check_out(out: Path, study: str, storage: str | None = None) -> None:
    """Refuse a folder whose `best.json` is another study's (or not one `tune` wrote), before any
    trial runs: the end of this run would write over it. A study is its name and, where `best.json`
    records it (as `StorageURL.shown` gives it), its storage: the same name in another storage is
    another study.

    Raises:
        UsageError: the folder holds another study's results.
    """
    owner = _written(out / BEST_JSON)
    if owner is None:
        return
    held = owner.get("study")
    if held != study:
        whose = f"study {held!r}'s" if isinstance(held, str) else "no study's"
        raise UsageError(
            f"{out / 'best.json'} is {whose}, not {study!r}'s: this run would write over it; "
            "choose another --out or --study"
        )
    kept = owner.get("storage")
    if storage is not None and isinstance(kept, str) and not same_storage(kept, storage):
        raise UsageError(
            f"{out / 'best.json'} is from study {study!r} in {kept}, not in {storage}: this run would "
            "write over it; choose another --out or --study"
        )


def same_storage(a: str, b: str) -> bool:
    """Whether two storage URLs (as shown) name one storage: equal, or files of one kind at one path."""
    if a == b:
        return True
    from purestep.search.storage import StorageURLError

    try:
        left, right = parse_storage(a), parse_storage(b)
    except StorageURLError:
        return False
    if left.path is None or right.path is None or (left.kind, left.dialect) != (right.kind, right.dialect):
        return False
    return left.path.expanduser().resolve() == right.path.expanduser().resolve()


def _written(path: Path) -> dict[str, Any] | None:
    """A `best.json` as written (an object: `{}` when it is not one), or None when there is none."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}
