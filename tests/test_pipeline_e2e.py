"""The whole DAG with LocalDagRunner on tiny generated data (tiny profile: 32px, 1 epoch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_span_root

from hoh.config import builtin_config_path, load_config

pytestmark = pytest.mark.e2e


def _config(data_root: Path, output: Path, *overrides: str):
    return load_config(
        builtin_config_path("tiny"),
        list(overrides),
        **{"data.root": str(data_root), "output_dir": str(output)},
    )


def _mlmd(output: Path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(output / "metadata.sqlite")
    return metadata_store.MetadataStore(config)


@pytest.fixture(scope="module")
def two_class_runs(tmp_path_factory, tiny_span):
    from hoh.pipeline.runners.local import run_local

    output = tmp_path_factory.mktemp("run2")
    cfg = _config(tiny_span, output)
    first_lines, second_lines = [], []
    first = run_local(cfg, echo=first_lines.append)
    second = run_local(cfg, echo=second_lines.append)
    return output, first, second, first_lines, second_lines


def test_first_run_executes_every_component_and_blesses(two_class_runs):
    output, first, _, lines, _ = two_class_runs
    ids = [c.component_id for c in first.components]
    for expected in (
        "ImportExampleGen",
        "StatisticsGen",
        "ImportSchemaGen",
        "ExampleValidator",
        "AnomaliesGate",
        "Transform",
        "Trainer",
        "latest_blessed_model_resolver",
        "Evaluator",
    ):
        assert expected in ids
    assert all(c.status == "done" for c in first.components)
    assert any(line.startswith("✔ Trainer ") for line in lines)
    assert any(line.strip().startswith("epoch 1:") for line in lines)
    assert first.example_counts["train"] > 0 and first.example_counts["eval"] > 0
    assert first.blessed is True and not first.has_baseline
    assert {"auc", "binary_accuracy", "example_count"} <= set(first.metrics)
    assert first.metrics["example_count"] == first.example_counts["eval"]
    # The default `model.class_weights: auto` decided, and the summary says what and why.
    assert first.class_weights.startswith("none (auto: largest class "), first.class_weights
    assert any(line.startswith("class weights: none (auto") for line in first.lines())


def test_artifacts_and_mlmd_state(two_class_runs):
    output = two_class_runs[0]
    store = _mlmd(output)
    models = store.get_artifacts_by_type("Model")
    assert len(models) == 1  # the second run reused it
    serving = Path(models[0].uri) / "Format-Serving"
    assert (serving / "saved_model.pb").is_file()
    assert (serving / "assets.extra" / "labels.txt").read_text().split() in (
        ["horses", "humans"],
        ["humans", "horses"],
    )
    blessings = store.get_artifacts_by_type("ModelBlessing")
    assert blessings and all(b.custom_properties["blessed"].int_value == 1 for b in blessings)
    run_dirs = list((Path(models[0].uri).parent.parent / "model_run").glob("*/history.json"))
    assert run_dirs, "training curves are kept with the model run"
    assert list(run_dirs[0].parent.rglob("events.out.tfevents.*")), "TensorBoard logs in model_run"
    timing = json.loads((run_dirs[0].parent / "timing.json").read_text())
    assert timing["fit_seconds"] > 0 and timing["epochs"] == 1


def test_second_run_reuses_cached_executions(two_class_runs):
    _, first, second, _, lines = two_class_runs
    cached = {c.component_id for c in second.components if c.cached}
    assert {"ImportExampleGen", "StatisticsGen", "Transform", "Trainer"} <= cached
    assert any("(cached)" in line for line in lines)
    # Same model, now compared against itself as the blessed baseline: still blessed.
    assert second.blessed is True and second.has_baseline


def test_three_class_variant(tmp_path_factory):
    from hoh.pipeline.runners.local import run_local

    root = tmp_path_factory.mktemp("three")
    data = make_span_root(root, ("birds", "horses", "humans"), per_class=12, size=48)
    summary = run_local(_config(data, root / "out"), echo=lambda line: None)
    assert summary.blessed is True
    assert "sparse_categorical_accuracy" in summary.metrics
    store = _mlmd(root / "out")
    labels = Path(
        store.get_artifacts_by_type("Model")[0].uri, "Format-Serving", "assets.extra", "labels.txt"
    )
    assert sorted(labels.read_text().split()) == ["birds", "horses", "humans"]


def test_onnx_flavour_from_pipeline_to_hoh_predict(tmp_path_factory):
    """`push.flavor: onnx` end to end: the pipeline pushes the ensemble, the bundled Triton
    serves it, `hoh predict` answers what the Trainer's own SavedModel answers (PNG and JPEG)."""
    import io

    from onnx_support import running_server
    from PIL import Image
    from tiny_model import predict_in_process

    from hoh.pipeline.runners.local import run_local

    root = tmp_path_factory.mktemp("onnx")
    data = make_span_root(root, ("birds", "horses", "humans"), per_class=12, size=48)
    cfg = _config(data, root / "out", "push.flavor=onnx")
    summary = run_local(cfg, echo=lambda line: None)
    assert summary.blessed is True and summary.pushed is True
    repository = Path(cfg.model_repository)
    ensemble = (repository / cfg.push.model_name / "config.pbtxt").read_text()
    assert 'platform: "ensemble"' in ensemble
    assert (repository / f"{cfg.push.model_name}_classifier" / "1" / "model.onnx").is_file()

    png = sorted((root / "images").rglob("*.png"))[0]
    jpeg = root / "photo.jpg"
    with Image.open(png) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=85)
    jpeg.write_bytes(buffer.getvalue())
    with running_server(repository, root / "triton.log") as server:
        rows = json.loads(
            subprocess.run(
                [sys.executable, "-m", "hoh.cli", "predict", str(png), str(jpeg)]
                + ["--url", server.http_url, "--json"],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
        )
    [model] = _mlmd(root / "out").get_artifacts_by_type("Model")
    serving = Path(model.uri, "Format-Serving")
    reference = predict_in_process(serving, [png.read_bytes(), jpeg.read_bytes()])
    names = (serving / "assets.extra" / "labels.txt").read_text().split()
    assert [r["label"] for r in rows] == [s.decode() for s in reference["label"].reshape(-1)]
    for row, expected in zip(rows, reference["probabilities"]):
        assert set(row["probabilities"]) == {"birds", "horses", "humans"}
        served = [row["probabilities"][name] for name in names]
        assert max(abs(a - b) for a, b in zip(served, expected)) < 1e-4


# Old and new classes served side by side: the TensorFlow flavour (docs/MULTICLASS.md).
TWO_VERSIONS = ("push.flavor=tensorflow", "push.versions_to_serve=2")


def test_a_class_added_in_a_new_span_retrains_and_serves_beside_the_old_version(
    tmp_path, backbone_h5
):
    """docs/MULTICLASS.md, as a user runs it, on the real profile's path (a frozen pretrained
    backbone, here a random one saved as .h5): span 1 has 2 classes -> v1; span 2 adds birds at
    the end of data.classes -> the same DAG trains a 3-way head, skips the comparison with the
    2-class model (saying so) and pushes v2; ids of the old classes stay, and the embedding store
    beside the data computes only the images v1's run had not seen."""
    from hoh.data.demo import make_demo_dataset
    from hoh.data.importer import import_images
    from hoh.data.tfrecords import read_ids_labels
    from hoh.errors import HohError
    from hoh.pipeline.runners.local import run_local

    data, out = tmp_path / "data", tmp_path / "out"
    frozen = f"model.weights={backbone_h5}"
    make_demo_dataset(tmp_path / "v1", per_class=12, size=48, classes=("horses", "humans"))
    import_images(tmp_path / "v1", data)
    first = run_local(
        _config(data, out, "data.classes=horses,humans", *TWO_VERSIONS, frozen),
        echo=lambda line: None,
    )
    assert first.blessed and first.pushed_version == "1"
    span_ids = lambda n: set(read_ids_labels([str(data / f"span-{n}" / "*" / "*.gz")])[0])  # noqa: E731
    assert first.embedding_store == {
        "store": str(data / "embeddings"),
        "backbone": first.embedding_store["backbone"],
        "reused": 0,
        "computed": len(span_ids(1)),
    }

    make_demo_dataset(tmp_path / "v2", per_class=12, size=48, classes=("horses", "humans", "birds"))
    import_images(tmp_path / "v2", data)
    with pytest.raises(HohError, match=r"class\(es\) \['birds'\] that data.classes"):
        run_local(
            _config(data, out, "data.classes=horses,humans", *TWO_VERSIONS, frozen),
            echo=lambda line: None,
        )

    lines = []
    second = run_local(
        _config(data, out, "data.classes=horses,humans,birds", *TWO_VERSIONS, frozen),
        echo=lines.append,
    )
    # Each new image went through the backbone once in the whole run: the DriftCheck (which runs
    # first, with the served model's identical frozen backbone) or the Trainer, never both.
    trainer, drift = second.embedding_store, second.drift["embedding_store"]
    assert trainer["computed"] + drift["computed"] == len(span_ids(2) - span_ids(1)) > 0
    assert trainer["computed"] + trainer["reused"] == len(span_ids(2))
    assert any(line.startswith("embedding store: ") for line in second.lines())
    assert any(
        "evaluation: the classes changed (served model: ['horses', 'humans']; this run: "
        "['horses', 'humans', 'birds'])" in line
        for line in lines
    ), lines
    assert second.blessed and not second.has_baseline and second.pushed_version == "2"
    assert "sparse_categorical_accuracy" in second.metrics
    model_dir = out / "model_repository" / "hoh"
    assert (model_dir / "1" / "labels.txt").read_text().split() == ["horses", "humans"]
    assert (model_dir / "2" / "labels.txt").read_text().split() == ["horses", "humans", "birds"]
    # The pusher recorded each version's predictions on its span's eval split (hoh monitor's
    # prediction-drift baseline), in that version's classes.
    for version, classes in (("1", {"horses", "humans"}), ("2", {"horses", "humans", "birds"})):
        record = json.loads((model_dir / version / "eval_predictions.json").read_text())
        assert record["summary"]["images"] == len(record["predictions"]) > 0
        assert {p["predicted"] for p in record["predictions"]} <= classes
    # Both served by one config, each version named (docs/MULTICLASS.md).
    from hoh.components.triton_pusher.repository import parse_model_config

    config = parse_model_config((model_dir / "config.pbtxt").read_text())
    assert list(config.version_policy.specific.versions) == [1, 2]
    named = {k: json.loads(v.string_value) for k, v in config.parameters.items() if "class" in k}
    assert named == {
        "class_names": ["horses", "humans", "birds"],
        "class_names.v1": ["horses", "humans"],
        "class_names.v2": ["horses", "humans", "birds"],
    }


def test_anomalies_stop_the_run_with_a_readable_message(tmp_path, tiny_span):
    from hoh.pipeline.runners.local import PipelineFailed, run_local

    schema = tmp_path / "schema.pbtxt"
    curated = Path(__file__).resolve().parents[1] / "schemas" / "schema.pbtxt"
    schema.write_text(
        curated.read_text()
        + 'feature { name: "camera" type: BYTES presence { min_fraction: 1.0 } }\n'
    )
    cfg = _config(tiny_span, tmp_path / "out", f"schema.path={schema}")
    with pytest.raises(PipelineFailed) as err:
        run_local(cfg, echo=lambda line: None)
    message = str(err.value)
    assert message.startswith("AnomaliesGate failed")
    assert err.value.exit_code == 4  # ExitCode.DATA_ANOMALIES: a scheduler can tell it from a crash
    assert "'camera'" in message and "Traceback" not in message
    store = _mlmd(tmp_path / "out")
    assert not store.get_artifacts_by_type("Model"), "nothing is trained on anomalous data"


def _hoh(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("hoh")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    result = _hoh("run", "--data", str(tmp_path), "--output", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "holds no spans" in result.stderr and "Traceback" not in result.stderr
    result = _hoh("run", "--profile", "tiny", "--set", "model.alpha=7")
    assert result.returncode == 2 and "alpha must be one of" in result.stderr
