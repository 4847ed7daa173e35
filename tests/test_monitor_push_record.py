"""The pusher records the model's eval predictions; `hoh monitor` uses them, or says it cannot.

A real TritonPusher executor run on a tiny real SavedModel and a span imported with `hoh data
import`'s code, laid out as an Examples artifact: the record in the published version directory
must hold exactly the model's own answers on the eval split.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_model import build_model_artifact_dir, predict_in_process, run_pusher_executor

import hoh  # noqa: F401

pytest.importorskip("tfx")

from hoh.components.monitor import monitor  # noqa: E402
from hoh.config import MonitorConfig  # noqa: E402
from hoh.data.sources import tfrecord_source  # noqa: E402
from hoh.trainer import eval_predictions  # noqa: E402

CLASSES = ("human", "horse")


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """(version directory, data root, eval images) after one push with the examples."""
    from hoh.data.demo import make_demo_dataset
    from hoh.data.importer import import_images

    root = tmp_path_factory.mktemp("push_record")
    make_demo_dataset(root / "images", per_class=12, size=48)
    import_images(root / "images", root / "data")
    examples = root / "examples"
    for split in ("train", "eval"):
        shutil.copytree(root / "data" / "span-1" / split, examples / f"Split-{split}")
    model = root / "model"
    build_model_artifact_dir(model, class_names=CLASSES)
    run_pusher_executor(
        model, root / "repo", root / "pushed", examples_uri=examples, model_name="clf"
    )
    images = [r.data for r in tfrecord_source([str(examples / "Split-eval")], "eval")]
    return root / "repo" / "clf" / "1", root / "data", model, images


def test_the_push_records_the_models_own_eval_predictions(pushed):
    version_dir, _, model, images = pushed
    data = json.loads((version_dir / eval_predictions.RECORD_FILE).read_text())
    probabilities = predict_in_process(model / "Format-Serving", images)["probabilities"]
    expected = [(CLASSES[int(np.argmax(p))], round(float(np.max(p)), 6)) for p in probabilities]
    got = [(p["predicted"], p["confidence"]) for p in data["predictions"]]
    assert len(images) > 0 and len(got) == len(images)
    assert [c for c, _ in got] == [c for c, _ in expected]
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=1e-5)
    summary = data["summary"]
    assert summary["images"] == len(images) and data["skipped"] == []
    share = {c: sum(1 for g, _ in got if g == c) / len(got) for c in {g for g, _ in got}}
    assert summary["class_share"] == pytest.approx(share, abs=1e-6)
    assert summary["mean_confidence"] == pytest.approx(np.mean([c for _, c in got]), abs=1e-5)
    assert data["source"].startswith("eval split of ") and data["model_version"] is None


def test_a_push_without_examples_writes_no_record(tmp_path):
    build_model_artifact_dir(tmp_path / "model", class_names=CLASSES)
    run_pusher_executor(tmp_path / "model", tmp_path / "repo", tmp_path / "pushed")
    version_dir = tmp_path / "repo" / "hoh" / "1"
    assert json.loads((version_dir / "hoh_push.json").read_text())["flavor"] == "onnx"  # default
    assert not (version_dir / eval_predictions.RECORD_FILE).exists()


def test_the_monitor_reads_the_record_and_never_the_reference_data(pushed, tmp_path):
    version_dir, _, _, _ = pushed
    lines: list[str] = []
    rows, origin = monitor._reference_predictions(
        str(tmp_path / "no-such-data"),  # never opened: the record is enough
        None,
        str(version_dir),
        lambda: pytest.fail("the model must not be loaded when the record is there"),
        MonitorConfig(),
        tmp_path,
        lines.append,
    )
    recorded = json.loads((version_dir / eval_predictions.RECORD_FILE).read_text())
    assert rows == [(p["predicted"], p["confidence"]) for p in recorded["predictions"]]
    assert origin["recorded"] == str(version_dir / eval_predictions.RECORD_FILE)
    assert monitor.pushed_record(version_dir / "model.savedmodel") == Path(origin["recorded"])
    assert lines == [] and not (tmp_path / monitor.REFERENCE_PREDICTIONS).exists()


def test_a_version_pushed_before_the_record_is_computed_and_said_so(pushed, tmp_path):
    from hoh.trainer.predictor import Predictor

    version_dir, data_root, _, _ = pushed
    old = tmp_path / "repo" / "clf" / "1"
    shutil.copytree(version_dir, old)
    (old / eval_predictions.RECORD_FILE).unlink()
    lines: list[str] = []
    predictor = Predictor(old, embeddings=False)
    rows, origin = monitor._reference_predictions(
        str(data_root), None, str(old), lambda: predictor, MonitorConfig(), tmp_path, lines.append
    )
    assert origin["recorded"] is None and len(rows) > 0
    assert any(f"holds no {eval_predictions.RECORD_FILE}" in line for line in lines)
    saved = json.loads((tmp_path / monitor.REFERENCE_PREDICTIONS).read_text())
    rounded = [(c, round(p, 6)) for c, p in rows]
    assert [(p["predicted"], p["confidence"]) for p in saved["predictions"]] == rounded
    # The same model on the same eval split: what the push recorded.
    recorded = json.loads((version_dir / eval_predictions.RECORD_FILE).read_text())
    assert [(p["predicted"], p["confidence"]) for p in recorded["predictions"]] == rounded
