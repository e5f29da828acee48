"""Search spaces: the default one, centred on the tutorial, and TOML files that change it.

A space is a list of parameters. Each has an Optuna name (its TOML table), the training
setting it sets (`key`, default: the name), a domain (`value`, `choices`, or `low`/`high`
with `log`, `step` and `zero`) and an optional condition on other parameters (`when`).
A `--space FILE` is merged over the default table by table, so a file can fix a value,
narrow a range or add a parameter in a few lines. Nothing here imports optuna or torch:
sampling goes through a `suggest` callable, so one walk serves an Optuna trial, a stored
trial's params and the tutorial's configuration.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from purestep.core.errors import PurestepError
from purestep.core.settings import KIND_NAMES as _KIND_NAMES
from purestep.core.settings import OPTIMIZER_SETTINGS, Scalar, Setting
from purestep.core.settings import is_kind as _is_kind
from purestep.core.settings import show as _show

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class SpaceError(PurestepError):
    """A space definition that cannot be used; the message names the file, line and key."""


SETTINGS: dict[str, Setting] = {
    **OPTIMIZER_SETTINGS,
    "batch_size": Setting(int, 64, low=1, high=65536),
    "hidden": Setting(int, 512, low=1, high=65536),
    "layers": Setting(int, 2, low=0, high=16),
    "shuffle": Setting(bool, False),
    "schedule": Setting(str, "constant", options=("constant", "cosine")),
}
"""Every setting a space may set. Settings no parameter sets keep the tutorial's value."""

MLP_SETTINGS = ("hidden", "layers")
"""Settings only the MLP (`--model mlp`) reads: its hidden layers' width and their number."""

TUTORIAL: dict[str, Scalar] = {key: s.tutorial for key, s in SETTINGS.items()}

MODEL_PREFIX = "model."
"""A key `model.NAME` sets the model factory's keyword argument NAME (e.g. `model.dropout`); its
kind is its values' own, and the tutorial's value is the factory's default."""

DEFAULT_SPACE_TOML = """\
# purestep's default search space. Table = Optuna parameter; `key` = the setting it sets.
# A --space file is merged over this one, table by table.

[optimizer]
choices = ["sgd", "adam", "rmsprop"]

[sgd_lr]
key = "lr"
low = 1e-4
high = 1.0
log = true
when = { optimizer = "sgd" }

[adam_lr]
key = "lr"
low = 1e-5
high = 1e-1
log = true
when = { optimizer = "adam" }

[rmsprop_lr]
key = "lr"
low = 1e-5
high = 1e-1
log = true
when = { optimizer = "rmsprop" }

[centered]
choices = [false, true]
when = { optimizer = "rmsprop" }

[momentum]
low = 0.0
high = 0.99
when = { optimizer = "sgd" }

[nesterov]
choices = [false, true]
when = { optimizer = "sgd", momentum = { gt = 0 } }

[weight_decay]
low = 1e-6
high = 1e-2
log = true
zero = true

[batch_size]
choices = [32, 64, 128, 256]

[schedule]
choices = ["constant", "cosine"]
"""

_DOMAIN_FIELDS = {
    "value": "fixed",
    "choices": "choices",
    "low": "range",
    "high": "range",
    "log": "range",
    "step": "range",
    "zero": "range",
}
_FIELDS = ("key", "value", "choices", "low", "high", "log", "step", "zero", "when")
_BOUNDS = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Fixed:
    """One value, not searched: recorded in the trial's configuration, not in its params."""

    value: Scalar


@dataclass(frozen=True)
class Choices:
    """A categorical parameter."""

    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range:
    """A numeric range; `zero` adds exactly 0 through a switch parameter `<name>_zero`."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = None
    zero: bool = False
    integer: bool = False

    def contains(self, value: Scalar) -> bool:
        """Whether a draw from this range (or the zero switch) can be `value`."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.zero and value == 0:
            return True
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return abs(k - round(k)) < 1e-9


Domain = Fixed | Choices | Range


@dataclass(frozen=True)
class Condition:
    """`when = { parent = ... }`: the parent is active and its value is in `values` or within `bounds`."""

    parent: str
    values: tuple[Scalar, ...] | None = None
    bounds: tuple[tuple[str, float], ...] = ()

    def holds(self, active: Mapping[str, Scalar]) -> bool:
        """True when the parent is active with a value this condition accepts."""
        if self.parent not in active:
            return False
        value = active[self.parent]
        if self.values is not None:
            return any(_same(value, v) for v in self.values)
        return all(_BOUNDS[op](value, bound) for op, bound in self.bounds)


