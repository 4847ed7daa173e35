"""The typed config: defaults, profiles, overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from hoh.config import CONFIG_DIR, ConfigError, HohConfig, builtin_config_path, load_config


def test_defaults_are_the_documented_stack():
    cfg = load_config()
    assert (cfg.transform.image_size, cfg.model.alpha, cfg.model.weights) == (224, 1.0, "imagenet")
    assert cfg.evaluation.min_auc == 0.9 and cfg.beam.args == []
    assert cfg.push.flavor == "onnx"  # chosen by docs/BENCHMARKS.md#onnx-flavour-issue-18
    assert cfg.pipeline_root.endswith("hoh-output/pipeline_root")


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_builtin_profile_validates(name):
    assert isinstance(load_config(builtin_config_path(name)), HohConfig)


def test_overrides_parse_yaml_values_and_keyword_fields_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  epochs: 7\nmodel:\n  weights: none\n")
    cfg = load_config(
        path, ["model.hidden_units=[64, 32]", "training.epochs=2"], **{"data.root": "/d"}
    )
    assert cfg.training.epochs == 2 and cfg.model.hidden_units == [64, 32]
    assert cfg.model.weights == "none" and cfg.data.root == "/d"


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["model.alfa=1"], "model.alfa"),
        (["model.alpha=0.6"], "alpha must be one of"),
        (["pipeline_name=Hoh_Pipeline"], "[a-z0-9-]"),
        (["training.fine_tune_layers=10"], "fine_tune_epochs"),
        (["push.model_name=../x"], "plain directory name"),
        (["epochs"], "expected section.key=value"),
        (["training.epochs=-1"], "training.epochs"),
        (["push.versions_to_serve=2", "push.versions_to_keep=2"], "push.flavor=tensorflow"),
    ],
)
def test_bad_values_are_reported_with_their_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert needle in str(err.value)


def test_bad_files_are_reported_with_their_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no built-in config named 'nope'"):
        builtin_config_path("nope")
