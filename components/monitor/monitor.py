"""`run_monitor`: a window of captured traffic and the model that served it in, a verdict out.

The one entry point of `hoh monitor` (and of any scheduler that calls it as a job). Each part is
delegated to the code that owns it, so traffic is judged exactly as a new span is:
- input drift: `check_drift` of the drift component, the window standing in for the current span;
- prediction drift: `predictions.py`, against the model's predictions on its eval split (the
  pusher's record in the version directory; computed here for a version pushed without one);
- the labelling batch: `sample_pool` of the sampler, the window standing in for the pool;
- service health: `prometheus.py`, from the gateway's and Triton's metrics in Prometheus
  (`monitor.prometheus_url`), else `service.py`, from the gateway's audit log over the same days;
- online accuracy: `accuracy.py`, the captures joined with the labels fed back to the gateway
  and those of Label Studio exports of earlier labelling batches (`monitor.label_exports`).

The verdict names the first problem of drift, accuracy_low, slo_breached (each one is also a
flag in `checks`, and a series in the textfile, since several can hold at once); without any,
insufficient_data when too few images were served, else ok.

Files in `out_dir`: summary.json (written last: a directory with one is complete),
input_drift/ (the drift check's own report.html, embeddings.html, summary.json),
prediction_drift.html, reference_predictions.json (no push-time record), the Prometheus textfile,
label_batch/; and two snapshots in the Evidently workspace (`workspace.py`, `hoh dashboard`).
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from datetime import time as clock
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hoh import features
from hoh.components.monitor import predictions as preds
from hoh.components.monitor import prom, prometheus, trigger
from hoh.components.monitor.accuracy import online_accuracy, read_label_studio, rests_on
from hoh.components.monitor.service import health, read_requests
from hoh.components.monitor.window import Window
from hoh.config import DriftConfig, MonitorConfig, SamplingConfig
from hoh.errors import UsageError
from hoh.trainer import eval_predictions

SUMMARY_FILE = "summary.json"
INPUT_DRIFT_DIR = "input_drift"
PREDICTION_REPORT = "prediction_drift.html"
REFERENCE_PREDICTIONS = "reference_predictions.json"
LABEL_BATCH_DIR = "label_batch"
RETRAIN_LOG = "retrain.log"
SCHEMA_VERSION = 1
TRITON_SAVEDMODEL = "model.savedmodel"

Echo = Callable[[str], None]


def served_identity(
    model_path: str | Path, version: Optional[str], name: Optional[str]
) -> tuple[Optional[str], str]:
    """(served model name, version) the captures of `model_path` carry. A Triton version
    directory (`<repo>/<name>/<version>/`) says both; any other model path needs `version`."""
    path = Path(model_path).resolve()
    if path.name == TRITON_SAVEDMODEL:
        path = path.parent
    if path.name.isdigit() and (path / TRITON_SAVEDMODEL).is_dir():
        return name or path.parent.name, version or path.name
    if not version:
        raise UsageError(
            f"model {model_path} is not a Triton version directory (<repository>/<name>/<N>/): "
            "give the served version with --version N"
        )
    return name, version


def _sampling_settings(config: SamplingConfig, k: int):
    from hoh.components.sampling.sample import SamplingSettings

    return SamplingSettings(
        k=k,
        strategy=config.strategy,
        diversity=config.diversity,
        candidates_factor=config.candidates_factor,
        from_name=config.from_name,
        to_name=config.to_name,
        url_prefix=config.image_url_prefix,
    )


def _input_drift(summary: dict) -> dict:
    """The drift check's summary, cut to what a monitoring run reports on."""
    keep = ("drift_detected", "drifted_share", "reasons", "descriptors", "embeddings", "notes")
    return {
        **{k: summary[k] for k in keep},
        "drifted": (summary["descriptors"] or {}).get("drifted", []),
        "skipped": (summary["current"] or {}).get("skipped", []),
        "reference": summary["reference"],
        "summary": f"{INPUT_DRIFT_DIR}/{SUMMARY_FILE}",
    }


