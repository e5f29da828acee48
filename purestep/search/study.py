"""Studies: what defines one (so a re-run resumes only a compatible study), samplers, pruners,
the tutorial's baseline trial, and counting trials.

A study's definition (dataset, epochs, seed, validation fraction, search space, model and loss) is kept
in its user attributes under `purestep`; a re-run with another definition is refused before
anything is written. Samplers and pruners are not part of it: a study may change them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from purestep.core.errors import PurestepError
from purestep.search.space import Space, difference, space_from_json, tutorial_params

SAMPLERS = ("tpe", "random", "cmaes", "gp")
PRUNERS = ("median", "hyperband", "halving", "none")
ATTR = "purestep"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
"""A trial that ran to a verdict; `--n-trials N` counts these. A failed trial is not one."""
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class IncompatibleStudy(PurestepError):
    """A study that exists with another definition (a usage error: pick another --study)."""


class NoStudy(PurestepError):
    """No study of that name in the storage."""


@dataclass(frozen=True)
class StudySpec:
    """What makes two runs' trial values comparable, and so what a resumed study must keep."""

    dataset: str
    epochs: int
    seed: int
    val_fraction: float
    space: Space
    model: str = "mlp"
    model_args: Mapping[str, Any] = field(default_factory=dict)
    loss: str = "cross_entropy"
    dataset_id: str | None = None
    """A file dataset's content fingerprint (`data.fingerprint`); None for a built-in one, known by
    its name, and in studies made before fingerprints were kept (then the path is compared)."""
    model_id: str | None = None
    """A model file's fingerprint (`model_fingerprint`); None for a built-in model, as `dataset_id`."""

    @property
    def direction(self) -> str:
        """Validation accuracy is maximised; a regression's validation MSE is minimised."""
        return "minimize" if self.loss == "mse" else "maximize"

    def to_attr(self) -> dict[str, object]:
        """The JSON-ready form stored in the study's user attributes."""
        fields = asdict(self)
        fields["space"] = json.loads(self.space.to_json())
        fields["model_args"] = json.loads(json.dumps(dict(self.model_args)))
        return fields

    @classmethod
    def from_attr(cls, attr: dict[str, object]) -> StudySpec:
        """Read a stored definition back."""
        space = space_from_json(json.dumps(attr["space"]))
        return cls(
            str(attr["dataset"]),
            int(attr["epochs"]),  # type: ignore[arg-type]
            int(attr["seed"]),  # type: ignore[arg-type]
            float(attr["val_fraction"]),  # type: ignore[arg-type]
            space,
            str(attr.get("model", "mlp")),
            dict(attr.get("model_args", {})),  # type: ignore[arg-type]
            str(attr.get("loss", "cross_entropy")),
            _optional(attr.get("dataset_id")),
            _optional(attr.get("model_id")),
        )

    def mismatch(self, other: StudySpec) -> str | None:
        """How `other` differs from this definition, in one line, or None.

        A file dataset or model file is known by its fingerprint when both sides have one (the
        same contents at another path resume, other contents at the same path do not); by its
        name otherwise (a built-in one, or a study made before fingerprints were kept)."""
        for name in ("dataset", "epochs", "seed", "val_fraction", "model", "loss"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if name in ("dataset", "model"):
                was, now = getattr(self, f"{name}_id"), getattr(other, f"{name}_id")
                if was is not None and now is not None:
                    if was == now:
                        continue
                    how = f"is not the study's {mine}"
                    how = "has changed since the study was made" if mine == theirs else how
                    what = "data sha256" if name == "dataset" else "source file sha256"
                    hashes = f"{short_id(was)} in the study, {short_id(now)} here"
                    return f"--{name} {theirs} {how} ({what} {hashes})"
            if mine != theirs:
                option = "--" + name.replace("_", "-")
                return f"{option} is {mine} in the study, {theirs} here"
        if json.dumps(dict(self.model_args), sort_keys=True) != json.dumps(
            dict(other.model_args), sort_keys=True
        ):
            return f"--model-arg is {dict(self.model_args)} in the study, {dict(other.model_args)} here"
        diff = difference(self.space, other.space)
        return f"the search space differs: {diff}" if diff else None


def _optional(value: object) -> str | None:
    return None if value is None else str(value)


def short_id(fingerprint: str) -> str:
    """A fingerprint as a message shows it: `sha256:` dropped, the digest cut to 12 hex digits."""
    digest, sep, rest = fingerprint.removeprefix("sha256:").partition(":")
    return digest[:12] + sep + rest


def model_fingerprint(ref: str) -> str | None:
    """`--model FILE.py:factory`'s identity: the sha256 of the file's bytes and the factory's name
    (`sha256:HEX:factory`), whatever path reached the file; None for a built-in model (`mlp`, `cnn`)."""
    from pathlib import Path

    from purestep.core.model import ZOO

    if ref in ZOO:
        return None
    path, _, factory = ref.rpartition(":")
    return f"sha256:{hashlib.sha256(Path(path).read_bytes()).hexdigest()}:{factory}"


def check_sampler(name: str) -> None:
    """Fail early (before any storage is touched) when a sampler's dependency is missing."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise PurestepError("--sampler cmaes needs the cmaes package: pip install cmaes")
    if name == "gp" and importlib.util.find_spec("scipy") is None:
        raise PurestepError("--sampler gp needs scipy: pip install scipy")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler. TPE groups conditional parameters and, with workers, lies about running trials.

    CMA-ES and GP model only the parameters every trial has; the conditional ones are drawn
    by their seeded random fallback.
    """
    check_sampler(name)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        fallback = optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.CmaEsSampler(
            seed=seed, independent_sampler=fallback, warn_independent_sampling=False
        )
    fallback = optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GPSampler(seed=seed, independent_sampler=fallback, warn_independent_sampling=False)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """A pruner whose resource is the epoch (steps 1..epochs).

    median: after 5 finished trials, stop a trial below the median of the others at the same
    epoch, from a third of the way in (SGD starts slowly: its first epochs say little about its
    last). hyperband and halving: brackets from 1 epoch up.
    """
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 3))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")