@dataclass(frozen=True)
class Param:
    """One parameter of a space."""

    name: str
    key: str
    domain: Domain
    when: tuple[Condition, ...] = ()

    @property
    def switch(self) -> str | None:
        """The Optuna name of the zero switch, if the domain has one."""
        return f"{self.name}_zero" if isinstance(self.domain, Range) and self.domain.zero else None


@dataclass(frozen=True)
class Space:
    """Parameters in sampling order (every parent before its children), with their tables."""

    params: tuple[Param, ...]
    tables: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]

    def to_tables(self) -> dict[str, dict[str, Any]]:
        """The definition as plain data (TOML tables), in definition order."""
        return {name: dict(fields) for name, fields in self.tables}

    def to_json(self) -> str:
        """The definition as JSON, in definition order: what a study stores and resumes against."""
        return json.dumps(self.to_tables())

    def to_toml(self) -> str:
        """The definition as a TOML file that `parse_space` reads back to an equal space."""
        blocks = []
        for name, fields in self.tables:
            lines = [f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in fields]
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks) + "\n"


@dataclass(frozen=True)
class Sample:
    """One walk through a space: the active parameters' values and the settings they give."""

    values: dict[str, Scalar]
    settings: dict[str, Scalar]


Suggest = Callable[[str, "Choices | Range"], Scalar]


def sample(space: Space, suggest: Suggest) -> Sample:
    """Walk `space` in order, drawing each active parameter through `suggest(name, domain)`.

    A parameter is active when all its conditions hold on the parameters drawn before it.
    A `zero` range first draws its switch `<name>_zero` from `(False, True)`.
    """
    values: dict[str, Scalar] = {}
    for p in space.params:
        if not all(c.holds(values) for c in p.when):
            continue
        domain = p.domain
        if isinstance(domain, Fixed):
            values[p.name] = domain.value
        elif p.switch is not None and suggest(p.switch, Choices((False, True))):
            values[p.name] = 0.0
        else:
            values[p.name] = suggest(p.name, domain)
    settings = dict(TUTORIAL)
    for p in space.params:
        if p.name in values:
            settings[p.key] = values[p.name]
    return Sample(values, settings)


class _Outside(Exception):
    pass


def tutorial_params(
    space: Space, model_defaults: Mapping[str, Scalar] | None = None
) -> dict[str, Scalar] | None:
    """The Optuna params that give exactly the tutorial's configuration, or None if the space lacks it.

    A model argument's tutorial value is the model factory's default (`model_defaults`, by
    argument name); one without a default has none, and the space then lacks the tutorial.
    """
    params: dict[str, Scalar] = {}
    by_name = {p.name: p for p in space.params}
    tutorial = dict(TUTORIAL)
    for p in space.params:
        arg = p.key.removeprefix(MODEL_PREFIX)
        if p.key.startswith(MODEL_PREFIX) and model_defaults is not None and arg in model_defaults:
            tutorial[p.key] = model_defaults[arg]

    def suggest(name: str, domain: Choices | Range) -> Scalar:
        if name not in by_name:  # a zero switch: on exactly when the tutorial's value is 0
            params[name] = tutorial[by_name[name.removesuffix("_zero")].key] == 0
            return params[name]
        if by_name[name].key not in tutorial:
            raise _Outside
        value = tutorial[by_name[name].key]
        inside = domain.contains(value) if isinstance(domain, Range) else _member(value, domain.values)
        if not inside:
            raise _Outside
        params[name] = value
        return value

    try:
        drawn = sample(space, suggest)
    except _Outside:
        return None
    if any(not _same(drawn.settings.get(k), v) for k, v in tutorial.items() if k in drawn.settings):
        return None
    return params


def settings_of(space: Space, params: Mapping[str, Scalar]) -> dict[str, Scalar]:
    """The settings a stored trial's Optuna `params` give under `space`."""
    return sample(space, lambda name, domain: params[name]).settings


# ---- parsing -----------------------------------------------------------------------------------


def parse_space(text: str, source: str = "space file", base: Space | None = None) -> Space:
    """Parse a TOML space definition, merged over `base` (the default space unless given).

    Raises:
        SpaceError: invalid TOML or an invalid definition; the message starts with
            `source:line:` and names the parameter and field.
    """
    tables = _read_toml(text, source)
    where = _Locator(source, text)
    base_tables = (base if base is not None else default_space()).to_tables()
    merged, origin = _merge(base_tables, tables, where)
    return _build(merged, origin)


