"""A Kubeflow run is tracked like a local one: the compiled DAG's TrackRun node, run by
LocalDagRunner on the very pipeline object `hoh kfp compile` compiles (the code a pod runs),
logs to MLflow what the local post-run step logs, and leaves the Kubeflow UI's reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_span_root
from test_kubeflow_schedule import _run, _store

from hoh.config import builtin_config_path, load_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kfp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kfp-tracking")
    data_root = make_span_root(root / "data")
    out, repo = root / "out", root / "repo"
    schema = Path(__file__).resolve().parents[1] / "schemas" / "schema.pbtxt"
    cfg = load_config(
        builtin_config_path("tiny"),
        [
            f"kubeflow.model_repository={repo}",
            f"schema.path={schema}",
            # What a pod is given: a store URL it reaches (here a file the test reads back).
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.artifact_location={(root / 'mlflow-artifacts').as_uri()}",
            "evaluation.min_auc=0",
            "evaluation.min_accuracy=0",
            "evaluation.min_class_recall=0",
        ],
        output_dir=str(out),
    )
    _run(cfg, data_root, out)  # the pipeline object `hoh kfp compile` compiles, LocalDagRunner
    return cfg, out


def test_the_track_run_node_logs_the_run_to_mlflow(kfp_run):
    from hoh.pipeline.telemetry.summary import summarize
    from hoh.pipeline.tracking import registry, store

    cfg, out = kfp_run
    local_view = summarize(str(out / "metadata.sqlite"), [])  # what `hoh run` would log
    client = store.client(cfg)
    [run] = client.search_runs([store.experiment_id(client, cfg, create=False)])
    assert run.info.status == "FINISHED"
    assert run.data.tags["hoh.mlmd.pipeline_run"] == local_view.run_id
    assert run.data.params["training.epochs"] == str(cfg.training.epochs)
    assert run.data.params["push.model_repository"] == str(cfg.kubeflow.model_repository)
    assert local_view.metrics, "the Evaluator's metrics"
    for name, value in local_view.metrics.items():
        assert run.data.metrics[f"eval.{name}"] == pytest.approx(value)
    assert run.data.metrics["examples.train"] == local_view.example_counts["train"]
    assert run.data.tags["hoh.blessed"] == "yes"
    assert run.data.tags["hoh.span"] == "1"
    assert run.data.tags["hoh.pushed_version"] == local_view.pushed_version == "1"
    assert "hoh.mlmd.artifact.Model" in run.data.tags
    [version] = registry.all_versions(client, cfg.push.model_name)
    assert registry.aliases(client, cfg.push.model_name) == {"champion": str(version.version)}


def test_the_kubeflow_ui_artifacts_hold_the_summary_drift_report_and_metrics(kfp_run):
    from hoh.pipeline.telemetry.summary import summarize

    _, out = kfp_run
    mlmd = _store(out)
    local_view = summarize(str(out / "metadata.sqlite"), [])

    def single(type_name: str):
        [artifact] = mlmd.get_artifacts_by_type(type_name)
        return artifact

    markdown = single("system.Markdown")
    text = Path(markdown.uri).read_text()
    assert text.startswith(f"# hoh: run {local_view.run_id}\n")
    assert "## Metrics (eval split)" in text and "**Drift:** " in text
    assert "- tracked: MLflow run " in text
    assert markdown.custom_properties["tracked"].int_value == 1
    report = Path(single("system.HTML").uri).read_text()
    assert report.lstrip().lower().startswith("<!doctype html") or "<html" in report[:500]
    assert "this run has no drift check" not in report and "could not be read" not in report
    metrics = single("system.Metrics").custom_properties
    for name, value in local_view.metrics.items():
        assert metrics[name].double_value == pytest.approx(value)
    assert metrics["blessed"].double_value == 1.0