def study_names(storage: BaseStorage) -> list[str]:
    """Names of the studies in a storage."""
    return [s.study_name for s in storage.get_all_studies()]


def stored_spec(study: optuna.Study) -> StudySpec | None:
    """The definition a study was created with, or None for a study purestep did not create."""
    attr = study.user_attrs.get(ATTR)
    return StudySpec.from_attr(attr) if isinstance(attr, dict) else None


def load_existing(
    storage: BaseStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Load a study that must exist.

    Raises:
        NoStudy: there is none of that name; the message lists the ones there are.
    """
    names = study_names(storage)
    if name not in names:
        there = ", ".join(names) if names else "none"
        raise NoStudy(f"no study named {name!r} in this storage (studies there: {there})")
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def _define(study: optuna.Study, spec: StudySpec) -> None:
    """Write purestep's definition into `study` (with the name of its metric)."""
    study.set_metric_names(["val_mse" if spec.loss == "mse" else "val_accuracy"])
    study.set_user_attr(ATTR, spec.to_attr())


def open_study(
    storage: BaseStorage,
    name: str,
    spec: StudySpec,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> tuple[optuna.Study, bool]:
    """Resume the study `name` if it exists with the same definition, else create it.

    Optuna creates a study and purestep then writes its definition: two writes. A worker that
    finds the study in between (workers started at once) writes the same definition itself
    rather than waiting on a clock for the other's, then reads back what the study holds, so a
    definition that differs is refused. Returns the study and whether it was created. Nothing
    is written unless it is created or empty.

    Raises:
        IncompatibleStudy: the study exists with another definition, or was not made by purestep.
    """
    if name in study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        if stored_spec(study) is None:
            # Trials first, then the attributes: a purestep worker writes the definition before any
            # trial, so trials seen here mean a definition in the read after them, unless the study
            # is not purestep's (read the other way round, another worker's define and first trial
            # landing between the two reads looked like a foreign study).
            has_trials = bool(study.get_trials(deepcopy=False))
            attrs = study.user_attrs
            if ATTR not in attrs:
                directions = [d.name.lower() for d in study.directions]  # several: multi-objective
                if has_trials or attrs or directions != [spec.direction]:
                    raise IncompatibleStudy(
                        f"study {name!r} was not created by purestep tune; choose another --study"
                    )
                _define(study, spec)
        stored = stored_spec(study)
        problem = stored.mismatch(spec) if stored is not None else "its definition is unreadable"
        if problem:
            raise IncompatibleStudy(
                f"study {name!r} cannot be resumed with these options: {problem}; "
                "re-run with the study's options or choose another --study"
            )
        return study, False
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=spec.direction,
        load_if_exists=True,
    )
    _define(study, spec)
    return study, True


def ensure_baseline(
    study: optuna.Study, space: Space, n_trials: int, model_defaults: Mapping[str, Any] | None = None
) -> bool:
    """Queue the tutorial's configuration unless the study has it (finished, running or queued).

    It runs first in a new study, so every study shows what tuning gained over the tutorial; the
    model's arguments take their defaults (`model_defaults`). Returns False when the space does
    not contain the tutorial's configuration.
    """
    params = tutorial_params(space, model_defaults)
    if params is None:
        return False
    trials = study.get_trials(deepcopy=False)
    live = (*TAKEN, TrialState.WAITING)
    if any(t.user_attrs.get("baseline") and t.state in live for t in trials):
        return True
    if sum(t.state in TAKEN for t in trials) < n_trials:
        study.enqueue_trial(params, user_attrs={"baseline": True})
    return True


def count(trials: Sequence[FrozenTrial], states: Sequence[TrialState]) -> int:
    """How many of `trials` are in `states`."""
    return sum(t.state in states for t in trials)


def baseline_trial(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The finished tutorial trial, if any."""
    return next((t for t in trials if t.user_attrs.get("baseline") and t.state in FINISHED), None)


def best_of(trials: Sequence[FrozenTrial], minimize: bool = False) -> FrozenTrial | None:
    """The completed trial with the best value (highest, or lowest when `minimize`; the earliest
    on a tie), or None."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    sign = -1 if minimize else 1
    return max(complete, key=lambda t: (sign * t.value, -t.number)) if complete else None


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's best trial, as `best_of` in the study's direction."""
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    return best_of(study.get_trials(deepcopy=False), minimize)
