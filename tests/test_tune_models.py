"""`purestep tune` for any model: the model's own arguments in the space, the tutorial's
configuration of that model as trial 0, best.json naming the model, `--batch` with buffers."""

from __future__ import annotations

import json

import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st
from optuna.trial import TrialState
from typer.testing import CliRunner

from purestep.cli import app
from purestep.core.interop import load
from purestep.search.objective import TrialConfig
from purestep.search.space import SpaceError, parse_space, sample, tutorial_params

runner = CliRunner()
CNN_SPACE = """\
[dropout]
key = "model.dropout"
low = 0.0
high = 0.6
[width]
key = "model.width"
choices = [8, 32]
"""


def test_model_arguments_join_the_space_with_their_own_kinds():
    space = parse_space(CNN_SPACE + '[norm]\nkey = "model.norm"\nchoices = ["batch", "none"]\n')
    drawn = sample(space, lambda name, domain: domain.values[0] if hasattr(domain, "values") else domain.low)
    assert drawn.settings["model.dropout"] == 0.0 and drawn.settings["model.width"] == 8
    config = TrialConfig.from_settings(drawn.settings)
    assert dict(config.model_args) == {"dropout": 0.0, "norm": "batch", "width": 8}
    assert TrialConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@given(default=st.sampled_from([0.0, 0.25, 0.6, 0.9]))
def test_the_tutorial_trial_takes_the_models_defaults(default):
    space = parse_space(CNN_SPACE)
    params = tutorial_params(space, {"dropout": default, "width": 32})
    if default <= 0.6:
        assert params is not None and params["dropout"] == default and params["width"] == 32
    else:
        assert params is None  # the default lies outside the searched range
    assert tutorial_params(space, {"dropout": 0.5}) is None  # width has no default: no tutorial


