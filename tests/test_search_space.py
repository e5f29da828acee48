"""Search spaces: the default, TOML overrides, errors that name line and key, and properties of
sampling through real Optuna trials."""

from __future__ import annotations

import re

import optuna
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from purestep.core.settings import show
from purestep.search.objective import TrialConfig, optuna_suggest
from purestep.search.space import (
    SETTINGS,
    TUTORIAL,
    Choices,
    Fixed,
    Range,
    Space,
    SpaceError,
    default_space,
    difference,
    load_space,
    parse_space,
    sample,
    settings_of,
    space_from_json,
    tutorial_params,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def draw(space: Space, sampler: optuna.samplers.BaseSampler | None = None, n: int = 1) -> list:
    """Sample `n` trials of `space` through a real in-memory Optuna study."""
    study = optuna.create_study(
        sampler=sampler or optuna.samplers.RandomSampler(seed=0), direction="maximize"
    )
    out = []
    for i in range(n):
        trial = study.ask()
        drawn = sample(space, optuna_suggest(trial))
        study.tell(trial, float(i % 3))
        out.append((drawn, dict(trial.params)))
    return out


def test_default_space_is_centred_on_the_tutorial() -> None:
    space = default_space()
    names = [p.name for p in space.params]
    assert names == [
        "optimizer",
        "sgd_lr",
        "adam_lr",
        "rmsprop_lr",
        "centered",
        "momentum",
        "nesterov",
        "weight_decay",
        "batch_size",
        "schedule",
    ]
    params = tutorial_params(space)
    assert params == {
        "optimizer": "sgd",
        "sgd_lr": 1e-3,
        "momentum": 0.0,
        "weight_decay_zero": True,
        "batch_size": 64,
        "schedule": "constant",
    }
    assert settings_of(space, params) == TUTORIAL
    assert TrialConfig.from_settings(TUTORIAL) == TrialConfig()


def test_default_space_conditions_hold_over_many_draws() -> None:
    for drawn, params in draw(default_space(), n=60):
        opt = drawn.values["optimizer"]
        assert ("sgd_lr" in params) == (opt == "sgd")
        assert ("adam_lr" in params) == (opt == "adam")
        assert ("rmsprop_lr" in params) == ("centered" in params) == (opt == "rmsprop")
        assert ("momentum" in params) == (opt == "sgd")
        assert ("nesterov" in params) == (opt == "sgd" and drawn.values["momentum"] > 0)
        assert ("weight_decay" in params) == (params["weight_decay_zero"] is False)
        lr = drawn.settings["lr"]
        assert (1e-4 <= lr <= 1.0) if opt == "sgd" else (1e-5 <= lr <= 0.1)
        TrialConfig.from_settings(drawn.settings).optimizer_config()  # every draw is a valid optimizer


def test_override_fixes_narrows_and_adds() -> None:
    text = """
[optimizer]
value = "adam"

[adam_lr]
low = 1e-4
high = 1e-2

[hidden]
choices = [128, 256]
"""
    space = parse_space(text, "space.toml")
    assert tutorial_params(space) is None  # the tutorial's SGD is outside this space
    for drawn, params in draw(space, n=20):
        assert "optimizer" not in params and drawn.settings["optimizer"] == "adam"
        assert 1e-4 <= params["adam_lr"] <= 1e-2
        assert params["hidden"] in (128, 256) and drawn.settings["hidden"] == params["hidden"]
        assert not {"sgd_lr", "momentum", "nesterov"} & set(params)
    adam = next(p for p in space.params if p.name == "adam_lr")
    assert adam.domain == Range(1e-4, 1e-2, log=True)  # `log` kept from the default


def test_override_can_replace_a_range_by_choices() -> None:
    space = parse_space("[momentum]\nchoices = [0.0, 0.9]\n", "space.toml")
    momentum = next(p for p in space.params if p.name == "momentum")
    assert momentum.domain == Choices((0.0, 0.9))
    assert tutorial_params(space) is not None


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[lr\nlow = 1", 1, "invalid TOML"),
        ("\n[hiden]\nchoices = [128]\n", 2, "[hiden]: unknown setting"),
        ("[hidden]\n\nchoises = [128]\n", 3, "[hidden] choises: unknown field"),
        ("[hidden]\nchoices = [128.5]\n", 2, "[hidden] choices: must be an integer"),
        ("[adam_lr]\nlow = 0.5\n", 1, "[adam_lr] high: must be greater than low"),
        ("[sgd_lr]\nlow = -1.0\n", 2, "[sgd_lr] low: must be in (0, inf)"),
        ('[momentum]\nwhen = { optimizer = "sgdd" }\n', 2, "[momentum] when: optimizer must be one of"),
        ("[momentum]\nwhen = { nope = 1 }\n", 2, "[momentum] when: unknown parameter 'nope'"),
        ("[lr]\nlow = 1e-3\nhigh = 1e-1\n", 1, "[lr]: sets lr, as [sgd_lr] does"),
        ("x = 1\n[hidden]\nvalue = 3\n", 1, "x: expected a table"),
        ("[layers]\nvalue = 2\nchoices = [1, 2]\n", 1, "[layers]: give exactly one of"),
        ("[weight_decay]\nstep = 0.001\n", 2, "[weight_decay] step"),
        ("[sgd_lr]\nzero = true\n", 2, "[sgd_lr] zero: 0 is not a valid value of lr"),
        ("[nesterov]\nlow = 0\nhigh = 1\n", 2, "[nesterov] low: bool settings take value or choices"),
    ],
)
def test_bad_space_files_name_line_and_key(text: str, line: int, fragment: str) -> None:
    with pytest.raises(SpaceError) as info:
        parse_space(text, "space.toml")
    message = str(info.value)
    if fragment == "invalid TOML":
        assert message.startswith("space.toml: ") and f"(at line {line}," in message, message
    else:
        assert message.startswith(f"space.toml:{line}: "), message
    assert fragment in message, message
    assert "\n" not in message