def pushed_record(model_path: str | Path) -> Optional[Path]:
    """The pusher's record of the model's eval predictions, inside its version directory."""
    path = Path(model_path)
    path = path.parent if path.name == TRITON_SAVEDMODEL else path
    candidate = path / eval_predictions.RECORD_FILE
    return candidate if candidate.is_file() else None


def _reference_predictions(
    reference: str,
    path: Optional[str],
    model_path: str,
    predictor: Callable[[], Any],
    config: MonitorConfig,
    out_dir: Path,
    echo: Echo,
) -> tuple[list, dict]:
    """The baseline rows and where they came from; `predictor` loads the model only when the
    rows must be computed (or a recorded file's version checked)."""
    from hoh.data.sources import resolve_path

    if path:
        rows, data = preds.read_record(path, predictor().model_version)
        return rows, {"source": data.get("source"), "recorded": str(path), "skipped": []}
    pushed = pushed_record(model_path)
    if pushed:  # inside the version directory: whose it is needs no check
        rows, data = preds.read_record(pushed, None)
        return rows, {"source": data.get("source"), "recorded": str(pushed), "skipped": []}
    source = resolve_path(reference, tuple(config.reference_splits), "reference")
    echo(
        f"predicting {source.description}: {model_path} holds no {eval_predictions.RECORD_FILE} "
        "(pushed before the pusher recorded it)"
    )
    rows, skipped = preds.predict_records(source, predictor())
    record = preds.record(predictor().model_version, source.description, rows, skipped)
    (out_dir / REFERENCE_PREDICTIONS).write_text(json.dumps(record) + "\n", encoding="utf-8")
    return rows, {"source": source.description, "recorded": None, "skipped": skipped}


