"""Per-version class names: one config.pbtxt serving versions with different classes.

The pure pieces (config writing and reading, the client's naming rules, the python backend's
width check) run without a server; the e2e test serves a 2-class and a 3-class version at once
in the bundled Triton and asks each of them, directly and through the gateway.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from onnx_support import running_server
from tiny_model import (
    FAKE_MODEL_FLAVOR,
    build_model_artifact_dir,
    fake_saved_model,
    make_image,
    predict_in_process,
    run_pusher_executor,
)
from tritonclient.grpc import model_config_pb2 as mc

import hoh  # noqa: F401
from hoh.components.triton_pusher import onnx_config, rollback
from hoh.components.triton_pusher import repository as repo
from hoh.components.triton_pusher.model_config import build_model_config, class_name_parameters
from hoh.components.triton_pusher.settings import PushError, ServingModelInfo
from hoh.serving import triton_model as tm
from hoh.serving.client import (
    ClassNamesMissing,
    Prediction,
    TritonImageClient,
    model_info_from_config,
    predictions_from_outputs,
    response_version,
)
from hoh.serving.server import TritonServer

OLD, NEW = ("human", "horse"), ("human", "horse", "bird")
SETTINGS = repo.TritonPushSettings(
    flavor=FAKE_MODEL_FLAVOR, model_name="hoh", versions_to_serve=2, versions_to_keep=3
)


def config_of(repository: Path, name: str = "hoh") -> mc.ModelConfig:
    return repo.parse_model_config((repository / name / "config.pbtxt").read_text())


def names_in(config: mc.ModelConfig) -> dict[str, list[str]]:
    return {
        key: json.loads(value.string_value)
        for key, value in config.parameters.items()
        if key.startswith("class_names")
    }


def expected(names: dict[int, tuple[str, ...]]) -> dict[str, list[str]]:
    """The class-name parameters of a config serving `names` (version -> its classes)."""
    return {"class_names": list(names[max(names)])} | {
        f"class_names.v{v}": list(n) for v, n in names.items()
    }


# ====================================================================== writing the config


def test_every_served_version_is_named_and_class_names_is_the_newest():
    params = class_name_parameters([1, 2], {1: OLD, 2: NEW, 3: ("x", "y")})
    assert {k: json.loads(v) for k, v in params.items()} == {
        "class_names.v1": list(OLD),
        "class_names.v2": list(NEW),
        "class_names": list(NEW),
    }
    with pytest.raises(PushError, match=r"no class names for served version\(s\) 1: "):
        class_name_parameters([1, 2], {2: NEW})


def test_the_probabilities_are_variable_width_and_label_file_only_for_one_class_set():
    info = ServingModelInfo(NEW, None)
    mixed = build_model_config(SETTINGS, info, served=[1, 2], names={1: OLD, 2: NEW})
    assert list(mixed.output[0].dims) == [-1]
    # Triton's classification extension has one label file for every version: none when the
    # versions' classes differ, rather than the wrong names for one of them.
    assert mixed.output[0].label_filename == ""
    same = build_model_config(SETTINGS, info, served=[1, 2])
    assert same.output[0].label_filename == "2/labels.txt"
    assert names_in(same) == expected({1: NEW, 2: NEW})


def test_pushes_keep_each_served_versions_names_and_drop_retired_ones(tmp_path):
    repository = tmp_path / "repo"
    repo.push_model(str(fake_saved_model(tmp_path / "a", OLD)), str(repository), SETTINGS)
    assert names_in(config_of(repository)) == expected({1: OLD})
    new = fake_saved_model(tmp_path / "b", NEW, pb=b"3 classes")
    repo.push_model(str(new), str(repository), SETTINGS)
    config = config_of(repository)
    assert list(config.version_policy.specific.versions) == [1, 2]
    assert names_in(config) == expected({1: OLD, 2: NEW})
    gpu = repo.parse_model_config((repository / "hoh" / "configs" / "gpu.pbtxt").read_text())
    assert names_in(gpu) == names_in(config)
    repo.push_model(
        str(fake_saved_model(tmp_path / "c", NEW, pb=b"again")), str(repository), SETTINGS
    )
    config = config_of(repository)
    assert list(config.version_policy.specific.versions) == [2, 3]
    assert names_in(config) == expected({2: NEW, 3: NEW})
    assert config.output[0].label_filename == "3/labels.txt"


def test_a_rollback_serves_the_old_classes_beside_the_new_ones(tmp_path):
    repository = tmp_path / "repo"
    repo.push_model(str(fake_saved_model(tmp_path / "a", OLD)), str(repository), SETTINGS)
    repo.push_model(str(fake_saved_model(tmp_path / "b", NEW, pb=b"3")), str(repository), SETTINGS)
    result = rollback.republish(str(repository), SETTINGS, 1)
    assert result.version == 3
    assert names_in(config_of(repository)) == expected({2: NEW, 3: OLD})


def test_a_served_version_without_labels_is_refused_and_nothing_changes(tmp_path):
    repository = tmp_path / "repo"
    repo.push_model(str(fake_saved_model(tmp_path / "a", OLD)), str(repository), SETTINGS)
    before = (repository / "hoh" / "config.pbtxt").read_bytes()
    (repository / "hoh" / "1" / "labels.txt").unlink()
    new = fake_saved_model(tmp_path / "b", NEW, pb=b"3")
    with pytest.raises(PushError, match=r"served version\(s\) 1: their labels.txt is missing"):
        repo.push_model(str(new), str(repository), SETTINGS)
    assert (repository / "hoh" / "config.pbtxt").read_bytes() == before
    assert repo.list_versions(str(repository / "hoh")) == [1]


def test_onnx_ensemble_names_its_one_version_and_the_steps_name_none():
    settings = repo.TritonPushSettings(model_name="hoh", flavor="onnx")
    info = ServingModelInfo(NEW, None)
    ensemble = onnx_config.ensemble_config(settings, info, [4], 2, 3)
    assert names_in(ensemble) == expected({4: NEW})
    assert list(ensemble.output[0].dims) == [-1]
    assert names_in(onnx_config.preprocess_config(settings, info, 32, [1, 2])) == {}
    for variant, dims in (("local", [-1]), ("stock", [3]), ("gpu", [3])):
        classifier = onnx_config.classifier_config(settings, info, 32, [1, 2], variant)
        assert names_in(classifier) == {}
        assert list(classifier.output[0].dims) == dims  # the native backend wants the width


# ====================================================================== reading it


def http_config(parameters: dict, dims=(-1,)) -> dict:
    return {
        "name": "hoh",
        "max_batch_size": 8,
        "output": [{"name": "probabilities", "dims": list(dims)}],
        "parameters": {k: {"string_value": v} for k, v in parameters.items()},
    }


def test_the_client_names_the_answering_versions_classes():
    config = http_config(
        {
            "class_names": json.dumps(NEW),
            "class_names.v1": json.dumps(OLD),
            "class_names.v2": json.dumps(NEW),
        }
    )
    info = model_info_from_config(config)
    assert info.names_for("1", 2) == OLD and info.names_for("2", 3) == NEW
    assert model_info_from_config({"config": config}) == info  # gRPC's as_json wrapping
    with pytest.raises(ClassNamesMissing, match=r"version 3, whose classes .*class_names.v3"):
        info.names_for("3", 3)
    with pytest.raises(ClassNamesMissing, match="version 1 answered 3 probabilities but"):
        info.names_for("1", 3)
    rows = predictions_from_outputs(np.array([[0.1, 0.2, 0.7]]), None, NEW, "2")
    assert rows[0].label == "bird" and rows[0].version == "2"
    assert list(rows[0].probabilities) == list(NEW)
    with pytest.raises(ClassNamesMissing, match="3 probabilities but 2 class names"):
        predictions_from_outputs(np.array([[0.1, 0.2, 0.7]]), None, OLD)


def test_configs_from_before_per_version_names_and_from_elsewhere():
    legacy = model_info_from_config(http_config({"class_names": json.dumps(OLD)}, dims=(2,)))
    assert legacy.names_for("7", 2) == OLD
    with pytest.raises(ClassNamesMissing, match="answered 3 probabilities"):
        legacy.names_for("7", 3)
    foreign = model_info_from_config(http_config({}, dims=(2,)))
    assert foreign.names_for("1", 2) == ("class_0", "class_1")  # the width it declares
    with pytest.raises(ClassNamesMissing, match="no fixed probabilities width"):
        model_info_from_config(http_config({})).names_for("1", 2)
    with pytest.raises(Exception, match="class_names.v1 is not a JSON list of strings"):
        model_info_from_config(http_config({"class_names.v1": '{"a": 1}'}))


def test_the_answering_version_comes_from_http_and_grpc_results():
    http = SimpleNamespace(get_response=lambda: {"model_name": "hoh", "model_version": "2"})
    grpc = SimpleNamespace(get_response=lambda: SimpleNamespace(model_version="1"))
    assert (response_version(http), response_version(grpc)) == ("2", "1")
    assert response_version(SimpleNamespace(get_response=lambda: {})) == ""


def test_the_python_backend_refuses_a_width_its_config_does_not_name():
    config = {"parameters": {"class_names.v2": {"string_value": json.dumps(NEW)}}}
    assert tm.version_class_names(config, "2") == list(NEW)
    assert tm.version_class_names(config, "1") is None
    tm.check_width(np.zeros((4, 3), np.float32), list(NEW), "2")
    tm.check_width(np.zeros((4, 2), np.float32), None, "1")  # unnamed: nothing to check
    with pytest.raises(ValueError, match=r"version 2 answered 2 probabilities .* 3 classes"):
        tm.check_width(np.zeros((4, 2), np.float32), list(NEW), "2")


def test_hoh_predict_refuses_a_version_that_is_not_a_number(tmp_path, capsys):
    from hoh import cli

    image = tmp_path / "a.png"
    image.write_bytes(make_image(1))
    code = cli.main(["predict", str(image), "--model-version", "latest"])
    assert code == 2
    assert "--model-version 'latest': expected a version number" in capsys.readouterr().err


# ====================================================================== real server


@dataclass
class TwoVersions:
    server: TritonServer
    models: dict[str, Path]  # version -> its SavedModel
    root: Path


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """Version 1 (2 classes) and version 2 (3 classes) of one model, both served."""
    root = tmp_path_factory.mktemp("class-names")
    models = {}
    for version, (classes, seed) in {"1": (OLD, 0), "2": (NEW, 1)}.items():
        build_model_artifact_dir(root / f"model-{version}", class_names=classes, seed=seed)
        models[version] = root / f"model-{version}" / "Format-Serving"
        run_pusher_executor(
            root / f"model-{version}",
            root / "repository",
            root / f"pushed-{version}",
            max_batch_size=4,
            preferred_batch_sizes=[4],
            versions_to_serve=2,  # two class sets at once: the TensorFlow flavour's
            versions_to_keep=2,
            flavor="tensorflow",
        )
    with running_server(root / "repository", root / "triton.log") as server:
        yield TwoVersions(server, models, root)


def assert_answers(predictions, two_versions: TwoVersions, version: str, batch) -> None:
    """Labelled with `version`'s classes, and the numbers are that version's model's."""
    reference = predict_in_process(two_versions.models[version], batch)
    classes = OLD if version == "1" else NEW
    assert [p.version for p in predictions] == [version] * len(batch)
    assert [p.label for p in predictions] == [x.decode() for x in reference["label"]]
    for p, row in zip(predictions, reference["probabilities"]):
        assert list(p.probabilities) == list(classes)
        assert np.allclose(list(p.probabilities.values()), row, atol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_each_version_answers_with_its_own_classes(two_versions, protocol):
    server = two_versions.server
    url = server.http_url if protocol == "http" else server.grpc_url
    assert server.model_states() == "hoh v1: READY; hoh v2: READY"
    batch = [make_image(40 + i) for i in range(6)]  # more than max_batch_size: two requests
    for pinned, expected in (("1", "1"), ("2", "2"), ("", "2")):
        with TritonImageClient(url, protocol=protocol, model_version=pinned) as client:
            assert client.model_info().class_names == NEW  # `class_names`: the newest
            assert_answers(client.predict(batch), two_versions, expected, batch)


@pytest.mark.e2e
def test_hoh_predict_pinned_to_the_old_version(two_versions):
    image = two_versions.root / "a.png"
    image.write_bytes(make_image(77))
    args = [sys.executable, "-m", "hoh.cli", "predict", str(image), "--json"]
    args += ["--url", two_versions.server.http_url]
    rows = {}
    for pinned in ("1", ""):
        out = subprocess.run(
            args + (["--model-version", pinned] if pinned else []),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        (rows[pinned],) = json.loads(out)
    assert (rows["1"]["version"], list(rows["1"]["probabilities"])) == ("1", list(OLD))
    assert (rows[""]["version"], list(rows[""]["probabilities"])) == ("2", list(NEW))


@pytest.mark.e2e
def test_the_gateway_labels_with_the_answering_versions_classes(two_versions):
    import asyncio

    import httpx

    from hoh.serving.gateway.app import create_app
    from hoh.serving.gateway.settings import load_settings

    settings = load_settings(
        None,
        {
            "insecure_no_auth": True,
            "triton_url": two_versions.server.grpc_url,
            "audit_dir": str(two_versions.root / "audit"),
        },
        {},
    )
    image = make_image(88)

    async def ask(app, pinned: str) -> dict:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            if pinned is None:
                return (await client.get("/v1/models")).json()
            response = await client.post(
                "/v1/models/hoh/predict",
                params={"version": pinned} if pinned else {},
                content=image,
                headers={"content-type": "image/png"},
            )
            assert response.status_code == 200, response.text
            return response.json()

    async def scenario():
        app = create_app(settings)
        async with app.router.lifespan_context(app):  # starts the gateway's Triton channel
            return {p: await ask(app, p) for p in ("1", "2", "", None)}

    answers = asyncio.run(scenario())
    for pinned, expected in (("1", "1"), ("2", "2"), ("", "2")):
        body = answers[pinned]
        (p,) = body["predictions"]
        got = Prediction(p["class"], p["probability"], p["probabilities"], body["version"])
        assert_answers([got], two_versions, expected, [image])
    (model,) = answers[None]["models"]
    assert model["classes"] == list(NEW)
    assert model["classes_by_version"] == {"1": list(OLD), "2": list(NEW)}