def test_stored_space_round_trip_and_difference() -> None:
    space = parse_space("[hidden]\nchoices = [64, 128]\n", "space.toml")
    assert space_from_json(space.to_json()).to_tables() == space.to_tables()
    assert difference(space, space_from_json(space.to_json())) is None
    assert difference(default_space(), space) == "[hidden] is in this space but not in the study's"
    narrowed = parse_space("[adam_lr]\nlow = 1e-4\n", "space.toml")
    assert difference(default_space(), narrowed) == "[adam_lr] low is 1e-05 in the study, 0.0001 here"


KINDED = st.one_of(st.booleans(), st.integers(-2, 2), st.sampled_from([-1.0, 0.0, 1.0, 2.0, 0.5]))
"""Values that Python's == confuses across kinds: 1 == 1.0 == True, 0 == 0.0 == False."""


@given(KINDED, KINDED, st.sampled_from(["value", "choices", "low"]))
def test_a_value_written_as_another_kind_is_another_space(old: object, new: object, field: str) -> None:
    """A model argument's kind is its values' kind: `low = 16` draws integers, `low = 16.0` floats,
    which a study cannot resume; equal numbers of another kind are a difference, named like any."""
    assume(field != "low" or not isinstance(old, bool) and not isinstance(new, bool))

    def space(value: object) -> Space:
        written = {"value": show(value), "choices": f"[{show(value)}]", "low": f"{show(value)}\nhigh = 3"}
        text = f'[x]\nkey = "model.x"\n{field} = {written[field]}\n'
        return parse_space(text, "space.toml", base=Space((), ()))

    found = difference(space_from_json(space(old).to_json()), space(new))
    if type(old) is type(new) and old == new:
        assert found is None
    else:
        shown = (f"[{show(old)}]", f"[{show(new)}]") if field == "choices" else (show(old), show(new))
        assert found == f"[x] {field} is {shown[0]} in the study, {shown[1]} here"


# ---- properties over generated space definitions ---------------------------------------------------

NUMERIC = {k: s for k, s in SETTINGS.items() if s.kind in (int, float)}