@pytest.mark.parametrize(
    "table, message",
    [
        ('[x]\nkey = "model."\nvalue = 1\n', "unknown setting"),
        ('[x]\nkey = "model.a-b"\nvalue = 1\n', "unknown setting"),
        ('[x]\nkey = "model.flag"\nlow = true\nhigh = false\n', "take value or choices"),
    ],
)
def test_bad_model_keys_are_named(table, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(table)


def _tune(tmp_path, *args):
    space = tmp_path / "space.toml"
    space.write_text(CNN_SPACE)
    storage = f"sqlite:///{tmp_path / 'cnn.db'}"
    common = ["tune", "--dataset", "digits", "--model", "cnn", "--model-arg", "dense=16", "--epochs", "1"]
    common += ["--space", str(space), "--storage", storage, "--out", str(tmp_path / "out")]
    return runner.invoke(app, [*common, *args]), storage


@pytest.mark.parametrize("batch", ["1", "3"])
def test_tune_searches_a_cnns_own_arguments_and_names_the_model(tmp_path, batch):
    result, storage = _tune(tmp_path, "--n-trials", "4", "--sampler", "random", "--batch", batch)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="purestep-digits", storage=storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4 and all({"dropout", "width"} <= set(t.params) for t in done)
    baseline = next(t for t in done if t.user_attrs.get("baseline"))
    assert baseline.params["dropout"] == 0.5 and baseline.params["width"] == 32  # ConvNet's defaults
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["model"] == "cnn" and best["model_args"] == {"dense": 16} and best["loss"] == "cross_entropy"
    assert set(best["config"]["model_args"]) == {"dropout", "width"}
    assert 0 <= best["final"]["test_accuracy"] <= 1 and "test_accuracy" in best["final"]["baseline"]
    tensors, meta = load(tmp_path / "out" / "best.safetensors")
    assert meta["model"] == "cnn" and meta["model_args"]["dense"] == 16
    assert any(k.endswith("running_mean") for k in tensors)  # buffers are saved beside params


def test_a_fixed_model_argument_holds_the_spaces_parameter_for_it(tmp_path):
    """`--model-arg width=8` with a space that searches `model.width`: every trial (the baseline too)
    trains width 8, and best.json and the saved weights say so; the space searched it, and its
    draw, not the command line's value, was what trials trained and best.json reported."""
    result, storage = _tune(tmp_path, "--n-trials", "3", "--sampler", "random", "--model-arg", "width=8")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="purestep-digits", storage=storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and all(t.user_attrs["config"]["model_args"]["width"] == 8 for t in done)
    assert next(t for t in done if t.user_attrs.get("baseline")).user_attrs["config"]["model_args"] == {
        "dropout": 0.5,  # ConvNet's default: not fixed, still searched
        "width": 8,
    }
    assert len({t.user_attrs["config"]["model_args"]["dropout"] for t in done}) == 3
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["model_args"] == {"dense": 16, "width": 8} and best["config"]["model_args"]["width"] == 8
    tensors, _ = load(tmp_path / "out" / "best.safetensors")
    assert tensors["features.0.weight"].shape[0] == 8
    wrong = runner.invoke(app, ["tune", "--dataset", "digits", "--model", "cnn", "--model-arg", "width=wide",
                                "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--no-final"])
    assert wrong.exit_code == 2 and not (tmp_path / "x.db").exists(), wrong.output


def test_resuming_with_another_model_is_refused(tmp_path):
    result, _ = _tune(tmp_path, "--n-trials", "1", "--no-final")
    assert result.exit_code == 0, result.output
    again = runner.invoke(
        app,
        ["tune", "--dataset", "digits", "--epochs", "1", "--n-trials", "2"]
        + ["--storage", f"sqlite:///{tmp_path / 'cnn.db'}", "--no-final"],
    )
    assert again.exit_code == 2 and "--model is cnn in the study, mlp here" in again.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss", "mse"], "does not fit class labels"),
        (["--model", "vgg"], "unknown model 'vgg'"),
        (["--model-arg", "depth=2"], "takes no argument 'depth'"),
        (["--model", "cnn", "--model-arg", "width=0"], "--model cnn cannot run on the data: RuntimeError"),
        (["--model", "cnn", "--model-arg", "dropout=nan"], "--model-arg: model 'cnn' takes finite"),
        (["--val-fraction", "0.9999"], "--val-fraction: holding out 0.9999 of 1437 rows leaves none"),
        (["--space", "mlp-dropout"], "the space's model.dropout = 0.0: model 'mlp' takes no argument"),
        (["--model", "cnn", "--space", "zero-width"], "model.width = 0: --model cnn cannot run on the data"),
        (["--model", "nine"], "gives 9 outputs a row for labels up to 9"),  # the batched loss scored 9 as 0
    ],
)
def test_bad_model_or_loss_is_a_usage_error_before_the_storage(tmp_path, args, message):
    """Trial 0's model and every value the space gives a model argument are built and run on two
    rows first: a bad one is a usage error, and the storage is never created (a study that failed
    its first trial would keep the space and refuse a corrected run)."""
    spaces = {
        "mlp-dropout": '[dropout]\nkey = "model.dropout"\nlow = 0.0\nhigh = 0.5\n',
        "zero-width": '[width]\nkey = "model.width"\nchoices = [16, 0]\n',
    }
    for name, text in spaces.items():
        (tmp_path / f"{name}.toml").write_text(text)
    (tmp_path / "nine.py").write_text("import torch.nn as nn\ndef make(in_features):\n"
                                      "    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 9))\n")
    args = [str(tmp_path / f"{a}.toml") if a in spaces else a for a in args]
    args = [f"{tmp_path / 'nine.py'}:make" if a == "nine" else a for a in args]
    db = tmp_path / "x.db"
    result = runner.invoke(
        app, ["tune", "--dataset", "digits", "--storage", f"sqlite:///{db}", "--n-trials", "1", *args]
    )
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert result.stderr.count("\n") == 1 and not db.exists()


def test_a_zoo_models_default_space_searches_its_own_arguments():
    from purestep.core.model import ConvNet, defaults
    from purestep.search.space import default_space, load_space

    space = load_space(None, "cnn")
    assert {p.key for p in space.params} >= {"model.dropout", "model.width"}
    assert not any(p.key.startswith("model.") for p in default_space().params)
    params = tutorial_params(space, defaults(ConvNet))
    assert params is not None and params["dropout"] == 0.5 and params["width"] == 32
    shown = runner.invoke(app, ["tune", "--model", "cnn", "--show-space"])
    assert shown.exit_code == 0 and 'key = "model.dropout"' in shown.stdout


