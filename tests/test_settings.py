"""One description of each optimizer setting: the configs, the search space and the CLI follow it."""

from __future__ import annotations

import math
import typing

from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from purestep import OptimizerConfig
from purestep.cli import app
from purestep.core.optim import OptimizerName
from purestep.core.settings import OPTIMIZER_SETTINGS, OPTIMIZERS
from purestep.search.objective import TrialConfig
from purestep.search.space import SETTINGS

FLOATS = sorted(name for name, s in OPTIMIZER_SETTINGS.items() if s.kind is float)
FLAGS = {
    "lr": "--lr",
    "momentum": "--momentum",
    "weight_decay": "--weight-decay",
    "alpha": "--alpha",
    "eps": "--eps",
}


def _config(optimizer: str, **values: object) -> OptimizerConfig:
    betas = (values.pop("beta1", 0.9), values.pop("beta2", 0.999))
    return OptimizerConfig(optimizer, betas=betas, **values)  # type: ignore[arg-type]


def _inside(name: str) -> st.SearchStrategy[float]:
    s = OPTIMIZER_SETTINGS[name]
    high = min(s.high, 1e6)
    return st.floats(s.low, high, exclude_min=s.low_open, exclude_max=s.high_open and high == s.high)


def _outside(name: str) -> st.SearchStrategy[float]:
    s = OPTIMIZER_SETTINGS[name]
    below = st.floats(max(s.low - 10, -1e6), s.low, exclude_max=not s.low_open)
    above = (
        st.floats(s.high, s.high + 10, exclude_min=not s.high_open) if s.high != math.inf else st.nothing()
    )
    return below | above | st.sampled_from([math.nan, -math.inf])


def test_the_configs_and_the_space_take_their_defaults_and_domains_from_the_description():
    assert typing.get_args(OptimizerName) == OPTIMIZERS == OPTIMIZER_SETTINGS["optimizer"].options
    tutorial = {name: s.tutorial for name, s in OPTIMIZER_SETTINGS.items()}
    assert _config(tutorial.pop("optimizer"), **tutorial) == OptimizerConfig()
    assert all(getattr(TrialConfig(), name) == s.tutorial for name, s in OPTIMIZER_SETTINGS.items())
    assert all(SETTINGS[name] is s for name, s in OPTIMIZER_SETTINGS.items())


@given(data=st.data())
def test_every_value_the_description_allows_builds_every_optimizer_that_reads_it(data):
    for name in FLOATS:
        value = data.draw(_inside(name), label=name)
        for optimizer in OPTIMIZER_SETTINGS[name].optimizers:
            _config(optimizer, **{name: value}).build()


@given(name=st.sampled_from(sorted(FLAGS)), data=st.data())
def test_the_cli_refuses_what_the_description_refuses_with_its_words(name, data):
    value = data.draw(_outside(name), label="value")
    problem = OPTIMIZER_SETTINGS[name].problem(value)
    assert problem is not None
    result = CliRunner().invoke(app, ["train", "--optimizer", "rmsprop", FLAGS[name], repr(value)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and problem in result.stderr, (problem, result.stderr)


def test_an_option_given_to_an_optimizer_that_does_not_read_it_is_refused(tmp_path):
    runner = CliRunner()
    absent = ["--dataset", "mnist", "--data-dir", str(tmp_path)]  # accepted options fail here, exit 1
    for name in ("momentum", "alpha", "eps"):
        readers = OPTIMIZER_SETTINGS[name].optimizers
        for optimizer in OPTIMIZERS:
            args = ["train", *absent, "--optimizer", optimizer, FLAGS[name], "0.5"]
            result = runner.invoke(app, args, env={"PURESTEP_OFFLINE": "1"})
            refused = f"{FLAGS[name]} applies to --optimizer {', '.join(readers)} only"
            assert (result.exit_code, refused in result.stderr) == (
                (1, False) if optimizer in readers else (2, True)
            ), result.stderr