def load_space(path: str | Path | None, model: str = "mlp", task: str = "classification") -> Space:
    """The default space of `model` for `task`, with the TOML file at `path` merged over it when given."""
    base = default_space(model, task)
    if path is None:
        return base
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"cannot read space file {path}: {e}") from None
    space = parse_space(text, str(path), base)
    for p in space.params:  # else drawn, stored and reported, and no trial would differ for it
        if p.key in MLP_SETTINGS and model != "mlp":
            raise SpaceError(
                f"{path}: [{p.name}] sets the MLP's {p.key}, which --model {model} does not take; "
                f"search its own arguments as key = \"{MODEL_PREFIX}NAME\""
            )
    return space


def holding(space: Space, model_args: Mapping[str, Any]) -> Space:
    """`space` with each `model.NAME` parameter whose NAME a fixed `--model-arg` sets held at that
    value: what the command line fixes, trials train, the baseline takes and `best.json` reports.

    Raises:
        SpaceError: a value the parameter's setting does not take (`[name] value: ...`).
    """
    tables = space.to_tables()
    held = {}
    for name, table in tables.items():
        key = str(table.get("key", name))
        if key.startswith(MODEL_PREFIX) and key.removeprefix(MODEL_PREFIX) in model_args:
            held[name] = {"value": model_args[key.removeprefix(MODEL_PREFIX)]}
    if not held:
        return space
    merged, origin = _merge(tables, held, _Locator("", ""))  # no file: the message names no place
    return _build(merged, origin)


MODEL_SPACES_TOML = {
    "cnn": """
# The CNN's own arguments (zoo model `cnn`); its defaults are the tutorial trial's.
[dropout]
key = "model.dropout"
low = 0.0
high = 0.6

[width]
key = "model.width"
choices = [16, 32, 64]
""",
}
"""What the default space adds for a zoo model: its own keyword arguments."""

REGRESSION_MLP_TOML = """
# A regression's MLP may be linear: 0 hidden layers is linear regression, the strong baseline on
# small tabular data, and the depth decides how far the network can overfit it.
[layers]
choices = [0, 1, 2]
"""
"""What the default space adds for the MLP on a regression task: its depth."""

_DEFAULT: dict[tuple[str, str], Space] = {}


def default_space(model: str = "mlp", task: str = "classification") -> Space:
    """The default space, plus the model's own arguments for a zoo model that has some, plus the
    MLP's depth for a regression (`task`); parsed once each."""
    if (model, task) not in _DEFAULT:
        text = DEFAULT_SPACE_TOML + MODEL_SPACES_TOML.get(model, "")
        if model == "mlp" and task == "regression":
            text += REGRESSION_MLP_TOML
        tables = _read_toml(text, "default space")
        where = _Locator("default space", text)
        built = _build(tables, {(n, f): where.at(n, f) for n, t in tables.items() for f in t})
        _DEFAULT[model, task] = built
    return _DEFAULT[model, task]


def space_from_json(text: str) -> Space:
    """The space `Space.to_json` stored (the definition is validated again)."""
    tables = json.loads(text)
    return _build(tables, {(n, f): "stored space" for n, t in tables.items() for f in t})


def difference(stored: Space, given: Space) -> str | None:
    """One line on how `given` differs from `stored`, or None when they are the same definition.

    A value written as another kind is a change (16 is not 16.0, true is not 1): it can turn a
    parameter's draws from integers to floats, which a study cannot resume.
    """
    a, b = stored.to_tables(), given.to_tables()
    for name in list(a) + [n for n in b if n not in a]:
        if name not in b:
            return f"[{name}] is in the study's space but not in this one"
        if name not in a:
            return f"[{name}] is in this space but not in the study's"
        if _canonical(a[name]) != _canonical(b[name]):
            fields = sorted(set(a[name]) | set(b[name]))
            changed = next(f for f in fields if _canonical(a[name].get(f)) != _canonical(b[name].get(f)))
            old, new = a[name].get(changed, "(unset)"), b[name].get(changed, "(unset)")
            return f"[{name}] {changed} is {_show(old)} in the study, {_show(new)} here"
    return None


def _read_toml(text: str, source: str) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpaceError(f"{source}: invalid TOML: {e}") from None
    where = _Locator(source, text)
    for name, table in data.items():
        if not isinstance(table, dict):
            raise SpaceError(
                f"{where.at(name, None)}: {name}: expected a table [{name}] with value, choices or low/high"
            )
    return data