def run_monitor(
    window: Window,
    model_path: str,
    reference: str,
    out_dir: str | Path,
    config: MonitorConfig = MonitorConfig(),
    drift: DriftConfig = DriftConfig(),
    sampling: SamplingConfig = SamplingConfig(),
    reference_predictions: Optional[str] = None,
    textfile_dir: Optional[str] = None,
    echo: Echo = lambda line: None,
    audit_dirs: Sequence[str | Path] = (),
    now: Optional[float] = None,
    launcher: Optional[trigger.Launcher] = None,
) -> dict:
    """Judge `window` (served by the model at `model_path`) against `reference` (a data root,
    span or image folder: the data the model knows) and, with `audit_dirs`, the gateway's
    service health over the same days; writes the files listed above into `out_dir` and
    returns the summary. `now` (UNIX seconds, default the clock) ends a window still running;
    `launcher` starts the retraining command of `monitor.on_alert` (tests pass a fake one)."""
    from hoh.components.drift.check import check_drift
    from hoh.data.sources import resolve_path
    from hoh.trainer.predictor import Predictor

    now = time.time() if now is None else now
    out = Path(out_dir)
    state = Path(config.trigger_state)
    state = state if state.is_absolute() else out.resolve().parent / state
    if config.on_alert != "none":  # a bad setting or state file fails before the work
        trigger.command(config.on_alert, config.trigger_args)
        trigger.read_state(state)
    exports = config.label_exports
    studio = read_label_studio(exports, sampling.from_name) if exports else None
    out.mkdir(parents=True, exist_ok=True)
    reference_source = resolve_path(reference, features.SPLITS, "reference")
    counts, reasons, notes = window.counts(), [], []
    files = [SUMMARY_FILE, config.textfile]
    input_drift = prediction_drift = batch = None
    if window.other_versions:
        notes.append(
            f"{counts['other_versions']} result line(s) of other model versions left out "
            f"({', '.join(f'{k}: {n}' for k, n in sorted(window.other_versions.items()))}); "
            "monitor them with their own model"
        )
    loaded: list = []

    def predictor():
        """The model, loaded once and only when needed: with the push-time record an `ok`
        window never needs it (the drift check loads its own for embeddings)."""
        if not loaded:
            loaded.append(Predictor(model_path, embeddings=sampling.diversity))
        return loaded[0]

    snapshots: dict = {}  # the drift check's Evidently snapshot, for the workspace
    start = datetime.combine(window.since, clock(), tzinfo=timezone.utc).timestamp()
    end = datetime.combine(window.until + timedelta(days=1), clock(), tzinfo=timezone.utc)
    service = _service_health(window.model, start, min(end.timestamp(), now), config, audit_dirs)
    if service and service.get("fallback_from"):
        notes.append(f"service health from the audit log: {service['fallback_from']}")
    elif service and service.get("error"):
        notes.append(f"service health unknown: {service['error']}")
    insufficient = len(window.served) < config.min_images
    drifted = False
    if insufficient:
        reasons.append(
            f"{len(window.served)} usable served image(s) of version {window.version} in the "
            f"window, fewer than monitor.min_images={config.min_images}"
        )
    else:
        settings = drift.model_copy(update={"label_drift": False})  # captures carry no labels
        echo(f"input drift: {window.description} against {reference_source.description}")
        input_drift = _input_drift(
            check_drift(
                window,
                reference_source,
                str(out / INPUT_DRIFT_DIR),
                settings,
                model_path,
                echo,
                snapshots=snapshots,
            )
        )
        counts["undecodable"] = len(input_drift["skipped"])
        drift_reasons = list(input_drift["reasons"])
        files.append(f"{INPUT_DRIFT_DIR}/")
        if config.prediction_drift:
            prediction_drift = _prediction_drift(
                window,
                reference,
                reference_predictions,
                model_path,
                predictor,
                config,
                drift,
                out,
                echo,
            )
            notes += prediction_drift.pop("notes")
            drift_reasons += preds.reasons(prediction_drift)
            computed = prediction_drift["reference_origin"]["recorded"] is None
            files += [PREDICTION_REPORT] + ([REFERENCE_PREDICTIONS] if computed else [])
        drifted = bool(drift_reasons)
        reasons += drift_reasons
    reasons += service["reasons"] if service else []
    accuracy = online_accuracy(window, config.min_accuracy, config.min_feedback, studio)
    reasons += accuracy["reasons"] if accuracy else []
    checks = {
        "drift": drifted,
        "accuracy_low": bool(accuracy and accuracy["accuracy_low"]),
        "slo_breached": bool(service and service["slo_breached"]),
    }
    verdict = next((name for name, hit in checks.items() if hit), None)
    verdict = verdict or ("insufficient_data" if insufficient else "ok")
    # The model's answers are in question (or unknown): label what it was least sure about.
    # A slow or failing service alone is not the model's fault.
    needs_labels = insufficient or checks["drift"] or checks["accuracy_low"]
    if needs_labels and config.label_batch and window.served:
        from hoh.components.sampling.sample import read_ids, sample_pool

        exclude = read_ids(reference_source) if sampling.exclude_labeled else frozenset()
        echo(f"verdict {verdict}: writing the least certain captures as a labelling batch")
        batch = sample_pool(
            window,
            predictor(),
            str(out / LABEL_BATCH_DIR),
            _sampling_settings(sampling, config.label_k or sampling.k),
            exclude,
            echo,
            task_fields=window.task_fields,
        )
        batch = {
            "dir": LABEL_BATCH_DIR,
            **{k: batch[k] for k in ("selected", "scored", "strategy")},
        }
        files.append(f"{LABEL_BATCH_DIR}/")
    fired = trigger.maybe_fire(
        checks,
        reasons,
        verdict,
        config.on_alert,
        config.trigger_args,
        config.cooldown_hours,
        state,
        out / RETRAIN_LOG,
        now,
        launcher,
    )
    files += [RETRAIN_LOG] if fired and (out / RETRAIN_LOG).exists() else []
    summary = {
        "schema_version": SCHEMA_VERSION,
        "verdict": verdict,
        "checks": checks,
        "reasons": reasons,
        "window": {
            "captures": str(window.root),
            "since": str(window.since),
            "until": str(window.until),
            "days": window.days,
            "end_ts": end.timestamp(),
        },
        "model": {"path": str(model_path), "name": window.model, "version": window.version},
        "reference": reference_source.description,
        "counts": counts,
        "problems": window.problems(),
        "input_drift": input_drift,
        "prediction_drift": prediction_drift,
        "service": service,
        "online_accuracy": accuracy,
        "label_batch": batch,
        "trigger": fired,
        "notes": notes,
        "files": files,
    }
    summary["workspace"] = _to_workspace(window, summary, snapshots, config, out, now, echo, studio)
    text = prom.render(prom.samples(summary, time.time()))
    prom.write_textfile(out / config.textfile, text)
    if textfile_dir:
        prom.write_textfile(Path(textfile_dir) / config.textfile, text)
    temp = out / f".{SUMMARY_FILE}.tmp"
    temp.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temp, out / SUMMARY_FILE)
    return summary


