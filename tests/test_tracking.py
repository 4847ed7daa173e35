"""MLflow tracking, the model registry beside the Triton repository, model cards, `hoh runs` and
`hoh models`, on real MLflow stores (embedded SQLite, and PostgreSQL when one answers).

Runs are described by RunSummary objects as the local runner produces them and models are
pushed by the real `repository.push_model`, so no TFX pipeline runs here (test_tracking_e2e.py
runs the pipeline and a Triton server).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from services import free_port, postgres_url
from tiny_model import FAKE_MODEL_FLAVOR, fake_saved_model

from hoh.cli import main
from hoh.components.triton_pusher import repository, rollback
from hoh.config import load_config
from hoh.errors import UsageError
from hoh.pipeline.telemetry.progress import ComponentRun
from hoh.pipeline.telemetry.summary import RunSummary
from hoh.pipeline.tracking import facts as facts_mod
from hoh.pipeline.tracking import model_card, registry, store
from hoh.pipeline.tracking.log import track_run

# A drift check's summary.json when drift held a blessed model back (drift.block_push).
HELD_DRIFT = {
    "drift_detected": True,
    "reasons": ["label share drifted"],
    "blocks_push": True,
    "drifted_share": 0.5,
    "features": [],
    "notes": [],
    "reference": {"images": 50, "skipped": []},
    "current": {"images": 50, "skipped": []},
}


def make_cfg(output: Path, *overrides: str):
    # The models pushed here are `fake_saved_model`s, which only the TensorFlow flavour copies.
    return load_config(
        None, [f"push.flavor={FAKE_MODEL_FLAVOR}", *overrides], output_dir=str(output)
    )


def push(cfg, root: Path, name: str, pb: bytes) -> tuple[int, str, Path]:
    """A model pushed by the real pusher code; (Triton version, its dir, the Model artifact)."""
    model_uri = root / name
    fake_saved_model(model_uri / "Format-Serving", pb=pb)
    result = repository.push_model(
        str(model_uri / "Format-Serving"),
        cfg.model_repository,
        repository.TritonPushSettings.from_config(cfg.push),
        source=str(model_uri),
    )
    return result.version, result.version_dir, model_uri


def summary(
    run_id: str,
    *,
    blessed=True,
    pushed_version=None,
    destination=None,
    model_uri=None,
    auc=0.8,
    drift=None,
) -> RunSummary:
    s = RunSummary(
        components=[
            ComponentRun("Trainer", 0.0, seconds=2.5, peak_rss_mb=321.0),
            ComponentRun("Evaluator", 0.0, seconds=1.0, peak_rss_mb=300.0),
        ],
        run_id=run_id,
        example_counts={"train": 40, "eval": 10},
        metrics={"auc": auc, "binary_accuracy": auc - 0.1},
        blessed=blessed,
        failures=[] if blessed else [f"auc {auc:.4f} is below the minimum 0.9"],
        drift=drift,
    )
    if pushed_version is not None:
        s.pushed, s.pushed_version, s.pushed_destination = True, str(pushed_version), destination
    elif blessed is not None:
        s.pushed = False
    if model_uri is not None:
        s.artifacts["Model"] = str(model_uri)
    return s


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


# ---------------------------------------------------------------------------- pure pieces


def test_flatten_and_metric_keys():
    flat = facts_mod.flatten({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x"})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "a.d": "null", "e": "x"}
    assert facts_mod.metric_key("eval_class", "cats & dogs", "auc") == "eval_class.cats _ dogs.auc"


def test_tracking_uris_default_to_an_embedded_store_under_the_output(tmp_path):
    cfg = make_cfg(tmp_path / "out")
    uri, registry_uri, artifacts = store.tracking_uris(cfg)
    assert uri == f"sqlite:///{(tmp_path / 'out' / 'mlflow' / 'mlflow.db').resolve()}"
    assert registry_uri == uri
    assert artifacts == (tmp_path / "out/mlflow/artifacts").resolve().as_uri()
    server = make_cfg(tmp_path, "tracking.uri=http://mlflow:5000")
    assert store.tracking_uris(server) == ("http://mlflow:5000", "http://mlflow:5000", None)
    assert store.redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


def test_model_card_is_built_from_recorded_facts():
    facts = facts_mod.RunFacts(
        pipeline_name="hoh",
        run_id="r1",
        span=3,
        data_source="/data/horse-or-human",
        example_counts={"train": 800, "eval": 50},
        classes=["horses", "humans"],
        class_counts={"train": {"horses": 400, "humans": 400}},
        metrics={"auc": 0.97},
        per_class={"horses": {"binary_accuracy": 0.95}},
        thresholds={"min_auc": 0.9},
        blessed=True,
        blessing_reason="passed",
        drift={"drift_detected": True, "reasons": ["brightness drifted"]},
        pushed_version="4",
        model_name="hoh",
        artifact_ids={"Model": 7},
    )
    card = model_card.build_card(facts, registry_version="2", mlflow_run_id="abc")
    assert card["model"] == {
        "name": "hoh",
        "triton_version": "4",
        "registry_version": "2",
        "pipeline": "hoh",
    }
    assert "CC BY 2.0" in card["training_data"]["credit"]
    assert card["evaluation"]["per_class"] == {"horses": {"binary_accuracy": 0.95}}
    assert card["drift"] == "drift detected: brightness drifted"
    assert any("only 50 examples" in item for item in card["limitations"])
    assert card["lineage"]["mlmd_artifact_ids"] == {"Model": 7}
    text = model_card.render_markdown(card)
    assert text.startswith("# Model card: hoh version 4\n")
    assert "| horses | 0.9500 |" in text and "Laurence Moroney" in text
    unknown = model_card.data_credit("/somewhere/else")
    assert "licence not recorded" in unknown


# ---------------------------------------------------------------------------- embedded store


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    """Two blessed pushed runs with different settings, an unblessed run and a challenger."""
    root = tmp_path_factory.mktemp("lifecycle")
    out = root / "out"
    lines: list[str] = []
    cfg1 = make_cfg(out, "training.epochs=1")
    v1, dir1, model1 = push(cfg1, root, "model-1", b"graph-1")
    r1 = track_run(
        cfg1, summary("run-1", pushed_version=v1, destination=dir1, auc=0.8), lines.append
    )
    cfg2 = make_cfg(out, "training.epochs=2")
    v2, dir2, model2 = push(cfg2, root, "model-2", b"graph-2")
    r2 = track_run(
        cfg2, summary("run-2", pushed_version=v2, destination=dir2, auc=0.9), lines.append
    )
    r3 = track_run(cfg2, summary("run-3", blessed=False, auc=0.5), lines.append)
    model3 = root / "model-3"
    fake_saved_model(model3 / "Format-Serving", pb=b"graph-3")
    r4 = track_run(
        cfg2, summary("run-4", model_uri=model3, auc=0.95, drift=HELD_DRIFT), lines.append
    )
    return cfg2, (r1, r2, r3, r4), lines, (v1, v2)


def test_runs_are_tracked_with_params_metrics_and_tags(lifecycle):
    cfg, (r1, r2, r3, r4), lines, _ = lifecycle
    assert all(r.ok for r in (r1, r2, r3, r4)), lines
    client = store.client(cfg)
    run1, run2 = client.get_run(r1.mlflow_run_id), client.get_run(r2.mlflow_run_id)
    assert run1.data.params["training.epochs"] == "1" and run2.data.params["training.epochs"] == "2"
    assert run1.data.metrics["eval.auc"] == pytest.approx(0.8)
    assert run2.data.metrics["eval.auc"] == pytest.approx(0.9)
    assert run1.data.metrics["examples.train"] == 40
    assert run1.data.metrics["duration_s.Trainer"] == 2.5
    assert run1.data.metrics["peak_rss_mb.Trainer"] == 321.0
    assert run1.data.tags["hoh.mlmd.pipeline_run"] == "run-1"
    assert run1.data.tags["hoh.pushed_version"] == "1"
    assert run1.data.tags["hoh.blessing_reason"].startswith("passed the thresholds")
    refused = client.get_run(r3.mlflow_run_id).data.tags
    assert refused["hoh.blessed"] == "no"
    assert refused["hoh.blessing_reason"] == "auc 0.5000 is below the minimum 0.9"
    # The resolved config is kept beside the outputs and as a run artifact.
    config_file = Path(cfg.output_dir) / "runs" / "run-2" / "config.yaml"
    assert "epochs: 2" in config_file.read_text()
    assert any(line.startswith("tracked: MLflow run ") for line in lines)


def test_registry_versions_aliases_and_cards(lifecycle):
    cfg, (r1, r2, r3, r4), _, (v1, v2) = lifecycle
    assert (r1.registered_version, r1.alias) == ("1", "champion")
    assert (r2.registered_version, r2.alias) == ("2", "champion")
    assert r3.registered_version is None  # not blessed: nothing registered
    assert (r4.registered_version, r4.alias) == ("3", "challenger")
    client = store.client(cfg)
    assert registry.aliases(client, "hoh") == {"champion": "2", "challenger": "3"}
    mv2 = registry.find_version(client, cfg, "2")
    assert mv2.tags["triton_version"] == str(v2) and mv2.tags["metric.auc"] == "0.9"
    assert mv2.tags["source_run"] == r2.mlflow_run_id and "span" not in mv2.tags
    version_dir = Path(cfg.model_repository) / "hoh" / str(v2)
    card = json.loads((version_dir / "model_card.json").read_text())
    assert card["model"]["registry_version"] == "2"
    assert card["evaluation"]["overall"]["auc"] == 0.9
    assert (version_dir / "model_card.md").is_file()
    rows, problems = registry.model_rows(cfg, client)
    assert problems == []
    assert [(r.registry_version, r.triton_version, r.state) for r in rows] == [
        ("1", 1, "on disk"),
        ("2", 2, "served"),
        ("3", None, "challenger"),
    ]


def test_cli_lists_shows_and_compares(lifecycle, capsys):
    cfg, (r1, r2, _, _), _, _ = lifecycle
    out = ["--output", cfg.output_dir]
    code, text = cli(capsys, "runs", "list", *out)
    assert code == 0 and len([ln for ln in text.splitlines() if "span" in ln]) == 4
    assert "blessed no (auc 0.5000 is below the minimum 0.9)" in text and "pushed v2" in text
    code, text = cli(capsys, "runs", "show", "run-1", *out)
    assert code == 0 and "epochs: 1" in text and "metrics (eval split): auc 0.8000" in text
    code, text = cli(capsys, "runs", "compare", r1.mlflow_run_id[:10], r2.mlflow_run_id, *out)
    assert code == 0 and "training.epochs" in text and "eval.auc" in text
    code, text = cli(capsys, "models", "list", *out)
    assert code == 0 and "MISMATCH" not in text and "champion" in text
    code, text = cli(capsys, "models", "show", "2", *out)
    assert code == 0 and "# Model card: hoh version 2" in text
    code, text = cli(capsys, "runs", "show", "nope", *out)
    assert code == 2 and "no tracked run 'nope'" in text
    code, text = cli(capsys, "config", "show", "--set", "training.epochs=7", *out)
    assert code == 0 and "epochs: 7" in text and "tracking:" in text


def test_rollback_promote_and_refusals(lifecycle, capsys):
    cfg, _, _, (v1, v2) = lifecycle
    model_dir = Path(cfg.model_repository) / "hoh"
    out = ["--output", cfg.output_dir, "--set", f"push.flavor={FAKE_MODEL_FLAVOR}"]
    code, text = cli(capsys, "models", "rollback", "9", *out)
    assert code == 2 and "unknown version '9' of registered model 'hoh' (known: 1, 2, 3)" in text
    code, text = cli(capsys, "models", "rollback", "3", *out)
    assert code == 2 and "never served (a challenger)" in text

    code, text = cli(capsys, "models", "rollback", *out, "--reason", "v2 misclassifies")
    assert code == 0, text
    served = repository.served_versions(str(model_dir))
    assert served == [3]  # version 1's model, published again as the next number
    assert (model_dir / "3/model.savedmodel/saved_model.pb").read_bytes() == b"graph-1"
    client = store.client(cfg)
    assert registry.aliases(client, "hoh")["champion"] == "1"
    mv1 = registry.find_version(client, cfg, "1")
    assert mv1.tags["triton_version"] == "3" and mv1.tags["triton_versions"] == "1,3"
    assert mv1.tags["last_rollback_reason"] == "v2 misclassifies"
    card = json.loads((model_dir / "3" / "model_card.json").read_text())
    assert card["model"]["triton_version"] == "3" and card["model"]["registry_version"] == "1"
    audit = (Path(cfg.tracking_dir) / "lifecycle.jsonl").read_text().splitlines()
    assert json.loads(audit[-1])["served_before"] == [2]
    rows, problems = registry.model_rows(cfg, client)
    assert problems == [] and ("1", 3, "served") in [
        (r.registry_version, r.triton_version, r.state) for r in rows
    ]

    # Retired: version 1's directory went with push.versions_to_keep=2 -> refused, no change.
    assert not (model_dir / "1").exists()
    config_before = (model_dir / "config.pbtxt").read_bytes()
    with pytest.raises(rollback.RollbackError, match="version 1 of .* is gone from disk"):
        rollback.republish(
            cfg.model_repository, repository.TritonPushSettings.from_config(cfg.push), 1
        )
    assert (model_dir / "config.pbtxt").read_bytes() == config_before

    # The challenger is pushed by promote and becomes champion.
    code, text = cli(capsys, "models", "promote", "3", *out, "--by", "alice")
    assert code == 0, text
    assert repository.served_versions(str(model_dir)) == [4]
    aliases = registry.aliases(client, "hoh")
    assert aliases == {"champion": "3"}
    assert registry.find_version(client, cfg, "3").tags["last_promote_by"] == "alice"

    # A push nobody registered: `hoh models list` says so instead of showing a clean table.
    push(cfg, Path(cfg.output_dir).parent, "model-x", b"graph-x")
    code, text = cli(capsys, "models", "list", "--strict", *out)
    assert code == 1
    assert "MISMATCH: Triton version 5 is not registered in MLflow" in text
    assert (
        "MISMATCH: champion is registry version 3 (Triton version 4) but Triton serves [5]" in text
    )


def test_rollback_to_a_version_whose_files_are_gone_changes_nothing(tmp_path, capsys):
    cfg = make_cfg(tmp_path / "out", "push.versions_to_keep=5")
    v1, dir1, _ = push(cfg, tmp_path, "m1", b"g1")
    track_run(cfg, summary("a", pushed_version=v1, destination=dir1), lambda line: None)
    v2, dir2, _ = push(cfg, tmp_path, "m2", b"g2")
    track_run(cfg, summary("b", pushed_version=v2, destination=dir2), lambda line: None)
    import shutil

    shutil.rmtree(dir1)
    config = (Path(dir2).parent / "config.pbtxt").read_bytes()
    code, text = cli(capsys, "models", "rollback", "1", "--output", cfg.output_dir)
    assert code == 1 and "version 1 of" in text and "is gone from disk" in text
    assert (Path(dir2).parent / "config.pbtxt").read_bytes() == config
    assert registry.aliases(store.client(cfg), "hoh") == {"champion": "2"}
    code, text = cli(capsys, "models", "rollback", "--output", cfg.output_dir)
    assert code == 2 and "no earlier version of 'hoh' to roll back to" in text


def test_tracking_store_down_still_completes_and_says_so(tmp_path):
    cfg = make_cfg(
        tmp_path,
        f"tracking.uri=http://127.0.0.1:{free_port()}",
        "tracking.max_retries=0",
        "tracking.timeout_s=2",
    )
    lines: list[str] = []
    result = track_run(cfg, summary("down", pushed_version=None), lines.append)
    assert not result.ok
    assert lines[0].startswith(f"tracking FAILED ({cfg.tracking.uri}): ")
    assert "the pipeline run itself completed" in lines[0]
    # The config is still kept beside the outputs.
    assert (tmp_path / "runs" / "down" / "config.yaml").is_file()
    off = track_run(make_cfg(tmp_path, "tracking.enabled=false"), summary("x"), lines.append)
    assert off.ok and off.message.startswith("tracking: off")


def test_bad_tracking_settings_are_config_errors(tmp_path):
    with pytest.raises(UsageError, match="tracking.timeout_s"):
        make_cfg(tmp_path, "tracking.timeout_s=0")
    with pytest.raises(UsageError, match="tracking.nope"):
        make_cfg(tmp_path, "tracking.nope=1")


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def postgres_db():
    url = postgres_url()
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"hoh_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    base = url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        import sqlalchemy.pool  # noqa: F401  (MLflow's engines hold connections until disposed)

        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def test_postgresql_backend_store(tmp_path, postgres_db, capsys):
    cfg = make_cfg(tmp_path / "out", f"tracking.uri={postgres_db}")
    v1, dir1, _ = push(cfg, tmp_path, "m1", b"g1")
    result = track_run(
        cfg, summary("pg-1", pushed_version=v1, destination=dir1, auc=0.77), lambda line: None
    )
    assert result.ok, result.message
    assert (result.registered_version, result.alias) == ("1", "champion")
    client = store.client(cfg)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.metrics["eval.auc"] == pytest.approx(0.77)
    assert run.info.artifact_uri.startswith((tmp_path / "out" / "mlflow").resolve().as_uri())
    code, text = cli(
        capsys, "runs", "list", "--output", cfg.output_dir, "--set", f"tracking.uri={postgres_db}"
    )
    assert code == 0 and "pushed v1" in text


def test_registry_failure_after_the_push_serves_the_previous_model_again(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    cfg = make_cfg(tmp_path / "out", "push.versions_to_keep=5")
    for name in ("a", "b"):
        version, directory, _ = push(cfg, tmp_path, f"m-{name}", f"graph-{name}".encode())
        track_run(cfg, summary(name, pushed_version=version, destination=directory), print)

    def refuse(*args, **kwargs):
        raise RuntimeError("registry is read-only")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(store.TrackingUnavailable) as failed:
        registry.serve_version(cfg, "1", "rollback")
    assert "the registry could not be updated (RuntimeError: registry is read-only)" in str(
        failed.value
    )
    assert "Triton serves [2] again and version 3 is removed" in str(failed.value)
    model_dir = Path(cfg.model_repository) / "hoh"
    assert repository.served_versions(str(model_dir)) == [2]
    assert sorted(p.name for p in model_dir.iterdir() if p.name.isdigit()) == ["1", "2"]
    monkeypatch.undo()
    assert registry.aliases(store.client(cfg), "hoh") == {"champion": "2"}


def test_tensorboard_opens_the_trainer_logs_of_a_run_on_loopback(tmp_path):
    from hoh.pipeline.tracking.cli import tensorboard_command, tensorboard_logdir

    cfg = make_cfg(tmp_path / "out")
    client = store.client(cfg)
    with pytest.raises(UsageError, match="no tracked run trained a model yet"):
        tensorboard_logdir(cfg, client, None)
    logs = tmp_path / "model_run"
    trained = summary("trained", blessed=False)
    trained.artifacts["ModelRun"] = str(logs)
    track_run(cfg, trained, lambda line: None)
    track_run(cfg, summary("untrained", blessed=None), lambda line: None)
    assert tensorboard_logdir(cfg, client, None) == str(logs)
    assert tensorboard_logdir(cfg, client, "trained") == str(logs)
    with pytest.raises(UsageError, match="recorded no Trainer logs"):
        tensorboard_logdir(cfg, client, "untrained")
    command = tensorboard_command(str(logs), 6123)
    assert command[1:] == ["--logdir", str(logs), "--host", "127.0.0.1", "--port", "6123"]
    assert Path(command[0]).name == "tensorboard"


def test_a_password_in_the_tracking_uri_never_reaches_the_output(tmp_path):
    secret = "s3cr%40t-pw"
    cfg = make_cfg(tmp_path, f"tracking.uri=postgresql://hoh:{secret}@127.0.0.1:{free_port()}/x")
    lines: list[str] = []
    result = track_run(cfg, summary("pw"), lines.append)
    assert not result.ok
    assert lines[0].startswith("tracking FAILED (postgresql+psycopg2://hoh:***@127.0.0.1:")
    assert "cannot connect to 127.0.0.1:" in lines[0]
    assert all(secret not in line and "s3cr@t-pw" not in line for line in lines)


def test_mlflow_telemetry_is_off_in_every_hoh_process():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if "TELEMETRY" not in k and k != "DO_NOT_TRACK"}
    code = (
        "import hoh; from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY as v; "
        "print(v.get())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "True"


def test_a_cached_rerun_after_a_rollback_leaves_the_champion_alone(tmp_path):
    cfg = make_cfg(tmp_path / "out")
    dirs = {}
    for name in ("a", "b"):
        version, dirs[version], _ = push(cfg, tmp_path, f"m-{name}", f"g-{name}".encode())
        track_run(cfg, summary(name, pushed_version=version, destination=dirs[version]), print)
    registry.serve_version(cfg, "1", "rollback")
    card_before = (Path(dirs[2]) / "model_card.json").read_bytes()
    # The pipeline re-run with nothing new: its cached PushedModel still says version 2.
    lines: list[str] = []
    again = track_run(cfg, summary("c", pushed_version=2, destination=dirs[2]), lines.append)
    assert again.ok and (again.registered_version, again.alias) == ("2", None)
    assert "registered hoh version 2 (aliases unchanged)" in lines[0]
    assert any("Triton does not serve version 2" in line for line in lines)
    assert registry.aliases(store.client(cfg), "hoh") == {"champion": "1"}
    assert (Path(dirs[2]) / "model_card.json").read_bytes() == card_before


def test_commands_on_a_store_that_is_down_fail_in_one_line(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    for command in (["runs", "list"], ["models", "list"], ["models", "rollback", "1"]):
        code, text = cli(
            capsys,
            *command,
            "--output",
            str(tmp_path),
            "--set",
            f"tracking.uri={uri}",
            "--set",
            "tracking.max_retries=0",
        )
        assert code == 1, text
        assert text.strip().splitlines()[-1].startswith(f"hoh: error: MLflow store {uri}: ")
        assert "Traceback" not in text


def test_a_failed_run_is_listed_with_its_error_and_registers_nothing(tmp_path, capsys):
    from hoh.pipeline.tracking.log import track_failure

    cfg = make_cfg(tmp_path / "out", "training.epochs=4")
    lines: list[str] = []
    result = track_failure(cfg, "Trainer failed: out of memory", lines.append)
    assert result.ok and lines == [f"tracked the failed run: MLflow run {result.mlflow_run_id}"]
    client = store.client(cfg)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FAILED" and run.data.params["training.epochs"] == "4"
    assert registry.all_versions(client, "hoh") == []
    code, text = cli(capsys, "runs", "list", "--output", cfg.output_dir)
    assert code == 0 and "FAILED: Trainer failed: out of memory" in text
    code, text = cli(capsys, "runs", "show", result.mlflow_run_id, "--output", cfg.output_dir)
    assert code == 0 and "FAILED: Trainer failed: out of memory" in text and "epochs: 4" in text


# ---------------------------------------------------------------------------- worker process


def test_the_worker_process_logs_what_the_in_process_step_logs(tmp_path):
    """What the local runner does: MLflow opened in a second process while the DAG runs."""
    from hoh.pipeline.tracking.log import Preparation, track_failure

    cfg = make_cfg(tmp_path / "out", "training.epochs=3")
    lines: list[str] = []
    result = track_run(
        cfg, summary("w-1", auc=0.91), lines.append, started=1.7e9, prepared=Preparation(cfg)
    )
    assert result.ok, lines
    assert lines[0].startswith(f"tracked: MLflow run {result.mlflow_run_id} in experiment 'hoh'")
    assert result.facts is not None and result.facts.run_id == "w-1"
    run = store.client(cfg).get_run(result.mlflow_run_id)
    assert run.data.params["training.epochs"] == "3"
    assert run.data.metrics["eval.auc"] == pytest.approx(0.91)
    assert run.data.tags["hoh.mlmd.pipeline_run"] == "w-1"
    assert run.info.start_time == 1.7e12 and run.info.status == "FINISHED"
    failed = track_failure(cfg, "Trainer failed: boom", lines.append, prepared=Preparation(cfg))
    assert failed.ok and lines[-1] == f"tracked the failed run: MLflow run {failed.mlflow_run_id}"
    assert store.client(cfg).get_run(failed.mlflow_run_id).data.tags["hoh.error"] == (
        "Trainer failed: boom"
    )
    idle = Preparation(cfg)  # an interrupted run: the worker stops without logging anything
    idle.close()
    assert idle._process.returncode == 0


def test_the_worker_reports_a_store_that_is_down(tmp_path):
    from hoh.pipeline.tracking.log import Preparation

    cfg = make_cfg(
        tmp_path,
        f"tracking.uri=postgresql://hoh@127.0.0.1:{free_port()}/none",
        "tracking.timeout_s=2",
    )
    lines: list[str] = []
    result = track_run(cfg, summary("down"), lines.append, prepared=Preparation(cfg))
    assert not result.ok
    assert lines[0].startswith("tracking FAILED (postgresql")
    assert "TrackingUnavailable: MLflow store postgresql" in lines[0]
    assert "cannot connect to 127.0.0.1" in lines[0]
    assert "the pipeline run itself completed" in lines[0]


def test_the_worker_keeps_bytecode_apart_when_the_environment_forbids_writing_it(tmp_path):
    from hoh.pipeline.tracking.log import worker_environment

    cfg = make_cfg(tmp_path, f"tracking.bytecode_cache={tmp_path / 'pyc'}")
    env = worker_environment(cfg, {"PYTHONDONTWRITEBYTECODE": "1", "PATH": "/bin"})
    assert env == {"PYTHONPYCACHEPREFIX": str(tmp_path / "pyc"), "PATH": "/bin"}
    mine = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": "/elsewhere"}
    assert worker_environment(cfg, mine) == mine  # a place the user chose wins
    assert worker_environment(cfg, {"PATH": "/bin"}) == {"PATH": "/bin"}  # Python writes it
    off = make_cfg(tmp_path, "tracking.bytecode_cache=null")
    assert worker_environment(off, {"PYTHONDONTWRITEBYTECODE": "1"}) == {
        "PYTHONDONTWRITEBYTECODE": "1"
    }
