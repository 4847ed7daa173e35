"""TritonPusher component and executor with real TFX artifacts (no server, no TF model).

The executor never loads the model, so a directory shaped like the Trainer's export is enough;
serving a real model is covered by test_triton_serving.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from tiny_model import fake_saved_model, push_fake_model

import hoh  # noqa: F401

pytest.importorskip("tfx")

from tfx import v1 as tfx  # noqa: E402
from tfx.types import channel, standard_artifacts  # noqa: E402

from hoh.components.triton_pusher import TritonPusher, executor, repository  # noqa: E402
from hoh.config import ConfigError, PushConfig  # noqa: E402


@pytest.fixture
def model_uri(tmp_path) -> Path:
    fake_saved_model(tmp_path / "model" / "Format-Serving")
    return tmp_path / "model"


def _props(artifact) -> dict:
    return {k: artifact.get_custom_property(k) for k in artifact.mlmd_artifact.custom_properties}


def test_blessed_model_is_pushed_and_recorded(tmp_path, model_uri):
    pushed = push_fake_model(
        model_uri,
        tmp_path / "repo",
        tmp_path / "pushed",
        blessed=1,
        model_name="clf",
        preferred_batch_sizes=[2, 4],
        max_batch_size=4,
    )
    version_dir = tmp_path / "repo" / "clf" / "1"
    assert _props(pushed) == {
        "pushed": 1,
        "pushed_destination": str(version_dir),
        "pushed_version": "1",
        "triton_model_name": "clf",
        "triton_model_repository": str(tmp_path / "repo"),
    }
    assert (version_dir / "model.savedmodel" / "saved_model.pb").read_bytes() == b"graph"
    config = repository.parse_model_config((tmp_path / "repo" / "clf" / "config.pbtxt").read_text())
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    # The archive copy a later Importer (or a rollback) reads, like the stock Pusher's.
    assert (tmp_path / "pushed" / "saved_model.pb").read_bytes() == b"graph"
    provenance = json.loads((version_dir / "hoh_push.json").read_text())
    assert provenance["source"] == str(model_uri / "Format-Serving")


def test_second_push_is_version_two(tmp_path, model_uri):
    push_fake_model(model_uri, tmp_path / "repo", tmp_path / "p1")
    other = tmp_path / "other"
    fake_saved_model(other / "Format-Serving", pb=b"v2")
    pushed = push_fake_model(other, tmp_path / "repo", tmp_path / "p2")
    assert pushed.get_string_custom_property("pushed_version") == "2"


def test_unblessed_model_is_not_pushed(tmp_path, model_uri):
    pushed = push_fake_model(model_uri, tmp_path / "repo", tmp_path / "pushed", blessed=0)
    assert _props(pushed) == {"pushed": 0}
    assert not (tmp_path / "repo").exists()
    assert not (tmp_path / "pushed").exists()


def test_unblessed_model_leaves_an_existing_repository_untouched(tmp_path, model_uri):
    push_fake_model(model_uri, tmp_path / "repo", tmp_path / "p1")
    before = sorted(
        (p.relative_to(tmp_path / "repo"), p.stat().st_mtime_ns)
        for p in (tmp_path / "repo").rglob("*")
    )
    other = tmp_path / "other"
    fake_saved_model(other / "Format-Serving", classes=("a", "b", "c"))
    pushed = push_fake_model(other, tmp_path / "repo", tmp_path / "p2", blessed=0)
    assert pushed.get_int_custom_property("pushed") == 0
    after = sorted(
        (p.relative_to(tmp_path / "repo"), p.stat().st_mtime_ns)
        for p in (tmp_path / "repo").rglob("*")
    )
    assert after == before


def test_infra_blessing_is_checked_too(tmp_path, model_uri):
    model = standard_artifacts.Model()
    model.uri = str(model_uri)
    infra = standard_artifacts.InfraBlessing()
    infra.set_int_custom_property("blessed", 0)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / "pushed")
    executor.Executor().Do(
        {"model": [model], "infra_blessing": [infra]},
        {"pushed_model": [pushed]},
        {executor.MODEL_REPOSITORY_KEY: str(tmp_path / "repo")},
    )
    assert pushed.get_int_custom_property("pushed") == 0
    assert not (tmp_path / "repo").exists()


def test_bad_settings_fail_the_execution_before_writing(tmp_path, model_uri):
    with pytest.raises(repository.PushError, match="preferred_batch_sizes"):
        push_fake_model(
            model_uri,
            tmp_path / "repo",
            tmp_path / "pushed",
            max_batch_size=4,
            preferred_batch_sizes=[8],
        )
    assert not (tmp_path / "repo").exists()


def test_settings_from_exec_properties_defaults_and_types():
    s = executor.settings_from_exec_properties({"model_repository": "/r"})
    assert (
        s
        == repository.TritonPushSettings()
        == repository.TritonPushSettings.from_config(PushConfig())
    )
    s = executor.settings_from_exec_properties(
        {
            "push_config": json.dumps(
                {"preferred_batch_sizes": [16, 8], "max_batch_size": 16, "versions_to_keep": 3}
            )
        }
    )
    assert (s.preferred_batch_sizes, s.max_batch_size, s.versions_to_keep, s.instance_count) == (
        (16, 8),
        16,
        3,
        1,
    )


def test_exec_property_with_a_bad_setting_names_it():
    """A KFP run that overrides push_config by hand gets the config's own error."""
    with pytest.raises(ConfigError, match="(?s)push_config.*max_batch_size"):
        executor.settings_from_exec_properties({"push_config": '{"max_batch_size": 0}'})
    with pytest.raises(ConfigError, match="push_config"):
        executor.settings_from_exec_properties({"push_config": '{"max_batch_size": '})