class _Locator:
    """Line numbers of `[table]` headers and `field =` lines, for error messages."""

    _HEADER = re.compile(r"\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    _FIELD = re.compile(r"\s*([A-Za-z0-9_\-\"']+(?:\s*\.\s*[A-Za-z0-9_\-\"']+)*)\s*=")

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.lines: dict[tuple[str | None, str | None], int] = {}
        table: str | None = None
        sub: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                parts = [p.strip().strip("\"'") for p in header.group(1).split(".")]
                table, sub = parts[0], (parts[1] if len(parts) > 1 else None)
                self.lines.setdefault((table, sub), number)
                continue
            field = self._FIELD.match(line)
            if field:
                parts = [p.strip().strip("\"'") for p in field.group(1).split(".")]
                if table is None:
                    self.lines.setdefault((parts[0], None), number)
                    if len(parts) > 1:
                        self.lines.setdefault((parts[0], parts[1]), number)
                else:
                    self.lines.setdefault((table, sub or parts[0]), number)

    def at(self, table: str, field: str | None) -> str:
        """`source:line` of the field (or of the table when the field is not written there)."""
        line = self.lines.get((table, field)) or self.lines.get((table, None))
        return f"{self.source}:{line}" if line else self.source


def _merge(
    base: dict[str, dict[str, Any]], override: dict[str, dict[str, Any]], where: _Locator
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str | None], str]]:
    """Tables of `override` over `base`; a domain of another kind replaces the base's domain."""
    merged = {name: dict(table) for name, table in base.items()}
    origin: dict[tuple[str, str | None], str] = {}
    for name, table in override.items():
        origin[(name, None)] = where.at(name, None)
        current = merged.setdefault(name, {})
        kinds = {_DOMAIN_FIELDS[f] for f in table if f in _DOMAIN_FIELDS}
        old_kinds = {_DOMAIN_FIELDS[f] for f in current if f in _DOMAIN_FIELDS}
        if kinds and kinds != old_kinds:
            for f in [f for f in current if f in _DOMAIN_FIELDS]:
                del current[f]
        for f, v in table.items():
            current[f] = v
            origin[(name, f)] = where.at(name, f)
    return merged, origin


def _build(tables: dict[str, dict[str, Any]], origin: dict[tuple[str, str | None], str]) -> Space:
    """Validate plain tables into a `Space`, or raise `SpaceError` naming where."""

    def fail(name: str, field: str | None, message: str) -> SpaceError:
        place = origin.get((name, field)) or origin.get((name, None))
        place = "default space: " if place is None else f"{place}: " if place else ""
        label = f"[{name}] {field}" if field else f"[{name}]"
        return SpaceError(f"{place}{label}: {message}")

    params: dict[str, Param] = {}
    for name, table in tables.items():
        params[name] = _param(name, table, fail)
    for p in params.values():
        for c in p.when:
            _check_condition(p, c, params, fail)
    _check_switch_names(params, fail)
    _check_shared_keys(params, fail)
    ordered = _order(params, fail)
    canonical = tuple(
        (name, tuple((f, _plain(table[f])) for f in _FIELDS if f in table)) for name, table in tables.items()
    )
    return Space(tuple(ordered), canonical)


def _param(name: str, table: dict[str, Any], fail: Callable[..., SpaceError]) -> Param:
    if not _NAME.match(name):
        raise fail(name, None, "a parameter name is a letter followed by letters, digits or _")
    for f in table:
        if f not in _FIELDS:
            raise fail(name, f, f"unknown field; a parameter has {', '.join(_FIELDS)}")
    key = table.get("key", name)
    setting = setting_of(key, table)
    if setting is None:
        field = "key" if "key" in table else None
        settings = ", ".join([*SETTINGS, f"{MODEL_PREFIX}NAME"])
        raise fail(name, field, f"unknown setting {_show(key)}; settings are {settings}")
    kinds = {_DOMAIN_FIELDS[f] for f in table if f in _DOMAIN_FIELDS}
    if len(kinds) != 1:
        detail = "none given" if not kinds else f"got {' and '.join(sorted(kinds))}"
        raise fail(name, None, f"give exactly one of value, choices, or low/high ({detail})")
    (kind,) = kinds
    if kind == "fixed":
        domain: Domain = Fixed(_value(name, "value", table["value"], setting, fail))
    elif kind == "choices":
        domain = _choices(name, table["choices"], setting, fail)
    else:
        domain = _range(name, table, setting, fail)
    when = _conditions(name, table.get("when", {}), fail)
    return Param(name, key, domain, when)


