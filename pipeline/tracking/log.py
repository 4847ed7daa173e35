"""The post-run step: one finished pipeline run -> one MLflow run (+ registry, model card).

It reads what the run recorded (MLMD, artifacts, the run summary) rather than hooking into a
runner, so any runner can log the same facts: the local runner calls `track_run` when the DAG
has finished (Kubeflow: see docs/LIFECYCLE.md). Tracking is a record of
the run, not part of it: when the store is unreachable the pipeline run still counts as done,
and the result says plainly that tracking failed and why.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable, List, Optional

from hoh.config import HohConfig
from hoh.fileio import write_file
from hoh.pipeline.telemetry.summary import RunSummary
from hoh.pipeline.tracking import store
from hoh.pipeline.tracking.facts import RunFacts, collect, flatten, metric_key

CONFIG_ARTIFACT = "config.yaml"
FACTS_ARTIFACT = "facts.json"
SUMMARY_ARTIFACT = "summary.txt"
TRAINER_LOGS_TAG = "hoh.trainer_logs"  # the ModelRun artifact: TensorBoard's logdir
RUNS_DIR = "runs"  # OUTPUT/runs/<MLMD run id>/config.yaml: each run's resolved config
_PARAM_MAX = 6000  # MLflow's limit on a param value


@dataclasses.dataclass
class TrackingResult:
    ok: bool
    message: str
    mlflow_run_id: Optional[str] = None
    registered_version: Optional[str] = None
    alias: Optional[str] = None
    facts: Optional[RunFacts] = None
    notes: List[str] = dataclasses.field(default_factory=list)

    def lines(self) -> List[str]:
        return [self.message] + [f"  note: {n}" for n in self.notes]


class Opened:
    """The store opened in this process (the worker's, or a caller's without a worker)."""

    def __init__(self, cfg: HohConfig):
        self.client = None
        self.error: Optional[BaseException] = None
        try:
            self.client = store.client(cfg)
            store.experiment_id(self.client, cfg)
        except Exception as exc:  # reported when there is something to log
            self.error = exc

    def get(self):
        if self.error is not None:
            raise self.error
        return self.client


class _Relayed(Exception):
    """A tracking problem the worker already put in words."""


class Preparation:
    """The worker process (`worker.py`: why a process) importing MLflow and opening the store
    while the DAG runs; `track` and `failure` hand it the run and read back its result.

    Started once the pipeline is built. An unreachable store is found there too, and reported
    when the run is logged. A worker that does not answer within the tracking timeouts is
    stopped and the run reported as not tracked, so tracking never holds up a run.
    """

    def __init__(self, cfg: HohConfig):
        import subprocess
        import sys

        self._wait_s = cfg.tracking.timeout_s * (cfg.tracking.max_retries + 1) + 60
        self._process = subprocess.Popen(
            [sys.executable, "-m", "hoh.pipeline.tracking.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=worker_environment(cfg, os.environ),
        )
        self._process.stdin.write(json.dumps(cfg.model_dump(by_alias=True, mode="json")) + "\n")
        self._process.stdin.flush()

    def _ask(self, request: dict) -> TrackingResult:
        import subprocess

        try:
            out, _ = self._process.communicate(json.dumps(request) + "\n", timeout=self._wait_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise _Relayed(f"the MLflow store did not answer within {self._wait_s:.0f} s") from None
        lines = out.strip().splitlines()
        if self._process.returncode != 0 or not lines:
            raise _Relayed(
                f"the tracking worker stopped with exit code {self._process.returncode} "
                "(its error is in the run's log)"
            )
        reply = json.loads(lines[-1])
        if not reply.get("ok"):
            raise _Relayed(reply.get("error") or "the tracking worker gave no reason")
        reply.pop("error", None)
        return TrackingResult(**reply)

    def track(self, facts: RunFacts, config_path, started: Optional[float]) -> TrackingResult:
        result = self._ask(
            {
                "kind": "run",
                "facts": facts.to_json(),
                "config_path": str(config_path) if config_path else None,
                "started": started,
            }
        )
        result.facts = facts
        return result

    def failure(self, error: str, started: Optional[float]) -> TrackingResult:
        return self._ask({"kind": "failure", "error": error, "started": started})

    def close(self) -> None:
        """Stop a worker that was given nothing to log (the run was interrupted)."""
        if self._process.poll() is None:
            self._process.communicate("", timeout=self._wait_s)


def worker_environment(cfg: HohConfig, environ) -> dict:
    """The worker's environment: bytecode kept in `tracking.bytecode_cache` when the environment
    forbids writing it beside the sources (and names no other place), so MLflow is compiled once,
    not on every run. The sources stay untouched, which is what PYTHONDONTWRITEBYTECODE is for."""
    env = dict(environ)
    cache = cfg.tracking.bytecode_cache
    if cache and env.get("PYTHONDONTWRITEBYTECODE") and not env.get("PYTHONPYCACHEPREFIX"):
        del env["PYTHONDONTWRITEBYTECODE"]
        env["PYTHONPYCACHEPREFIX"] = os.path.expanduser(cache)
    return env


def result_json(result: TrackingResult) -> dict:
    """What the worker sends back: the result without the facts the parent already has."""
    reply = dataclasses.asdict(result)
    reply.pop("facts")
    return reply


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, _Relayed) else store.short(exc)


def prepare_tracking(cfg: HohConfig) -> Optional[Preparation]:
    return Preparation(cfg) if cfg.tracking.enabled else None


def run_config_path(cfg: HohConfig, run_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    return Path(cfg.output_dir) / RUNS_DIR / safe / CONFIG_ARTIFACT


def save_run_config(cfg: HohConfig, run_id: Optional[str]) -> Optional[Path]:
    """The resolved config beside the run's outputs (kept even when tracking is off or down)."""
    if not run_id:
        return None
    path = run_config_path(cfg, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(str(path), cfg.to_yaml())
    return path


def mlflow_record(facts: RunFacts, cfg: HohConfig):
    """(params, metrics as (key, value, step), tags): the MLflow view of the facts."""
    params = {k: v[:_PARAM_MAX] for k, v in flatten(cfg.model_dump(by_alias=True)).items()}
    metrics: list[tuple[str, float, int]] = []

    def add(key: str, value, step: int = 0) -> None:
        if value is not None:
            metrics.append((key, float(value), step))

    for split, n in facts.example_counts.items():
        add(metric_key("examples", split), n)
    for split, per in facts.class_counts.items():
        for cls, n in per.items():
            add(metric_key("examples", split, cls), n)
    for split, found in facts.anomalies.items():
        add(metric_key("anomalies", split), len(found))
    for name, values in facts.curves.items():
        for epoch, value in enumerate(values):
            add(metric_key("train", name), value, epoch)
    for name, value in facts.metrics.items():
        add(metric_key("eval", name), value)
    for name, value in facts.diffs.items():
        add(metric_key("eval_diff", name), value)
    for cls, per in facts.per_class.items():
        for name, value in per.items():
            add(metric_key("eval_class", cls, name), value)
    for c in facts.components:
        add(metric_key("duration_s", c["component"]), c["seconds"])
        add(metric_key("peak_rss_mb", c["component"]), c["peak_rss_mb"])
    add("duration_s", facts.duration_s)
    if facts.drift is not None:
        add("drift.drifted_share", facts.drift.get("drifted_share"))
        add("drift.detected", int(bool(facts.drift.get("drift_detected"))))
    if facts.blessed is not None:
        add("blessed", int(facts.blessed))
    tags = {
        "hoh.pipeline": facts.pipeline_name,
        "hoh.mlmd.pipeline_run": facts.run_id or "",
        "hoh.mlmd.run_context_id": str(facts.run_context_id or ""),
        "hoh.mlmd.metadata_path": str(Path(cfg.metadata_path).resolve()),
        "hoh.span": "" if facts.span is None else str(facts.span),
        "hoh.blessed": {True: "yes", False: "no", None: "unknown"}[facts.blessed],
        "hoh.blessing_reason": facts.blessing_reason[:5000],
        "hoh.drift": facts.drift_verdict[:5000],
        "hoh.pushed_version": facts.pushed_version or "",
        "hoh.classes": ",".join(facts.classes),
        "hoh.anomalies": json.dumps(facts.anomalies)[:5000],
        TRAINER_LOGS_TAG: facts.artifact_uris.get("ModelRun", ""),
    }
    if facts.cached_from:  # Kubeflow reused earlier executions: the facts are not all new
        tags["hoh.cached_from"] = json.dumps(facts.cached_from, sort_keys=True)[:5000]
    for kind, artifact_id in facts.artifact_ids.items():
        tags[f"hoh.mlmd.artifact.{metric_key(kind)}"] = str(artifact_id)
    return params, metrics, {k: v for k, v in tags.items() if v != ""}


def _log(mlflow_client, run_id: str, params, metrics, tags) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    params_list = [Param(k, v) for k, v in params.items()]
    metric_list = [Metric(k, v, now, step) for k, v, step in metrics]
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    # log_batch takes at most 100 params / 1000 metrics per call
    for i in range(0, len(params_list), 100):
        mlflow_client.log_batch(run_id, params=params_list[i : i + 100])
    for i in range(0, len(metric_list), 1000):
        mlflow_client.log_batch(run_id, metrics=metric_list[i : i + 1000])
    if tag_list:
        mlflow_client.log_batch(run_id, tags=tag_list)


def _link_mlmd(cfg: HohConfig, facts: RunFacts, mlflow_run_id: str) -> Optional[str]:
    """Put the MLflow run id on the MLMD pipeline_run context: each store names the other."""
    if facts.run_context_id is None or not os.path.exists(cfg.metadata_path):
        return None
    try:
        from ml_metadata.metadata_store import metadata_store
        from ml_metadata.proto import metadata_store_pb2

        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = str(Path(cfg.metadata_path).resolve())
        mlmd = metadata_store.MetadataStore(config)
        [context] = mlmd.get_contexts_by_id([facts.run_context_id])
        context.custom_properties["mlflow_run_id"].string_value = mlflow_run_id
        mlmd.put_contexts([context])
    except Exception as exc:  # the link is a convenience; the MLflow side has the MLMD ids
        return f"could not tag the MLMD run with the MLflow run id: {store.short(exc)}"
    return None


def track_run(
    cfg: HohConfig,
    summary: RunSummary,
    echo: Callable[[str], None] = print,
    started: Optional[float] = None,
    prepared: Optional[Preparation] = None,
) -> TrackingResult:
    """Record a finished run; never raises for a tracking problem (the result says it)."""
    config_path = save_run_config(cfg, summary.run_id)
    if not cfg.tracking.enabled:
        return TrackingResult(True, "tracking: off (tracking.enabled: false)")
    t0 = time.monotonic()
    try:
        facts = collect(cfg, summary)
    except Exception as exc:
        failed = f"tracking FAILED: could not read the run's facts: {store.short(exc)}"
        return _report(cfg, TrackingResult(False, failed), echo)
    return track_facts(cfg, facts, echo, config_path, started, prepared, t0)


def track_facts(
    cfg: HohConfig,
    facts: RunFacts,
    echo: Callable[[str], None] = print,
    config_path=None,
    started: Optional[float] = None,
    prepared: Optional[Preparation] = None,
    t0: Optional[float] = None,
) -> TrackingResult:
    """Log facts already read (from MLMD, or by the TrackRun node from its input artifacts);
    never raises for a tracking problem (the result says it)."""
    t0 = time.monotonic() if t0 is None else t0
    uri = store.tracking_uris(cfg)[0]
    try:
        if prepared is not None:
            result = prepared.track(facts, config_path, started)
        else:
            result = log_facts(cfg, facts, config_path, started)
    except Exception as exc:
        mlmd = f" (MLMD: {cfg.metadata_path})" if os.path.exists(cfg.metadata_path) else ""
        result = TrackingResult(
            False,
            f"tracking FAILED ({store.redact(uri)}): {_why(exc)}; the pipeline run itself "
            f"completed{mlmd}",
            facts=facts,
        )
    result.notes = facts.notes + result.notes
    if result.ok:
        result.message += f" ({time.monotonic() - t0:.1f} s)"
    return _report(cfg, result, echo)


def _report(cfg: HohConfig, result: TrackingResult, echo: Callable[[str], None]):
    secrets = (cfg.tracking.uri, cfg.tracking.registry_uri)
    result.message = store.scrub(result.message, *secrets)
    result.notes = [store.scrub(note, *secrets) for note in result.notes]
    for line in result.lines():
        echo(line)
    return result


def log_facts(
    cfg: HohConfig,
    facts: RunFacts,
    config_path,
    started: Optional[float],
    opened: Optional[Opened] = None,
) -> TrackingResult:
    """The MLflow run, the registered version and the MLMD link; raises what goes wrong."""
    from hoh.pipeline.tracking import registry

    mlflow_client = (opened or Opened(cfg)).get()
    experiment = store.experiment_id(mlflow_client, cfg)
    run_name = f"{cfg.pipeline_name}-{(facts.run_id or 'run').replace(':', '')}"
    run = mlflow_client.create_run(
        experiment,
        run_name=run_name,
        start_time=int(started * 1000) if started else None,
        tags={"hoh.mlmd.pipeline_run": facts.run_id or ""},
    )
    run_id = run.info.run_id
    status = "FAILED"
    notes: List[str] = []
    try:
        params, metrics, tags = mlflow_record(facts, cfg)
        _log(mlflow_client, run_id, params, metrics, tags)
        mlflow_client.log_text(run_id, cfg.to_yaml(), CONFIG_ARTIFACT)
        mlflow_client.log_text(run_id, "\n".join(facts.summary_lines) + "\n", SUMMARY_ARTIFACT)
        mlflow_client.log_dict(run_id, facts.to_json(), FACTS_ARTIFACT)
        if facts.drift is not None:
            mlflow_client.log_dict(run_id, facts.drift, "drift/summary.json")
        version, alias, reg_notes = (None, None, [])
        if cfg.tracking.register_models:
            version, alias, reg_notes = registry.register_run(mlflow_client, cfg, facts, run_id)
        notes += reg_notes
        if note := _link_mlmd(cfg, facts, run_id):
            notes.append(note)
        status = "FINISHED"
    finally:
        mlflow_client.set_terminated(run_id, status)
    where = store.redact(store.tracking_uris(cfg)[0])
    message = f"tracked: MLflow run {run_id} in experiment {store.experiment_name(cfg)!r} ({where})"
    if version:
        message += f"; registered {cfg.push.model_name} version {version}"
        message += f" as {alias}" if alias else " (aliases unchanged)"
    if config_path:
        message += f"; config {config_path}"
    return TrackingResult(True, message, run_id, version, alias, facts, notes)


def track_latest(cfg: HohConfig, echo: Callable[[str], None] = print) -> TrackingResult:
    """Track the newest run in the config's MLMD (a notebook's, or one tracked late)."""
    from hoh.pipeline.telemetry.summary import summarize

    summary = summarize(str(Path(cfg.metadata_path).resolve()), [])
    return track_run(cfg, summary, echo)


def track_failure(
    cfg: HohConfig,
    error: str,
    echo: Callable[[str], None] = print,
    started: Optional[float] = None,
    prepared: Optional[Preparation] = None,
) -> TrackingResult:
    """Record a run that stopped with an error: its config and the error, status FAILED, so
    `hoh runs list` shows it too. Registers nothing; never raises."""
    if not cfg.tracking.enabled:
        return TrackingResult(True, "tracking: off (tracking.enabled: false)")
    try:
        if prepared is not None:
            result = prepared.failure(error, started)
        else:
            result = log_failure(cfg, error, started)
    except Exception as exc:
        result = TrackingResult(False, f"tracking FAILED: {_why(exc)}")
    result.message = store.scrub(result.message, cfg.tracking.uri, cfg.tracking.registry_uri)
    echo(result.message)
    return result


def log_failure(
    cfg: HohConfig, error: str, started: Optional[float], opened: Optional[Opened] = None
) -> TrackingResult:
    """The MLflow side of `track_failure`; raises what goes wrong."""
    mlflow_client = (opened or Opened(cfg)).get()
    run = mlflow_client.create_run(
        store.experiment_id(mlflow_client, cfg),
        run_name=f"{cfg.pipeline_name}-failed",
        start_time=int(started * 1000) if started else None,
        tags={
            "hoh.status": "failed",
            "hoh.error": error[:5000],
            "hoh.pipeline": cfg.pipeline_name,
        },
    )
    params = {k: v[:_PARAM_MAX] for k, v in flatten(cfg.model_dump(by_alias=True)).items()}
    _log(mlflow_client, run.info.run_id, params, [], {})
    mlflow_client.log_text(run.info.run_id, cfg.to_yaml(), CONFIG_ARTIFACT)
    mlflow_client.set_terminated(run.info.run_id, "FAILED")
    return TrackingResult(
        True, f"tracked the failed run: MLflow run {run.info.run_id}", run.info.run_id
    )