def test_every_push_setting_reaches_the_executor():
    """No setting of the typed config is dropped on its way through the component."""
    push = PushConfig(
        model_name="m",
        max_batch_size=16,
        preferred_batch_sizes=[16],
        max_queue_delay_us=7,
        instance_count=2,
        flavor="tensorflow",
        versions_to_serve=2,
        versions_to_keep=3,
        max_image_bytes=1000,
        max_image_pixels=2000,
        max_images_per_request=4,
        max_request_bytes=5000,
        max_gif_frames=5,
        max_request_pixels=6000,
        response_cache=True,
    )
    pusher = TritonPusher(
        model_repository="/m", model=_channel(standard_artifacts.Model), push_config=push
    )
    settings = executor.settings_from_exec_properties(pusher.exec_properties)
    assert settings == repository.TritonPushSettings.from_config(push)
    assert dataclasses.asdict(settings) == {
        **push.model_dump(exclude={"enabled", "model_repository"}),
        "preferred_batch_sizes": (16,),
    }


# ------------------------------------------------------------------ component


def _channel(artifact_type):
    return channel.Channel(type=artifact_type)


def test_component_spec():
    pusher = TritonPusher(
        model_repository="/models",
        model=_channel(standard_artifacts.Model),
        model_blessing=_channel(standard_artifacts.ModelBlessing),
        push_config={"preferred_batch_sizes": [4, 8], "max_batch_size": 8},
    )
    assert set(pusher.exec_properties) == {"model_repository", "push_config"}
    assert pusher.exec_properties["model_repository"] == "/models"
    carried = json.loads(pusher.exec_properties["push_config"])
    assert carried == PushConfig(preferred_batch_sizes=[4, 8], max_batch_size=8).model_dump(
        exclude={"enabled", "model_repository"}
    )
    assert pusher.outputs["pushed_model"].type == standard_artifacts.PushedModel
    assert set(pusher.inputs) == {"model", "model_blessing"}
    assert pusher.executor_spec.executor_class is executor.Executor


def test_component_refuses_bad_settings_when_the_pipeline_is_built():
    with pytest.raises(ConfigError, match="versions_to_keep"):
        TritonPusher(
            model_repository="/m",
            model=_channel(standard_artifacts.Model),
            push_config={"flavor": "tensorflow", "versions_to_serve": 3, "versions_to_keep": 2},
        )
    with pytest.raises(repository.PushError, match="preferred_batch_sizes"):
        TritonPusher(
            model_repository="/m",
            model=_channel(standard_artifacts.Model),
            push_config={"max_batch_size": 4, "preferred_batch_sizes": [8]},
        )
    with pytest.raises(ValueError, match="needs `model`"):
        TritonPusher(model_repository="/m")


def test_compiles_for_kubeflow_v2(tmp_path):
    """Both exec properties become plain STRING pipeline parameters."""
    model = tfx.dsl.Importer(
        source_uri="gs://b/model", artifact_type=standard_artifacts.Model
    ).with_id("model")
    blessing = tfx.dsl.Importer(
        source_uri="gs://b/blessing", artifact_type=standard_artifacts.ModelBlessing
    ).with_id("blessing")
    pusher = TritonPusher(
        model_repository="gs://b/repository",
        model=model.outputs["result"],
        model_blessing=blessing.outputs["result"],
    )
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="hoh-push", pipeline_root="gs://b/root", components=[model, blessing, pusher]
    )
    output = tmp_path / "pipeline.yaml"
    tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image="hoh:test"),
        output_filename=str(output),
    ).run(pipeline)
    import yaml

    spec = yaml.safe_load(output.read_text())
    params = spec["components"]["TritonPusher"]["inputDefinitions"]["parameters"]
    assert {k: v["type"] for k, v in params.items()} == {
        "model_repository": "STRING",
        "push_config": "STRING",
    }
    container = spec["deploymentSpec"]["executors"]["TritonPusher_executor"]["container"]
    assert "hoh.components.triton_pusher.executor.Executor" in container["args"]