@st.composite
def domains(draw_: st.DrawFn, key: str) -> dict:
    """A valid domain table for `key`: a fixed value, choices, or a range (maybe log, step or zero)."""
    setting = SETTINGS[key]
    if setting.kind is bool:
        values = st.booleans()
    elif setting.kind is str:
        values = st.sampled_from(setting.options)
    elif setting.kind is int:
        values = st.integers(int(max(setting.low, 1)), int(min(setting.high, 512)))
    else:
        low = 1e-6 if setting.low_open else setting.low
        high = min(setting.high - 1e-3 if setting.high_open else setting.high, 10.0)
        values = st.floats(low, high, allow_subnormal=False).filter(lambda x: x == 0 or abs(x) >= 1e-8)
    kind = draw_(st.sampled_from(["value", "choices", "range"] if key in NUMERIC else ["value", "choices"]))
    if kind == "value":
        return {"value": draw_(values)}
    if kind == "choices":
        return {"choices": draw_(st.lists(values, min_size=1, max_size=4, unique=True))}
    low, high = sorted(draw_(st.lists(values, min_size=2, max_size=2, unique=True)))
    table: dict = {"low": low, "high": high}
    if low > 0 and draw_(st.booleans()):
        table["log"] = True
        if setting.kind is float and not SETTINGS[key].problem(0.0) and draw_(st.booleans()):
            table["zero"] = True
    elif setting.kind is int and draw_(st.booleans()):
        table["step"] = 1
    return table


@st.composite
def spaces(draw_: st.DrawFn) -> dict[str, dict]:
    """Tables for a space replacing the default: distinct settings, conditions on earlier parameters."""
    keys = draw_(st.lists(st.sampled_from(sorted(SETTINGS)), min_size=1, max_size=6, unique=True))
    tables: dict[str, dict] = {}
    for key in keys:
        table = {"key": key, **draw_(domains(key))}
        parents = [n for n in tables]
        if parents and draw_(st.booleans()):
            parent = draw_(st.sampled_from(parents))
            table["when"] = {parent: draw_(_condition(tables[parent]))}
        tables[f"p_{key}"] = table
    return tables


@st.composite
def _condition(draw_: st.DrawFn, parent: dict):
    if "value" in parent:
        return parent["value"]
    if "choices" in parent:
        return draw_(st.lists(st.sampled_from(parent["choices"]), min_size=1, max_size=2, unique=True))
    middle = (parent["low"] + parent["high"]) / 2
    return {draw_(st.sampled_from(["gt", "ge", "lt", "le"])): float(middle)}


def _toml(tables: dict[str, dict]) -> str:
    return Space((), tuple((n, tuple(t.items())) for n, t in tables.items())).to_toml()


def _inside(table: dict, value) -> bool:
    """Whether `value` is allowed by the table's domain, read from the table itself."""
    if "value" in table:
        return value == table["value"] and type(value) is type(table["value"])
    if "choices" in table:
        return any(value == c and type(value) is type(c) for c in table["choices"])
    if table.get("zero") and value == 0:
        return True
    integer = isinstance(table["low"], int)
    return table["low"] <= value <= table["high"] and (not integer or type(value) is int)


def _replacing(tables: dict[str, dict]) -> Space:
    """The space of exactly these tables (the default's tables made inactive by fixing them away)."""
    empty = Space((), ())
    return parse_space(_toml(tables), "space.toml", base=empty)