def setting_of(key: Any, table: Mapping[str, Any]) -> Setting | None:
    """The setting `key` names: one of `SETTINGS`, or a model argument `model.NAME` whose kind is
    that of the values `table` gives it (int, float, bool or str); None if it is neither."""
    if not isinstance(key, str):
        return None
    if key in SETTINGS:
        return SETTINGS[key]
    if not key.startswith(MODEL_PREFIX) or not key.removeprefix(MODEL_PREFIX).isidentifier():
        return None
    values = [table[f] for f in ("value", "low", "high") if f in table]
    values += table.get("choices", []) if isinstance(table.get("choices"), list) else []
    for kind in (bool, int, str):
        if values and all(_is_kind(v, kind) for v in values):
            return Setting(kind, None)  # type: ignore[arg-type]
    return Setting(float, None)  # type: ignore[arg-type]


def _domain_table(domain: Domain) -> dict[str, Any]:
    """A parsed domain as the fields of its table (what `setting_of` reads a kind from)."""
    if isinstance(domain, Fixed):
        return {"value": domain.value}
    if isinstance(domain, Choices):
        return {"choices": list(domain.values)}
    return {"low": domain.low, "high": domain.high}


def model_args(settings: Mapping[str, Scalar]) -> dict[str, Scalar]:
    """The model arguments among a sample's settings, by argument name."""
    return {k.removeprefix(MODEL_PREFIX): v for k, v in settings.items() if k.startswith(MODEL_PREFIX)}


def config_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's stored config by the keys a space names: its `model_args` table also as `model.NAME`."""
    return {**config, **{MODEL_PREFIX + k: v for k, v in config.get("model_args", {}).items()}}


def _value(name: str, field: str, value: Any, setting: Setting, fail: Callable[..., SpaceError]) -> Scalar:
    if setting.kind is float and _is_kind(value, int):
        value = float(value)
    problem = setting.problem(value)
    if problem:
        raise fail(name, field, problem)
    return value


def _choices(name: str, values: Any, setting: Setting, fail: Callable[..., SpaceError]) -> Choices:
    if not isinstance(values, list) or not values:
        raise fail(name, "choices", "must be a non-empty array, e.g. choices = [32, 64]")
    out = tuple(_value(name, "choices", v, setting, fail) for v in values)
    if len({(type(v), v) for v in out}) != len(out):
        raise fail(name, "choices", f"has a repeated value: {_show(list(out))}")
    return Choices(out)


def _range(name: str, table: dict[str, Any], setting: Setting, fail: Callable[..., SpaceError]) -> Range:
    if setting.kind not in (int, float):
        raise fail(name, "low", f"{setting.kind.__name__} settings take value or choices, not a range")
    for f in ("low", "high"):
        if f not in table:
            raise fail(name, None, f"a range needs both low and high ({f} is missing)")
    low = _value(name, "low", table["low"], setting, fail)
    high = _value(name, "high", table["high"], setting, fail)
    if not low < high:
        raise fail(name, "high", f"must be greater than low ({_show(low)}), got {_show(high)}")
    flags = {}
    for f in ("log", "zero"):
        flags[f] = table.get(f, False)
        if not isinstance(flags[f], bool):
            raise fail(name, f, f"must be true or false, got {_show(flags[f])}")
    if flags["log"] and low <= 0:
        raise fail(name, "low", f"a log range needs low > 0, got {_show(low)}")
    step = table.get("step")
    if step is not None:
        step = _step(name, step, low, high, setting, fail)
        if flags["log"]:
            raise fail(name, "step", "a log range cannot have a step")
    if flags["zero"]:
        if setting.kind is not float or setting.problem(0.0):
            raise fail(name, "zero", f"0 is not a valid value of {table.get('key', name)}")
        if low <= 0:
            raise fail(name, "zero", f"adds 0 below the range, so low must be > 0, got {_show(low)}")
    return Range(low, high, flags["log"], step, flags["zero"], setting.kind is int)


def _step(
    name: str, step: Any, low: float, high: float, setting: Setting, fail: Callable[..., SpaceError]
) -> int | float:
    numeric = _is_kind(step, int) or (setting.kind is float and _is_kind(step, float))
    if not numeric or not math.isfinite(step) or step <= 0:
        raise fail(name, "step", f"must be {_KIND_NAMES[setting.kind]} > 0, got {_show(step)}")
    k = (high - low) / step
    if abs(k - round(k)) > 1e-9:
        raise fail(name, "step", f"high - low ({_show(high - low)}) must be a multiple of it ({_show(step)})")
    return float(step) if setting.kind is float else step