def test_a_regression_tunes_the_mlps_depth_on_a_larger_validation_split(tmp_path):
    """diabetes: the MLP's depth (0 = linear) joins the default space, the small training set holds
    out 40% to score trials, the study minimises validation MSE, and best.json has both test R²s."""
    db = tmp_path / "d.db"
    args = ["tune", "--dataset", "diabetes", "--epochs", "2", "--sampler", "random", "--storage", f"sqlite:///{db}"]
    args += ["--out", str(tmp_path / "out")]
    result = runner.invoke(app, [*args, "--n-trials", "4"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="purestep-diabetes", storage=f"sqlite:///{db}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert all(t.params["layers"] in (0, 1, 2) for t in study.trials)
    assert next(t for t in study.trials if t.user_attrs.get("baseline")).params["layers"] == 2
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["loss"] == "mse" and best["metric"] == "validation MSE"
    assert {"test_r2", "test_mse"} <= set(best["final"]) and "test_r2" in best["final"]["baseline"]
    again = runner.invoke(app, [*args, "--n-trials", "5", "--no-final"])  # the same split: it resumes
    assert again.exit_code == 0, again.output
    refused = runner.invoke(app, [*args, "--n-trials", "6", "--val-fraction", "0.2", "--no-final"])
    assert refused.exit_code == 2 and "--val-fraction is 0.4 in the study" in refused.stderr, refused.output


def test_a_regression_model_whose_outputs_miss_the_targets_shape_is_refused(tmp_path):
    """Outputs (N,) for targets (N, 1): mse would broadcast them to (N, N), every trial would
    finish and the final test report an R² of -100. A usage error before the storage is created."""
    (tmp_path / "net.py").write_text(
        "import torch.nn as nn\n"
        "def make(in_features):\n"
        "    return nn.Sequential(nn.Linear(in_features, 1), nn.Flatten(0))\n"
    )
    db = tmp_path / "d.db"
    args = ["tune", "--dataset", "diabetes", "--model", f"{tmp_path / 'net.py'}:make", "--epochs", "1"]
    args += ["--out", str(tmp_path / "out"), "--no-final"]
    result = runner.invoke(app, [*args, "--n-trials", "1", "--storage", f"sqlite:///{db}"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and not db.exists(), result.output
    assert "make gives outputs of shape (2,) for targets of shape (2, 1): mse needs the same shape" in (
        result.stderr
    )


@pytest.mark.parametrize("n, fraction", [(354, 0.4), (999, 0.4), (1000, 0.2), (1437, 0.2), (48000, 0.2)])
def test_small_training_sets_hold_out_more_to_score_trials(n, fraction):
    from purestep.search.tune import auto_val_fraction

    assert auto_val_fraction(n) == fraction


def test_zero_hidden_layers_is_a_linear_model():
    import torch

    from purestep.search.objective import Splits

    splits = Splits(*(torch.zeros(1),) * 4, in_shape=(10,), out_features=1, loss="mse")
    module = splits.model_for(TrialConfig(layers=0)).module()
    assert [type(m).__name__ for m in module.linear_relu_stack] == ["Linear"]
    assert parse_space("[layers]\nchoices = [0, 1]\n").params  # 0 is a valid depth in a space file
    with pytest.raises(SpaceError, match="layers"):
        parse_space("[layers]\nchoices = [-1, 1]\n")


@given(
    name=st.sampled_from(["cross_entropy", "nll"]),
    reduction=st.sampled_from(["mean", "sum"]),
    rows=st.integers(1, 5),
    classes=st.integers(1, 5),
    positions=st.one_of(st.none(), st.integers(1, 4)),
    trials=st.integers(1, 3),
    ignored=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_the_shape_free_loss_is_torchs(name, reduction, rows, classes, positions, trials, ignored, seed):
    """The loss of stacked pool steps equals torch's with its default arguments, alone and under
    vmap over a trial axis: classes on dim 1 ((N, C), or (N, C, L) with labels (N, L), C == L too)
    and labels of -100 left out of the sum and of the mean's count."""
    import torch

    from purestep.core.losses import loss_fn, shape_free_loss_fn

    g = torch.Generator().manual_seed(seed)
    shape = (trials, rows, classes) + ((positions,) if positions else ())
    out = torch.randn(shape, generator=g)
    if name == "nll":
        out = out.log_softmax(2)
    y = torch.randint(0, classes, (trials, rows) + ((positions,) if positions else ()), generator=g)
    y = torch.where(torch.rand(y.shape, generator=g) < ignored, -100, y)

    def shape_free(o, t):
        return shape_free_loss_fn(name)(o, t, reduction=reduction)

    expected = torch.stack([loss_fn(name)(o, t, reduction=reduction) for o, t in zip(out, y)])
    alone = torch.stack([shape_free(o, t) for o, t in zip(out, y)])
    stacked = torch.func.vmap(shape_free)(out, y)
    for got in (alone, stacked):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, equal_nan=True)  # all -100: nan


def test_the_shape_free_loss_keeps_positions_and_takes_probabilities():
    """reduction="none" keeps a loss per position (0 where the label is -100), and cross_entropy
    takes class probabilities in place of labels, as torch's."""
    import torch

    from purestep.core.losses import loss_fn, shape_free_loss_fn

    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(4, 3, 2, generator=g), torch.tensor([[0, 2], [-100, 1], [2, -100], [1, 1]])
    probs = torch.rand(4, 3, 2, generator=g).softmax(1)
    for name, target in (("cross_entropy", y), ("nll", y), ("cross_entropy", probs)):
        for reduction in ("none", "mean", "sum"):
            expected = loss_fn(name)(out, target, reduction=reduction)
            torch.testing.assert_close(shape_free_loss_fn(name)(out, target, reduction=reduction), expected)