def workspace_path(config: MonitorConfig, out_dir: str | Path) -> Optional[Path]:
    """`monitor.workspace`, relative to the parent of the run's output directory."""
    if not config.workspace:
        return None
    path = Path(config.workspace)
    return path if path.is_absolute() else Path(out_dir).resolve().parent / path


def _to_workspace(
    window: Window,
    summary: dict,
    snapshots: dict,
    config: MonitorConfig,
    out: Path,
    now: float,
    echo: Echo,
    studio: Optional[tuple] = None,
) -> Optional[dict]:
    """Add the run to the Evidently workspace (`workspace.py`); a workspace that cannot be
    written is said in the summary and on the terminal, and costs the run nothing else."""
    if not (config.workspace or config.workspace_url):
        return None
    from hoh.components.monitor import workspace as ws
    from hoh.components.monitor.accuracy import true_classes, window_labels
    from hoh.errors import HohError

    folder = workspace_path(config, out)
    where = config.workspace_url or str(folder)
    when = datetime.fromtimestamp(min(summary["window"]["end_ts"], now), timezone.utc)
    metadata = {
        "model": window.model or "",
        "version": window.version,
        "verdict": summary["verdict"],
        "window": f"{window.since}..{window.until}",
    }
    runs = {ws.INPUT_DRIFT: snapshots["descriptors"]} if "descriptors" in snapshots else {}
    served = [(s.predicted, s.confidence) for s in window.served]
    try:
        if served:
            truths = true_classes(window, window_labels(window, studio)[0])
            runs[ws.SERVED] = ws.served_snapshot(served, truths)
        opened = ws.open_workspace(str(folder) if folder else None, config.workspace_url)
        added = ws.add_run(opened, config.project, runs, when.replace(tzinfo=None), metadata)
    except (HohError, OSError, ValueError) as exc:
        echo(f"Evidently workspace {where}: not updated ({exc})")
        return {"where": where, "error": str(exc)}
    echo(f"Evidently workspace {where}: {len(runs)} snapshot(s) added to {config.project!r}")
    return {"where": where, **added}


def _prediction_drift(
    window: Window,
    reference: str,
    recorded: Optional[str],
    model_path: str,
    predictor: Callable[[], Any],
    config: MonitorConfig,
    drift: DriftConfig,
    out: Path,
    echo: Echo,
) -> dict:
    from hoh.components.drift.report import save_snapshot_html

    ref_rows, origin = _reference_predictions(
        reference, recorded, model_path, predictor, config, out, echo
    )
    if not ref_rows:
        raise UsageError(f"reference {origin['source']}: no image the model could predict")
    served = [(s.predicted, s.confidence) for s in window.served]
    notes = []
    if origin["recorded"] is None:
        notes.append(
            "reference predictions computed now with the model on "
            f"{origin['source']}: the version holds no push-time record "
            f"({eval_predictions.RECORD_FILE}, written by pushes since it existed); "
            f"saved as {REFERENCE_PREDICTIONS}"
        )
    from hoh.trainer.predictor import read_class_names

    unknown = sorted({c for c, _ in served} - set(read_class_names(model_path)))
    if unknown:
        notes.append(
            f"served classes {unknown} are not classes of model {model_path}: "
            "is --model the model that served the window?"
        )
    echo("prediction drift: served classes and confidences against the reference predictions")
    snapshot, result = preds.prediction_report(ref_rows, served, drift)
    save_snapshot_html(snapshot, str(out / PREDICTION_REPORT))
    return {**result, "reference_origin": origin, "notes": notes}