def _conditions(name: str, when: Any, fail: Callable[..., SpaceError]) -> tuple[Condition, ...]:
    if not isinstance(when, dict):
        raise fail(name, "when", 'must be a table, e.g. when = { optimizer = "sgd" }')
    out = []
    for parent, test in when.items():
        if isinstance(test, dict):
            if not test or any(op not in _BOUNDS for op in test):
                raise fail(name, "when", f"{parent}: a comparison uses gt, ge, lt or le, e.g. {{ gt = 0 }}")
            for op, bound in test.items():
                if not _is_kind(bound, float) and not _is_kind(bound, int):
                    raise fail(name, "when", f"{parent}: {op} needs a number, got {_show(bound)}")
            out.append(Condition(parent, None, tuple((op, float(b)) for op, b in test.items())))
        else:
            values = tuple(test) if isinstance(test, list) else (test,)
            if not values or any(isinstance(v, (dict, list)) for v in values):
                raise fail(name, "when", f"{parent}: expected a value, a list of values or a comparison")
            out.append(Condition(parent, values))
    return tuple(out)


def _check_condition(
    p: Param, c: Condition, params: dict[str, Param], fail: Callable[..., SpaceError]
) -> None:
    if c.parent == p.name:
        raise fail(p.name, "when", "a parameter cannot depend on itself")
    if c.parent not in params:
        raise fail(p.name, "when", f"unknown parameter {c.parent!r}; parameters are {', '.join(params)}")
    parent = params[c.parent]
    setting = setting_of(parent.key, _domain_table(parent.domain))
    if c.values is None:
        if setting.kind not in (int, float):
            raise fail(p.name, "when", f"{c.parent} is {_KIND_NAMES[setting.kind]}: compare it by value")
        return
    for v in c.values:
        problem = setting.problem(float(v) if setting.kind is float and _is_kind(v, int) else v)
        if problem:
            raise fail(p.name, "when", f"{c.parent} {problem}")


def _check_switch_names(params: dict[str, Param], fail: Callable[..., SpaceError]) -> None:
    for p in params.values():
        if p.switch is not None and p.switch in params:
            raise fail(p.switch, None, f"this name is taken by the zero switch of [{p.name}]")


def _check_shared_keys(params: dict[str, Param], fail: Callable[..., SpaceError]) -> None:
    """Two parameters may set one setting only under conditions that exclude each other."""
    seen: dict[str, list[Param]] = {}
    for p in params.values():
        for other in seen.get(p.key, []):
            if not _exclusive(other, p):
                raise fail(
                    p.name,
                    "key" if p.key != p.name else None,
                    f"sets {p.key}, as [{other.name}] does; give both `when` conditions on one parameter "
                    "with different values",
                )
        seen.setdefault(p.key, []).append(p)


def _exclusive(a: Param, b: Param) -> bool:
    for ca in a.when:
        for cb in b.when:
            same_parent = ca.parent == cb.parent and ca.values is not None and cb.values is not None
            if same_parent and not any(_same(x, y) for x in ca.values for y in cb.values):
                return True
    return False


def _order(params: dict[str, Param], fail: Callable[..., SpaceError]) -> list[Param]:
    """Definition order, except that a parameter waits for the parameters its conditions read."""
    placed: list[Param] = []
    names: set[str] = set()
    pending = list(params.values())
    while pending:
        ready = next((p for p in pending if all(c.parent in names for c in p.when)), None)
        if ready is None:
            cycle = ", ".join(p.name for p in pending)
            raise fail(pending[0].name, "when", f"conditions form a cycle among {cycle}")
        placed.append(ready)
        names.add(ready.name)
        pending.remove(ready)
    return placed


# ---- small helpers -----------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (so `True` is not `1`)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _member(value: Scalar, values: tuple[Scalar, ...]) -> bool:
    return any(_same(value, v) for v in values)


def _canonical(value: Any) -> str:
    """Plain data as JSON with sorted keys: equal only for equal values of the same kinds."""
    return json.dumps(value, sort_keys=True)


def _plain(value: Any) -> Any:
    """TOML values as JSON-comparable plain data (tomllib's dicts and lists are already plain)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no TOML form in a space")
        return repr(value)
    return _show(value)
