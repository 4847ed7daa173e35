"""Rolling back a repository pushed as the ONNX flavour (`rollback.republish`).

Real pushes of tiny real models with the real pusher: the old version's model.onnx, labels and
preprocessing files are published again as the next version of all three models, the ensemble
pins them, and a real bundled tritonserver then answers with the old model's probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx_support import running_server
from tiny_model import IMAGE_SIZE, build_tiny_model, make_image

import hoh  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from hoh.components.triton_pusher import flavors, onnx_config, repository, rollback
from hoh.components.triton_pusher.model_config import parse_model_config
from hoh.serving import onnx_preprocess_model as pre

CLASSES = ("human", "horse")
STEPS = ("hoh_preprocess", "hoh_classifier")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("rollback-models")
    return {seed: build_tiny_model(root / f"m{seed}", CLASSES, seed=seed) for seed in (0, 3)}


def push(model: Path, repo: Path, **values) -> repository.PushResult:
    settings = settings_of(**values)
    return flavors.push_model(str(model), str(repo), settings, source=str(model))


def settings_of(**values) -> repository.TritonPushSettings:
    values = {"flavor": "onnx", "max_batch_size": 8, "preferred_batch_sizes": (4, 8), **values}
    return repository.TritonPushSettings(**values)


def files(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in repo.rglob("*") if p.is_file()}


def ensemble_steps(repo: Path) -> list[tuple[str, int]]:
    config = parse_model_config((repo / "hoh" / "config.pbtxt").read_text())
    return [(s.model_name, s.model_version) for s in config.ensemble_scheduling.step]


def onnx_probabilities(model_onnx: bytes, images: list[bytes]) -> np.ndarray:
    import onnxruntime as ort

    pixels = np.stack([pre.preprocess(d, IMAGE_SIZE) for d in images])
    session = ort.InferenceSession(model_onnx, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": pixels})[0]


@pytest.fixture()
def two_pushes(tmp_path, models) -> Path:
    """ONNX v1 (seed 0), v2 (seed 3) of `hoh`, and a `second` model beside it."""
    repo = tmp_path / "repo"
    push(models[0], repo, model_name="second")
    push(models[0], repo, versions_to_keep=3)
    push(models[3], repo, versions_to_keep=3)
    return repo


def test_republish_serves_version_1s_onnx_again_and_leaves_other_models(two_pushes, models):
    repo = two_pushes
    second = {k: v for k, v in files(repo).items() if k.startswith("second")}
    warmup = parse_model_config((repo / "hoh_preprocess" / "config.pbtxt").read_text()).model_warmup
    result = rollback.republish(str(repo), settings_of(versions_to_keep=3), 1)
    assert (result.version, result.pushed) == (3, True)
    assert repository.served_versions(str(repo / "hoh")) == [3]
    assert ensemble_steps(repo) == [("hoh_preprocess", 3), ("hoh_classifier", 3)]
    cls = repo / "hoh_classifier"
    assert (cls / "3" / "model.onnx").read_bytes() == (cls / "1" / "model.onnx").read_bytes()
    assert (cls / "3" / "model.onnx").read_bytes() != (cls / "2" / "model.onnx").read_bytes()
    for rel in ("model.py", "hoh_triton_model.py", "hoh_imagecheck.py"):
        step = repo / "hoh_preprocess"
        assert (step / "3" / rel).read_bytes() == (step / "1" / rel).read_bytes()
    for name in STEPS:  # the steps the replaced ensemble used stay served until the next push
        assert repository.served_versions(str(repo / name)) == [2, 3]
    preprocess = parse_model_config((repo / "hoh_preprocess" / "config.pbtxt").read_text())
    assert preprocess.parameters["image_size"].string_value == str(IMAGE_SIZE)
    assert preprocess.model_warmup == warmup  # the shared sample image still warms it
    info = json.loads((repo / "hoh" / "3" / "hoh_push.json").read_text())
    assert info["republished_from"] == 1 and info["source"] == str(models[0])
    assert info["flavor"] == "onnx" and info["class_names"] == list(CLASSES)
    step_info = json.loads((cls / "3" / "hoh_push.json").read_text())
    assert step_info["pusher"] == info["pusher"]  # the three versions of one publish
    assert (repo / "hoh" / "3" / "labels.txt").read_text() == "human\nhorse\n"
    assert rollback.pushed_version_of(str(repo), "hoh", str(models[0])) == 3
    assert {k: v for k, v in files(repo).items() if k.startswith("second")} == second

    # Rolling back to what is served already publishes nothing; a republished version can be
    # republished in turn (its steps are found by its own pusher id).
    again = rollback.republish(str(repo), settings_of(versions_to_keep=3), 3)
    assert (again.version, again.pushed) == (3, False)
    forward = rollback.republish(str(repo), settings_of(versions_to_keep=3), 2)
    assert forward.version == 4 and ensemble_steps(repo) == [(s, 4) for s in STEPS]
    assert (cls / "4" / "model.onnx").read_bytes() == (cls / "2" / "model.onnx").read_bytes()
    back = rollback.republish(str(repo), settings_of(versions_to_keep=3), 3)
    assert back.version == 5
    assert (cls / "5" / "model.onnx").read_bytes() == (cls / "3" / "model.onnx").read_bytes()


def test_undo_push_puts_the_onnx_repository_back_exactly(two_pushes):
    repo = two_pushes
    before = files(repo)
    snapshot = rollback.config_snapshot(str(repo), "hoh")
    result = rollback.republish(str(repo), settings_of(versions_to_keep=3), 1)
    assert result.version == 3
    assert rollback.undo_push(str(repo), "hoh", snapshot, result.version)
    assert files(repo) == before
    assert ensemble_steps(repo) == [(s, 2) for s in STEPS]


def test_a_flavour_switch_rolls_back_to_each_versions_own_flavour(tmp_path, models):
    repo = tmp_path / "repo"
    push(models[0], repo, flavor="tensorflow")  # v1: TensorFlow flavour
    push(models[3], repo)  # v2: ONNX ensemble
    settings = settings_of()  # the config says onnx; version 1 on disk is tensorflow
    tf = rollback.republish(str(repo), settings, 1)
    config = parse_model_config((repo / "hoh" / "config.pbtxt").read_text())
    assert tf.version == 3 and config.backend == "python" and config.platform == ""
    assert (repo / "hoh" / "3" / "model.savedmodel" / "saved_model.pb").is_file()
    assert rollback.version_flavor(str(repo / "hoh"), 3) == "tensorflow"

    onnx = rollback.republish(str(repo), settings_of(flavor="tensorflow"), 2)
    config = parse_model_config((repo / "hoh" / "config.pbtxt").read_text())
    assert onnx.version == 4 and config.platform == "ensemble"
    assert ensemble_steps(repo) == [(s, 2) for s in STEPS]
    cls = repo / "hoh_classifier"
    assert (cls / "2" / "model.onnx").read_bytes() == (cls / "1" / "model.onnx").read_bytes()


@pytest.mark.parametrize(
    "remove, problem",
    [
        ("hoh_classifier/1/model.onnx", r"hoh_classifier/1 has no model\.onnx"),
        ("hoh_preprocess/1/model.py", r"hoh_preprocess/1 has no model\.py"),
        ("hoh_classifier/1", "the hoh_classifier version pushed with it is gone from disk"),
        ("hoh/1/labels.txt", r"hoh/1 has no labels\.txt"),
    ],
)
def test_missing_files_are_refused_by_name_and_nothing_changes(two_pushes, remove, problem):
    import shutil

    repo = two_pushes
    target = repo / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    before = files(repo)
    with pytest.raises(rollback.RollbackError, match=rf"version 1 of .*hoh .*{problem}"):
        rollback.republish(str(repo), settings_of(), 1)
    assert files(repo) == before
    assert repository.served_versions(str(repo / "hoh")) == [2]


def test_a_failing_republish_writes_nothing(two_pushes, monkeypatch):
    repo = two_pushes
    before = files(repo)

    def fails(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_config, "ensemble_config", fails)
    with pytest.raises(OSError, match="No space left"):
        rollback.republish(str(repo), settings_of(versions_to_keep=3), 1)
    assert files(repo) == before
    for name in ("hoh", *STEPS):
        assert repository.list_versions(str(repo / name)) == [1, 2]


@pytest.mark.e2e
def test_a_real_server_answers_with_version_1s_model_after_the_rollback(two_pushes, tmp_path):
    from hoh.serving.client import TritonImageClient

    repo = two_pushes
    images = [make_image(200 + i, size=(30 + 7 * i, 41)) for i in range(4)]
    cls = repo / "hoh_classifier"
    v1 = onnx_probabilities((cls / "1" / "model.onnx").read_bytes(), images)
    v2 = onnx_probabilities((cls / "2" / "model.onnx").read_bytes(), images)
    assert not np.allclose(v1, v2, atol=1e-3)  # the rollback is visible in the answers
    assert rollback.republish(str(repo), settings_of(versions_to_keep=3), 1).version == 3
    with running_server(repo, tmp_path / "triton.log") as server:
        with TritonImageClient(server.http_url, model_name="hoh") as client:
            probabilities, labels = client.infer(images)
            assert client.model_info().class_names == CLASSES
    np.testing.assert_allclose(probabilities, v1, rtol=0, atol=1e-6)
    assert labels == [CLASSES[i] for i in np.argmax(v1, axis=1)]


def test_hoh_models_rollback_of_an_onnx_repository(tmp_path, models, capsys, monkeypatch):
    """The registry's rollback (pipeline/tracking) over ONNX pushes, then its undo path."""
    from mlflow.tracking import MlflowClient
    from test_tracking import cli, make_cfg, summary

    from hoh.pipeline.tracking import registry, store
    from hoh.pipeline.tracking.log import track_run

    cfg = make_cfg(tmp_path / "out", "push.flavor=onnx", "push.versions_to_keep=5")
    for name, seed in (("a", 0), ("b", 3)):
        result = push(models[seed], Path(cfg.model_repository), versions_to_keep=5)
        track_run(
            cfg,
            summary(name, pushed_version=result.version, destination=result.version_dir),
            lambda line: None,
        )
    repo = Path(cfg.model_repository)
    cls = repo / "hoh_classifier"
    v1 = (cls / "1" / "model.onnx").read_bytes()
    # The command reads the default config (push.flavor: tensorflow): the flavour is version 1's.
    code, text = cli(capsys, "models", "rollback", "1", "--output", cfg.output_dir)
    assert code == 0, text
    assert repository.served_versions(str(repo / "hoh")) == [3]
    assert ensemble_steps(repo) == [(s, 3) for s in STEPS]
    assert (cls / "3" / "model.onnx").read_bytes() == v1
    client = store.client(cfg)
    assert registry.aliases(client, "hoh")["champion"] == "1"
    assert registry.find_version(client, cfg, "1").tags["triton_version"] == "3"

    # The registry refuses the next move: the ONNX repository goes back to what it served.
    before = files(repo)

    def refuse(*args, **kwargs):
        raise RuntimeError("registry is read-only")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(store.TrackingUnavailable, match="Triton serves \\[3\\] again"):
        registry.serve_version(cfg, "2", "rollback")
    assert files(repo) == before
