"""The lifecycle end to end: real pipeline runs tracked in MLflow, and a rollback that a real
Triton server follows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_span_root
from test_triton_serving import wait_until
from tiny_model import build_model_artifact_dir, make_image, predict_in_process, run_pusher_executor

from hoh.cli import main
from hoh.config import builtin_config_path, load_config
from hoh.pipeline.telemetry.progress import ComponentRun
from hoh.pipeline.telemetry.summary import RunSummary
from hoh.pipeline.tracking import registry, store
from hoh.pipeline.tracking.log import track_run

pytestmark = pytest.mark.e2e


def test_two_pipeline_runs_are_tracked_and_registered(tmp_path, capsys):
    from hoh.pipeline.runners.local import run_local
    from hoh.pipeline.telemetry.mlmd import open_readonly

    data = make_span_root(tmp_path / "span")
    out = tmp_path / "out"
    lines: list[str] = []
    results = []
    for epochs in (1, 2):
        cfg = load_config(
            builtin_config_path("tiny"),
            [f"training.epochs={epochs}"],
            **{"data.root": str(data), "output_dir": str(out)},
        )
        results.append(run_local(cfg, echo=lines.append))
    tracked = [ln for ln in lines if ln.startswith("tracked: MLflow run ")]
    assert len(tracked) == 2, lines
    client = store.client(cfg)
    runs = client.search_runs(
        [store.experiment_id(client, cfg)], order_by=["attributes.start_time ASC"]
    )
    assert [r.data.params["training.epochs"] for r in runs] == ["1", "2"]
    first, second = (r.data for r in runs)
    assert first.tags["hoh.mlmd.pipeline_run"] == results[0].run_id
    assert first.metrics["examples.train"] == results[0].example_counts["train"]
    assert (
        first.metrics["examples.train.horses"] + first.metrics["examples.train.humans"]
        == results[0].example_counts["train"]
    )
    assert first.metrics["eval.auc"] == pytest.approx(results[0].metrics["auc"])
    assert "eval_class.horses.example_count" in first.metrics
    assert first.metrics["anomalies.train"] == 0
    assert first.metrics["duration_s.Trainer"] > 0 and "peak_rss_mb.Trainer" in first.metrics
    assert int(first.tags["hoh.mlmd.artifact.Model"]) > 0 and first.tags["hoh.span"] == "1"
    assert first.tags["hoh.pushed_version"] == "1" and second.tags["hoh.pushed_version"] == "2"
    history = client.get_metric_history(runs[1].info.run_id, "train.loss")
    assert sorted(m.step for m in history) == [0, 1]  # one point per epoch
    # Each store names the other: the MLflow run id is on the MLMD pipeline_run context.
    mlmd = open_readonly(str(out / "metadata.sqlite"))
    contexts = {c.name: c for c in mlmd.get_contexts_by_type("pipeline_run")}
    context = contexts[results[1].run_id]
    assert context.custom_properties["mlflow_run_id"].string_value == runs[1].info.run_id
    # Both blessed and pushed: registry versions 1 and 2, champion = what Triton serves.
    assert registry.aliases(client, "hoh") == {"champion": "2"}
    rows, problems = registry.model_rows(cfg, client)
    assert problems == [] and [(r.registry_version, r.triton_version, r.state) for r in rows] == [
        ("1", 1, "on disk"),
        ("2", 2, "served"),
    ]
    card = (out / "model_repository" / "hoh" / "2" / "model_card.md").read_text()
    assert "## Training data" in card and "- span: 1" in card and "horses" in card
    capsys.readouterr()
    assert main(["runs", "list", "--profile", "tiny", "--output", str(out)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and "pushed v2" in listed[0] and "pushed v1" in listed[1]
    assert all("span 1" in line and "blessed yes" in line for line in listed)


def _images(seed: int, n: int) -> list[bytes]:
    return [make_image(seed + i, fmt=("PNG", "JPEG")[i % 2]) for i in range(n)]


def _summary(run_id: str, pushed) -> RunSummary:
    return RunSummary(
        components=[ComponentRun("TritonPusher", 0.0, seconds=0.1)],
        run_id=run_id,
        metrics={"auc": 0.9},
        blessed=True,
        pushed=True,
        pushed_version=pushed.get_string_custom_property("pushed_version"),
        pushed_destination=pushed.get_string_custom_property("pushed_destination"),
    )


def test_rollback_makes_a_real_triton_server_serve_version_1_again(tmp_path, capsys):
    from hoh.serving import server as srv
    from hoh.serving.client import TritonImageClient

    out = tmp_path / "out"
    cfg = load_config(None, [], output_dir=str(out))
    repo = cfg.model_repository
    models = {}
    for version, seed in ((1, 0), (2, 1)):
        uri = tmp_path / f"model-{version}"
        build_model_artifact_dir(uri, seed=seed)
        models[version] = uri / "Format-Serving"
        if version == 1:
            pushed = run_pusher_executor(uri, repo, tmp_path / "pushed-1", blessed=1)
            assert track_run(cfg, _summary("run-1", pushed), lambda line: None).ok
            server = srv.TritonServer(
                repo,
                http_port=0,
                grpc_port=0,
                metrics_port=0,
                repository_poll_secs=1,
                log_file=tmp_path / "triton.log",
            )
            server.start()
    try:
        server.wait_ready(timeout=240)
        client = TritonImageClient(server.http_url, timeout=60)
        pushed = run_pusher_executor(tmp_path / "model-2", repo, tmp_path / "pushed-2", blessed=1)
        assert track_run(cfg, _summary("run-2", pushed), lambda line: None).ok
        wait_until(lambda: client.is_ready("2"), 180, "version 2 to be ready")

        def serves(model_dir: Path) -> bool:
            batch = _images(500, 4)
            reference = predict_in_process(model_dir, batch)["probabilities"]
            served, _ = client.infer(batch)
            return float(np.max(np.abs(served - reference))) <= 1e-5

        wait_until(lambda: serves(models[2]), 60, "version 2's predictions")
        assert not serves(models[1])  # the two versions answer differently

        code = main(
            [
                "models",
                "rollback",
                "1",
                "--output",
                str(out),
                "--profile",
                "tiny",
                "--reason",
                "e2e",
            ]
        )
        text = capsys.readouterr().out
        assert code == 0, text
        assert "rollback: hoh registry version 1 is champion, published as Triton version 3" in text
        wait_until(lambda: client.is_ready("3"), 180, "version 3 (= version 1's model) to load")
        wait_until(lambda: "v2: UNAVAILABLE" in server.model_states(), 60, "version 2 to go")
        assert serves(models[1])
        mlflow_client = store.client(cfg)
        assert registry.aliases(mlflow_client, "hoh") == {"champion": "1"}
        assert registry.model_rows(cfg, mlflow_client)[1] == []  # registry and Triton agree
        client.close()
    finally:
        server.stop()


def test_a_failing_pipeline_run_is_tracked_as_failed(tmp_path, monkeypatch):
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from hoh.pipeline.runners.local import PipelineFailed, run_local

    def fail(self, pipeline):
        raise RuntimeError("disk full")

    monkeypatch.setattr(LocalDagRunner, "run", fail)
    data = make_span_root(tmp_path / "span")
    cfg = load_config(
        builtin_config_path("tiny"),
        [],
        **{"data.root": str(data), "output_dir": str(tmp_path / "out")},
    )
    lines: list[str] = []
    with pytest.raises(PipelineFailed, match="the pipeline failed: disk full"):
        run_local(cfg, echo=lines.append)
    assert any(line.startswith("tracked the failed run: MLflow run ") for line in lines), lines
    client = store.client(cfg)
    [run] = client.search_runs([store.experiment_id(client, cfg)])
    assert run.info.status == "FAILED"
    assert run.data.tags["hoh.error"] == "the pipeline failed: disk full"
    assert registry.all_versions(client, "hoh") == []  # a failed run registers nothing