def _service_health(
    model: Optional[str],
    start: float,
    end: float,
    config: MonitorConfig,
    audit_dirs: Sequence[str | Path],
) -> Optional[dict]:
    """From Prometheus when configured; from the audit log when not, or when Prometheus could
    not answer and there is an audit log (the result says so: `fallback_from`)."""
    objectives = (config.latency_p95_objective_ms, config.max_error_rate)
    scraped = None
    if config.prometheus_url:
        scraped = prometheus.health(config.prometheus_url, start, end, model, *objectives)
        if not scraped.get("error") or not audit_dirs:
            return scraped
    if not audit_dirs:
        return None
    logged = health(read_requests(audit_dirs, start, end, model), end - start, *objectives)
    return {**logged, "fallback_from": scraped["error"]} if scraped else logged


def summary_lines(summary: dict) -> list[str]:
    """A few lines for a terminal: the verdict, why, and what was left out."""
    c = summary["counts"]
    unknown = (summary.get("service") or {}).get("error")  # no silent "ok" about the service
    lines = [
        f"monitor: {summary['verdict'].upper()} ({c['served_images']} served images of version "
        f"{summary['model']['version']}, {len(summary['window']['days'])} day(s))"
        + (", service health UNKNOWN" if unknown else "")
    ]
    lines += [f"  - {reason}" for reason in summary["reasons"]]
    left_out = {
        k: n for k, n in c.items() if n and k not in ("days", "result_lines", "served_images")
    }
    if left_out:
        lines.append(
            "  left out: "
            + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in left_out.items())
            + " (named in summary.json 'problems')"
        )
    lines += [f"  note: {note}" for note in summary["notes"]]
    if summary.get("service"):
        lines.append("  " + service_line(summary["service"]))
    if summary.get("online_accuracy"):
        lines.append("  " + accuracy_line(summary["online_accuracy"]))
    fired = summary.get("trigger")
    if fired and fired["fired"]:
        lines.append(
            f"  retraining started ({fired['mode']}, because {', '.join(fired['why'])}): "
            f"log {fired['log']}, recorded in {fired['state']}"
        )
    elif fired:
        lines.append(f"  retraining not started: {fired.get('skipped') or fired.get('error')}")
    if summary["label_batch"]:
        b = summary["label_batch"]
        lines.append(f"  labelling batch: {b['selected']} images in {b['dir']}/label_studio.json")
    return lines


def service_line(service: dict) -> str:
    def ms(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.0f}"

    if service.get("error"):
        return f"service: UNKNOWN, {service['error']}"
    source = "Prometheus" if service.get("source") == "prometheus" else "the gateway's audit log"
    if not service["requests"]:
        return f"service: no predict request in {source} for the window"
    latency = "/".join(ms(service["latency_ms"][k]) for k in ("p50", "p95", "p99"))
    rate = service["request_rate"]
    per_second = "-" if rate is None else f"{rate:.3g}"  # None: a window not begun yet
    return (
        f"service: {service['requests']} predict requests ({per_second}/s), "
        f"5xx {service['error_ratio']:.1%}, p50/p95/p99 {latency} ms "
        f"(objective p95 <= {service['objective_p95_ms']:.0f} ms; from {source})"
    )


def accuracy_line(result: dict) -> str:
    studio = result.get("label_studio") or {}
    left_out = [
        f"{studio[key]} {what}"
        for key, what in (
            ("unmatched", "for captures outside this window"),
            ("not_captures", "for images that are not captures"),
            ("bad_task_count", "malformed (named in summary.json)"),
        )
        if studio.get(key)
    ]
    outside = f"; Label Studio tasks left out: {', '.join(left_out)}" if left_out else ""
    if not result["labels"]:
        return (
            f"online accuracy: none of {result['labelled_images']} label(s) is for a "
            f"capture of this window{outside}"
        )
    judged = "" if result["judged"] else f", too few to judge (< {result['min_labels']})"
    return (
        f"online accuracy: {result['accuracy']:.1%} on {rests_on(result)}"
        f"{judged} (threshold {result['min_accuracy']:.0%}){outside}"
    )
