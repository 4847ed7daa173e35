"""Kubeflow pieces that need no TFX and no server: cron, params, auth, presets, config,
baseline lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hoh.config import ConfigError, load_config
from hoh.errors import HohError
from hoh.pipeline.kfp import beam_presets
from hoh.pipeline.kfp import client as kfp_client
from hoh.pipeline.kfp.params import PARAMETER_ALIASES, parameter_values
from hoh.pipeline.runners.kubeflow import Target

# --------------------------------------------------------------------------- cron


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 3 * * *",
        "0 */15 * * * *",
        "30 0 9 ? * MON-FRI",
        "0 0 0 1 JAN,JUL *",
        "0 0 12 * * 1-5",
        "@daily",
        "@every 6h",
        "  0  0 3 * * *  ",
    ],
)
def test_valid_cron_expressions_pass(cron):
    assert kfp_client.validate_cron(cron) == " ".join(cron.split())


def test_five_field_cron_is_refused_saying_kfp_wants_six_seconds_first():
    with pytest.raises(HohError) as err:
        kfp_client.validate_cron("0 3 * * *")
    message = str(err.value)
    assert "5 fields" in message and "6" in message and "seconds first" in message
    assert "'0 0 3 * * *'" in message  # the expression it probably meant


@pytest.mark.parametrize(
    "cron, needle",
    [
        ("0 60 * * * *", "minute field '60'"),
        ("0 0 24 * * *", "hour"),
        ("0 0 3 0 * *", "day of month"),
        ("0 0 3 * 13 *", "month"),
        ("0 0 3 * * FUNDAY", "day of week"),
        ("0 0 3 * * * *", "7 fields"),
        ("0 ? 3 * * *", "'?' is only allowed"),
        ("0 */0 * * * *", "step"),
        ("0 0 5-3 * * *", "backwards"),
        ("", "0 fields"),
    ],
)
def test_bad_cron_fields_are_named(cron, needle):
    with pytest.raises(HohError, match="--cron") as err:
        kfp_client.validate_cron(cron)
    assert needle in str(err.value)


# --------------------------------------------------------------------------- params, host, auth


def test_params_parse_and_keep_strings():
    assert kfp_client.parse_params(
        ["span=3", "data_root=gs://b/d", 'eval_config={"a": 1}', "x="]
    ) == {
        "span": "3",
        "data_root": "gs://b/d",
        "eval_config": '{"a": 1}',
        "x": "",
    }


@pytest.mark.parametrize(
    "items, needle", [(["span"], "NAME=VALUE"), (["=3"], "NAME=VALUE"), (["a=1", "a=2"], "twice")]
)
def test_bad_params_are_refused(items, needle):
    with pytest.raises(HohError, match=needle):
        kfp_client.parse_params(items)


@pytest.mark.parametrize("host", ["localhost:8080", "ftp://x", "", "http://"])
def test_host_needs_a_scheme(host):
    with pytest.raises(HohError, match="--host"):
        kfp_client.validate_host(host)


def test_auth_is_passed_through(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("abc")
    kwargs = kfp_client.client_kwargs(
        "https://kfp.example.com/pipeline/",
        kfp_client.Auth(token="t0k", cookie="authservice_session=xyz", namespace="team-a"),
    )
    assert kwargs == {
        "host": "https://kfp.example.com/pipeline",
        "existing_token": "t0k",
        "cookies": "authservice_session=xyz",
        "namespace": "team-a",
    }
    kwargs = kfp_client.client_kwargs("http://h:1", kfp_client.Auth(token_file=str(token_file)))
    assert kwargs["token_file"] == str(token_file)


@pytest.mark.parametrize(
    "auth, needle",
    [
        (kfp_client.Auth(token="a", token_file="b"), "not both"),
        (kfp_client.Auth(token_file="/nonexistent/token"), "--token-file"),
        (kfp_client.Auth(cookie="just-a-value"), "--cookie"),
        (kfp_client.Auth(ssl_ca_cert="/nonexistent/ca.pem"), "--ssl-ca-cert"),
    ],
)
def test_bad_auth_is_refused_before_any_request(auth, needle):
    with pytest.raises(HohError, match=needle):
        kfp_client.client_kwargs("http://h:1", auth)


def test_version_names_are_the_package_hash_and_time(tmp_path):
    import datetime

    package = tmp_path / "p.yaml"
    package.write_text("a: 1\n")
    when = datetime.datetime(2030, 1, 2, 3, 4, 5)
    name = kfp_client.version_name(str(package), when)
    assert name.endswith("-20300102-030405") and len(name.split("-")[0]) == 12


# --------------------------------------------------------------------------- parameter shortcuts


PACKAGE = {
    "data_root": "gs://b/d",
    "range_config": '{"rolling_range": {"num_spans": 1}}',
    "trainer_config": '{"epochs": 1}',
    "eval_config": '{"min_auc": 0.9}',
}


def _defaults_for(overrides):
    """Stands in for rebuilding the pipeline from the config with `overrides` applied."""
    values = dict(PACKAGE)
    for override in overrides:
        key, value = override.split("=")
        if key == "training.epochs":
            values["trainer_config"] = json.dumps({"epochs": int(value)})
        if key == "evaluation.min_auc":
            values["eval_config"] = json.dumps({"min_auc": float(value)})
    return values


def test_parameter_names_pass_and_aliases_rewrite_their_parameter():
    values = parameter_values(
        {"data_root": "gs://other", "epochs": "5", "span": "2"}, PACKAGE, _defaults_for
    )
    assert values["data_root"] == "gs://other" and values["trainer_config"] == '{"epochs": 5}'
    assert json.loads(values["range_config"]) == {
        "static_range": {"start_span_number": 2, "end_span_number": 2}
    }
    latest = parameter_values({"span": "latest"}, PACKAGE, _defaults_for)["range_config"]
    assert json.loads(latest) == {"rolling_range": {"num_spans": 1}}
    assert parameter_values({}, PACKAGE, _defaults_for) == {}


def test_bad_span_is_refused():
    with pytest.raises(HohError, match="span=two"):
        parameter_values({"span": "two"}, PACKAGE, _defaults_for)


def test_unknown_parameters_are_refused_with_the_known_ones():
    with pytest.raises(HohError) as err:
        parameter_values({"epoch": "5"}, PACKAGE, _defaults_for)
    assert (
        "epoch" in str(err.value)
        and "epochs" in str(err.value)
        and "trainer_config" in str(err.value)
    )


def test_aliases_refuse_a_config_that_did_not_compile_the_package():
    stale = {**PACKAGE, "trainer_config": '{"epochs": 9}'}
    with pytest.raises(HohError, match="--config the package was compiled from"):
        parameter_values({"epochs": "5"}, stale, _defaults_for)


def test_every_alias_names_a_config_key():
    from hoh.config import HohConfig

    cfg = HohConfig()
    assert "span" not in PARAMETER_ALIASES  # needs no config
    for alias, key in PARAMETER_ALIASES.items():
        section, field = key.split(".")
        assert hasattr(getattr(cfg, section), field), alias


# --------------------------------------------------------------------------- beam presets


@pytest.mark.parametrize(
    "preset, options",
    [
        ("direct", {}),
        ("dataflow", {"project": "p", "region": "europe-west4", "temp_location": "gs://b/tmp"}),
        ("flink", {"job_endpoint": "flink-jobserver:8099"}),
        ("spark", {"job_endpoint": "spark-jobserver:8099"}),
    ],
)
def test_every_preset_fills_and_ships_the_image(preset, options):
    args = beam_presets.beam_args(preset, options, ["--extra=1"], "reg/hoh:1")
    assert "--sdk_container_image=reg/hoh:1" in args  # no ephemeral TFX sdist, same code everywhere
    assert args[-1] == "--extra=1"
    assert not any("{" in a for a in args)


def test_presets_name_missing_and_meaningless_options():
    with pytest.raises(HohError, match="project, region, temp_location"):
        beam_presets.beam_args("dataflow", {}, [], "img")
    with pytest.raises(HohError, match="projekt"):
        beam_presets.beam_args("direct", {"projekt": "p"}, [], "img")


# --------------------------------------------------------------------------- config


def test_kubeflow_section_validates_pod_locations():
    cfg = load_config(
        overrides=[
            "kubeflow.pipeline_root=gs://b/root",
            "kubeflow.data_root=/mnt/data",
            "kubeflow.resources.Trainer.gpu=1",
        ]
    )
    assert (
        cfg.kubeflow.pipeline_root == "gs://b/root" and cfg.kubeflow.resources["Trainer"].gpu == 1
    )
    with pytest.raises(ConfigError, match="kubeflow.data_root"):
        load_config(overrides=["kubeflow.data_root=s3://bucket/data"])
    with pytest.raises(ConfigError, match="relative"):
        load_config(overrides=["kubeflow.model_repository=models"])
    with pytest.raises(ConfigError, match="beam_preset"):
        load_config(overrides=["kubeflow.beam_preset=samza"])


def test_target_resolution_names_what_is_missing():
    from hoh.pipeline.runners.kubeflow import resolve_target

    cfg = load_config(overrides=["kubeflow.model_repository=gs://b/models"])
    with pytest.raises(HohError, match="--image"):
        resolve_target(cfg, pipeline_root="gs://b/r", data_root="gs://b/d")
    with pytest.raises(HohError, match="--pipeline-root"):
        resolve_target(cfg, image="i", data_root="gs://b/d")
    with pytest.raises(HohError, match="--data / kubeflow.data_root"):
        resolve_target(cfg, image="i", pipeline_root="gs://b/r", data_root="data")
    assert resolve_target(cfg, image="i", pipeline_root="gs://b/r", data_root="gs://b/d") == Target(
        "i", "gs://b/r", "gs://b/d", "gs://b/models"
    )
    with pytest.raises(HohError, match="model_repository"):
        resolve_target(load_config(), image="i", pipeline_root="gs://b/r", data_root="gs://b/d")


# --------------------------------------------------------------------------- baseline lookup


def _version(repo: Path, n: int, complete: bool = True) -> Path:
    saved = repo / "hoh" / str(n) / "model.savedmodel"
    saved.mkdir(parents=True)
    if complete:
        (saved / "saved_model.pb").write_bytes(b"graph %d" % n)
    return saved


def test_latest_pushed_model_is_the_newest_complete_version(tmp_path):
    from hoh.components.latest_pushed_model.locate import latest_pushed_saved_model

    repo = tmp_path / "repo"
    assert latest_pushed_saved_model(str(repo), "hoh") is None  # before the first push
    _version(repo, 1)
    newest = _version(repo, 2)
    (repo / "hoh" / ".hoh-staging-x").mkdir()  # a push in progress is not a version
    assert latest_pushed_saved_model(str(repo), "hoh") == str(newest)
    _version(repo, 3, complete=False)  # interrupted copy on an object store
    assert latest_pushed_saved_model(str(repo), "hoh") == str(newest)
    assert latest_pushed_saved_model(str(repo), "other") is None


def test_latest_pushed_model_of_the_onnx_flavour_is_the_model_it_was_exported_from(tmp_path):
    import json

    from hoh.components.latest_pushed_model.locate import latest_pushed_saved_model

    repo = tmp_path / "repo"
    tensorflow = _version(repo, 1)
    trainer = tmp_path / "Trainer" / "model" / "Format-Serving"
    trainer.mkdir(parents=True)
    (trainer / "saved_model.pb").write_bytes(b"graph 2")
    onnx = repo / "hoh" / "2"
    onnx.mkdir()  # an ensemble version: labels and provenance, the network is in hoh_classifier
    info = {"source": str(trainer), "flavor": "onnx"}
    (onnx / "hoh_push.json").write_text(json.dumps(info))
    assert latest_pushed_saved_model(str(repo), "hoh") == str(trainer)
    (trainer / "saved_model.pb").unlink()  # the pipeline root was cleaned: no baseline there
    assert latest_pushed_saved_model(str(repo), "hoh") == str(tensorflow)