@given(spaces(), st.sampled_from(["random", "tpe"]))
def test_sampled_values_are_inside_bounds_and_conditional_params_appear_exactly_when_due(
    tables: dict[str, dict], sampler_name: str
) -> None:
    space = _replacing(tables)
    sampler = (
        optuna.samplers.RandomSampler(seed=1)
        if sampler_name == "random"
        else optuna.samplers.TPESampler(seed=1, n_startup_trials=2, multivariate=True, group=True)
    )
    for drawn, params in draw(space, sampler, n=4):
        active: dict = {}
        for p in space.params:
            due = _due(tables[p.name].get("when", {}), active)
            assert (p.name in drawn.values) == due
            searched = due and not isinstance(p.domain, Fixed)
            switch = p.switch
            if switch is not None:
                assert (switch in params) == searched
                assert (p.name in params) == (searched and params[switch] is False)
            else:
                assert (p.name in params) == searched
            if due:
                value = drawn.values[p.name]
                assert _inside(tables[p.name], value), (p, value)
                active[p.name] = value
                assert drawn.settings[p.key] == value
        set_keys = {tables[name]["key"] for name in drawn.values}
        for key, value in drawn.settings.items():
            if key not in set_keys:
                assert value == TUTORIAL[key]
        assert set(params) <= set(tables) | {f"{n}_zero" for n, t in tables.items() if t.get("zero")}


_OPS = {
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


def _due(when: dict, active: dict) -> bool:
    """The condition, evaluated from the table itself (not by the code under test)."""
    for parent, test in when.items():
        if parent not in active:
            return False
        value = active[parent]
        if isinstance(test, dict):
            if not all(_OPS[op](value, bound) for op, bound in test.items()):
                return False
        else:
            options = test if isinstance(test, list) else [test]
            if not any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in options):
                return False
    return True


@given(spaces())
def test_toml_of_a_space_reads_back_to_the_same_space(tables: dict[str, dict]) -> None:
    space = _replacing(tables)
    again = parse_space(space.to_toml(), "again.toml", base=Space((), ()))
    assert again.to_tables() == space.to_tables()
    assert [p.name for p in again.params] == [p.name for p in space.params]


@given(spaces(), st.data())
def test_a_broken_field_is_reported_at_its_line(tables: dict[str, dict], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(tables)))
    table = tables[name]
    field = data.draw(st.sampled_from(sorted(f for f in table if f in ("value", "choices", "low"))))
    table[field] = "not a number" if SETTINGS[table["key"]].kind is not str else 12.5
    if field == "choices":
        table[field] = [table[field]]
    text = _toml(tables)
    line = 1 + text.splitlines().index(next(x for x in text.splitlines() if x == f"[{name}]"))
    line += next(i for i, f in enumerate(table, start=1) if f == field)
    with pytest.raises(SpaceError) as info:
        parse_space(text, "space.toml", base=Space((), ()))
    message = str(info.value)
    assert re.match(rf"space\.toml:{line}: \[{name}\] {field}: ", message), (message, text)


def test_integer_ranges_use_integer_suggestions() -> None:
    space = parse_space("[hidden]\nlow = 16\nhigh = 64\nstep = 16\n", "space.toml")
    for drawn, params in draw(space, n=15):
        assert params["hidden"] in (16, 32, 48, 64)
        assert isinstance(drawn.settings["hidden"], int)


def test_a_stored_space_keeps_the_sampling_order() -> None:
    space = parse_space("[hidden]\nchoices = [64, 128]\n", "space.toml")
    again = space_from_json(space.to_json())
    assert [p.name for p in again.params] == [p.name for p in space.params]
    assert [p.name for p in space.params][-1] == "hidden"


SHAPES = {
    "hidden": "[hidden]\nchoices = [128, 256]\n",
    "layers": '[depth]\nkey = "layers"\nlow = 1\nhigh = 3\n',
}


@pytest.mark.parametrize("key", SHAPES)
def test_a_space_that_searches_the_mlps_shape_for_another_model_is_refused_naming_it(tmp_path, key):
    """The MLP's width and depth reach no other model: searched for one, they would be drawn,
    stored and reported while every trial trained the same model."""
    path = tmp_path / "space.toml"
    path.write_text(SHAPES[key])
    assert key in {p.key for p in load_space(path, "mlp").params}
    for model in ("cnn", "net.py:Net"):
        name = "hidden" if key == "hidden" else "depth"
        said = f"{path}: [{name}] sets the MLP's {key}, which --model {model}"
        with pytest.raises(SpaceError, match=re.escape(said)):
            load_space(path, model)
