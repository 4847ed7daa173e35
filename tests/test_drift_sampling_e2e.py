"""DriftCheck, the drift gate and ActiveLearningSampler inside the real DAG (LocalDagRunner, tiny
profile), and the gated DAG compiled for Kubeflow.

Two runs share one output directory, as scheduled runs do: run 1 on span 1 (no reference, the
model is pushed), run 2 after a shifted span 2 arrives (drift detected, the push is held).
Both runs score an unlabeled pool imported with `hoh data import --unlabeled`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_span_root
from PIL import Image
from test_drift import _shift

from hoh.config import builtin_config_path, load_config

pytestmark = pytest.mark.e2e
K = 5


def _mlmd(output: Path):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(output / "metadata.sqlite")
    return metadata_store.MetadataStore(config)


def _props(artifact) -> dict:
    return {
        k: v.int_value
        if v.HasField("int_value")
        else v.double_value
        if v.HasField("double_value")
        else v.string_value
        for k, v in artifact.custom_properties.items()
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from hoh.data.demo import make_demo_dataset
    from hoh.data.importer import import_images
    from hoh.pipeline.runners.local import run_local

    root = tmp_path_factory.mktemp("drift_e2e")
    data = make_span_root(root)  # span 1: demo images, 24 per class, 64 px
    make_demo_dataset(root / "pool-images", per_class=10, size=64, seed=11)
    pool_report = import_images(root / "pool-images", root / "pool", unlabeled=True)
    cfg = load_config(
        builtin_config_path("tiny"),
        ["drift.block_push=true", f"sampling.pool_root={root / 'pool'}", f"sampling.k={K}"],
        **{"data.root": str(data), "output_dir": str(root / "out")},
    )
    first_lines, second_lines = [], []
    first = run_local(cfg, echo=first_lines.append)
    shifted = root / "shifted-images"
    for path in (root / "images").rglob("*.png"):
        target = shifted / path.relative_to(root / "images")
        target.parent.mkdir(parents=True, exist_ok=True)
        _shift(Image.open(path)).save(target)
    import_images(shifted, data)  # span 2
    second = run_local(cfg, echo=second_lines.append)
    return root / "out", first, second, second_lines, pool_report.written


def _by_run(store, type_name: str) -> list:
    return sorted(store.get_artifacts_by_type(type_name), key=lambda a: a.id)


def test_first_span_has_no_reference_and_is_pushed(runs):
    output, first, *_ = runs
    assert (
        first.drift is not None
        and first.drift["reference"] is None
        and not first.drift["drift_detected"]
    )
    assert "DriftCheck" in [c.component_id for c in first.components]
    (report, *_) = _by_run(_mlmd(output), "hoh.DriftReport")
    assert _props(report)["drift_detected"] == 0 and _props(report)["reference_span"] == -1
    assert first.blessed is True and first.pushed is True


def test_shifted_span_is_flagged_and_the_gate_holds_the_push(runs):
    output, first, second, lines, _ = runs
    store = _mlmd(output)
    reports = _by_run(store, "hoh.DriftReport")
    assert len(reports) == 2
    props = _props(reports[-1])
    assert props["drift_detected"] == 1 and props["drifted_share"] >= 0.25
    assert props["reference_span"] == 1 and props["current_span"] == 2
    uri = Path(reports[-1].uri)
    summary = json.loads((uri / "summary.json").read_text())
    assert {"brightness", "sharpness", "width"} <= set(summary["descriptors"]["drifted"])
    assert (uri / "report.html").stat().st_size > 10_000
    # The blessed model of run 1 supplied MobileNetV2 embeddings (48 images: reported, no vote).
    assert summary["embeddings"] is not None and summary["embeddings"]["counts_in_verdict"] is False
    assert (uri / "embeddings.html").is_file()

    assert second.blessed is True and second.pushed is None
    assert len(store.get_artifacts_by_type("PushedModel")) == 1, "run 2 must not push"
    printed = "\n".join(second.lines())
    assert "drift: DETECTED" in printed and "held by the drift gate" in printed


def test_sampler_writes_a_labeling_batch_from_the_pool(runs):
    output, first, second, _, pool_size = runs
    store = _mlmd(output)
    samples = _by_run(store, "hoh.SampledImages")
    assert len(samples) == 2  # a new model in run 2, so the pool is scored again
    props = _props(samples[-1])
    assert {k: props[k] for k in ("selected", "scored", "skipped", "model_source")} == {
        "selected": K,
        "scored": pool_size,
        "skipped": 0,
        "model_source": "current",
    }
    uri = Path(samples[-1].uri)
    summary = json.loads((uri / "summary.json").read_text())
    assert summary["diversity"] is True, "the Trainer's model must reload with its backbone"
    rows = [json.loads(line) for line in (uri / "selected.jsonl").read_text().splitlines()]
    assert len(rows) == K and all((uri / r["file"]).is_file() for r in rows)
    assert len(json.loads((uri / "label_studio.json").read_text())) == K
    assert (uri / "contact_sheet.html").read_text().count("<figure") == K
    assert any(line.startswith(f"sampled {K} of {pool_size}") for line in second.lines())


def test_the_gated_dag_compiles_for_kubeflow(tmp_path):
    from tfx import v1 as tfx

    from hoh.pipeline.factory import drift_parameters, sampling_parameters
    from hoh.pipeline.pipeline import create_pipeline

    cfg = load_config(overrides=["drift.block_push=true"])

    def pusher(model, model_blessing, examples):
        destination = tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory="gs://bucket/serving")
        )
        return tfx.components.Pusher(
            model=model, model_blessing=model_blessing, push_destination=destination
        )

    pipeline = create_pipeline(
        pipeline_name="hoh",
        pipeline_root="gs://bucket/root",
        data_root="gs://bucket/data",
        span=None,
        schema_path=None,
        fail_on_anomalies=True,
        image_size=32,
        materialize=False,
        trainer_config={},
        classes=["horses", "humans"],
        min_auc=0.0,
        min_accuracy=0.0,
        max_regression=1.0,
        pusher=pusher,
        runtime_parameters=True,
        drift=drift_parameters(cfg),
        drift_blocks_push=True,
        pool_root="gs://bucket/pool",
        sampling=sampling_parameters(cfg),
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image="hoh:test", use_pipeline_spec_2_1=True
        ),
        output_dir=str(tmp_path),
        output_filename="pipeline.yaml",
    )
    tasks = runner.run(pipeline, write_out=False)["pipelineSpec"]["root"]["dag"]["tasks"]
    assert {"DriftCheck", "PoolExampleGen", "ActiveLearningSampler", "Pusher"} <= set(tasks)
    condition = tasks["Pusher"]["triggerPolicy"]["condition"]
    assert (
        "DriftCheck.drift_report" in condition
        and "drift_detected" in condition
        and "== 0" in condition
    )
    # The drift check reads the reference spans from the same data_root the ExampleGen reads.
    assert tasks["DriftCheck"]["inputs"]["parameters"]["data_root"] == {
        "componentInputParameter": "data_root"
    }
