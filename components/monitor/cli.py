"""`hoh monitor`: judge a window of captured gateway traffic against the data the model knows.

Argument parsing and printing only; the work is `hoh.components.monitor.monitor.run_monitor`.
Unset options take the config's defaults (`monitor`, `drift` and `sampling` sections of
`hoh.config`), read when the command runs: pydantic would cost `hoh --help` half a second.
"""

from __future__ import annotations

import argparse

from hoh.errors import ExitCode


def _run(args: argparse.Namespace) -> int:
    import shlex
    from datetime import datetime, timezone
    from pathlib import Path

    from hoh.components.monitor.monitor import run_monitor, served_identity, summary_lines
    from hoh.components.monitor.window import read_window, window_dates
    from hoh.config import DriftConfig, MonitorConfig, SamplingConfig
    from hoh.errors import UsageError

    config = MonitorConfig()
    if args.k is not None:
        if args.k < 1:
            raise UsageError(f"--k must be at least 1, got {args.k}")
        config.label_k = args.k
    if args.no_label_batch:
        config.label_batch = False
    if args.workspace:
        config.workspace = str(Path(args.workspace).resolve())
    if args.no_workspace:
        config.workspace, config.workspace_url = None, None
    if args.prometheus is not None:
        try:
            config.prometheus_url = args.prometheus
        except ValueError:
            raise UsageError(
                f"--prometheus {args.prometheus!r} is not an http(s):// URL of Prometheus"
            ) from None
    if args.on_alert is not None:
        config.on_alert = args.on_alert
    if args.cooldown_hours is not None:
        if args.cooldown_hours < 0:
            raise UsageError(f"--cooldown-hours must be 0 or more, got {args.cooldown_hours}")
        config.cooldown_hours = args.cooldown_hours
    if args.labels:
        config.label_exports = args.labels
    if args.trigger_state is not None:
        config.trigger_state = args.trigger_state
    if args.trigger_args is not None:
        try:
            config.trigger_args = shlex.split(args.trigger_args)
        except ValueError as exc:
            raise UsageError(f"--trigger-args {args.trigger_args!r}: {exc}") from None
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output {out} is not an empty directory; each run writes a new one")
    name, version = served_identity(args.model, args.version, args.served_model)
    today = datetime.now(timezone.utc).date()
    since, until = window_dates(args.since, args.until, config.window_days, today)
    window = read_window(args.capture, since, until, version, name)
    summary = run_monitor(
        window,
        args.model,
        args.reference,
        out,
        config,
        DriftConfig(),
        SamplingConfig(),
        reference_predictions=args.reference_predictions,
        textfile_dir=args.textfile_dir,
        echo=print,
        audit_dirs=args.audit,
    )
    for line in summary_lines(summary):
        print(line)
    print(f"summary: {out}/summary.json, metrics: {out}/{config.textfile}")
    drifted = args.fail_on_drift and summary["checks"]["drift"]
    return ExitCode.DRIFT_DETECTED if drifted else ExitCode.OK


def _dashboard(args: argparse.Namespace) -> int:
    """Replace this process with `evidently ui` (so its PID is the server's: a service manager
    or a test stops the UI itself, never an orphaned child)."""
    import os
    import sys
    from pathlib import Path

    from hoh.config import MonitorConfig
    from hoh.errors import UsageError

    config = MonitorConfig()
    if config.workspace_url and not args.workspace:
        print(f"the monitoring dashboard is the Evidently UI at {config.workspace_url}")
        return 0
    folder = Path(args.workspace or config.workspace or "")
    if not args.workspace and not config.workspace:
        raise UsageError("no workspace: give --workspace DIR (monitor.workspace is null)")
    if not folder.is_dir():
        raise UsageError(
            f"workspace {folder}: no such directory; `hoh monitor` creates it beside its --out "
            "directories (monitor.workspace), give that path with --workspace"
        )
    host = args.host or config.dashboard_host
    port = args.port if args.port is not None else config.dashboard_port
    if not 0 < port < 65536:
        raise UsageError(f"--port must be 1..65535, got {port}")
    print(f"Evidently UI on http://{host}:{port} (workspace {folder}); Ctrl-C stops it", flush=True)
    argv = [sys.executable, "-m", "evidently.cli", "ui", "--workspace", str(folder)]
    os.execv(sys.executable, [*argv, "--host", host, "--port", str(port)])
    return 1  # not reached


def register(subparsers: argparse._SubParsersAction) -> None:
    dashboard = subparsers.add_parser(
        "dashboard",
        help="serve the monitoring dashboard: the Evidently UI on hoh monitor's workspace",
        description="Start the Evidently UI (shipped with the installed package, works offline) "
        "on the workspace every `hoh monitor` run adds its snapshots to: drift share, drifted "
        "descriptors, class mix, mean confidence, online accuracy and sample counts over time "
        "(docs/MONITORING.md). Binds loopback unless --host says otherwise: the UI has no login.",
    )
    dashboard.add_argument(
        "--workspace",
        metavar="DIR",
        help="the workspace folder (default: monitor.workspace, from the working directory)",
    )
    dashboard.add_argument("--host", help="address to bind (default: monitor.dashboard_host)")
    dashboard.add_argument("--port", type=int, help="default: monitor.dashboard_port")
    dashboard.set_defaults(handler=_dashboard)

    monitor = subparsers.add_parser(
        "monitor",
        help="check captured gateway traffic: drift, online accuracy, service health, verdict",
        description="Read the images and results `hoh gateway --capture-dir` kept for the days "
        "SINCE..UNTIL (UTC), keep those served by MODEL's version, and test them against "
        "REFERENCE: input drift with the drift check's descriptors and embeddings, prediction "
        "drift of the served classes and confidences against the model's predictions on its eval "
        "split (recorded in the version directory by the push; computed from REFERENCE for a "
        "version pushed without one). Writes summary.json, Evidently HTML reports, a Prometheus "
        "textfile and two snapshots in the Evidently workspace `hoh dashboard` serves; when "
        "the verdict is not ok, the least certain captures become a Label Studio batch (as "
        "`hoh sample` makes). With --audit, the window's request rate, error rate and "
        "latency percentiles against the objective; with labels fed back (POST /v1/feedback) or "
        "--labels, online accuracy; with --on-alert, a retraining run (docs/MONITORING.md).",
    )
    monitor.add_argument(
        "--capture", required=True, metavar="DIR", help="the gateway's capture dir"
    )
    monitor.add_argument("--since", metavar="YYYY-MM-DD", help="first day (default: see --until)")
    monitor.add_argument(
        "--until",
        metavar="YYYY-MM-DD",
        help="last day, inclusive (default: today UTC; the window spans monitor.window_days)",
    )
    monitor.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="the served model: a Triton version directory (<repository>/<name>/<N>/) or any hoh "
        "model with --version",
    )
    monitor.add_argument("--version", help="served version the captures carry (default: from DIR)")
    monitor.add_argument(
        "--served-model", metavar="NAME", help="served model name (default: from DIR, else any)"
    )
    monitor.add_argument(
        "--reference",
        required=True,
        metavar="DIR",
        help="the data the model knows: data root (latest span), span directory or image folder",
    )
    monitor.add_argument(
        "--reference-predictions",
        metavar="FILE",
        help="a reference_predictions.json of an earlier run of the same model version: skips "
        "predicting the reference split again",
    )
    monitor.add_argument(
        "--out", required=True, metavar="DIR", help="new or empty output directory"
    )
    monitor.add_argument(
        "--textfile-dir",
        metavar="DIR",
        help="also write the Prometheus textfile there (node_exporter's "
        "--collector.textfile.directory)",
    )
    monitor.add_argument(
        "--audit",
        action="append",
        default=[],
        metavar="DIR",
        help="the gateway's audit log directory (--audit-dir; repeat for each replica): "
        "request rate, error rate and p50/p95/p99 latency of the window against "
        "monitor.latency_p95_objective_ms; verdict slo_breached when broken",
    )
    monitor.add_argument(
        "--prometheus",
        metavar="URL",
        help="Prometheus scraping the gateway and Triton (monitor.prometheus_url): the "
        "window's service health from their metrics; --audit is then the fallback",
    )
    monitor.add_argument(
        "--labels",
        action="append",
        metavar="EXPORT.json",
        help="a Label Studio JSON export of an earlier labelling batch (repeat for more): its "
        "labelled captures of this window count for online accuracy beside the fed-back labels, "
        "which win where they disagree (default: monitor.label_exports)",
    )
    monitor.add_argument(
        "--k", type=int, help="images in the labelling batch (default: sampling.k)"
    )
    monitor.add_argument(
        "--no-label-batch", action="store_true", help="never write a labelling batch"
    )
    monitor.add_argument(
        "--on-alert",
        choices=("none", "local", "kubeflow"),
        help="when the window drifted or accuracy is low, start retraining: `hoh run` here "
        "(local) or `hoh kfp submit` (kubeflow); at most once per --cooldown-hours "
        "(default: monitor.on_alert)",
    )
    monitor.add_argument("--cooldown-hours", type=float, help="default: monitor.cooldown_hours")
    monitor.add_argument(
        "--trigger-state",
        metavar="FILE",
        help="when and why the trigger fired (default: monitor.trigger_state, beside --out)",
    )
    monitor.add_argument(
        "--trigger-args",
        metavar="'ARGS'",
        help="arguments of the retraining command, one shell-quoted string, e.g. "
        "'--data data --profile real' (default: monitor.trigger_args)",
    )
    monitor.add_argument(
        "--workspace",
        metavar="DIR",
        help="Evidently workspace the run adds its snapshots to (default: monitor.workspace, "
        "beside --out); `hoh dashboard` shows it",
    )
    monitor.add_argument(
        "--no-workspace", action="store_true", help="add nothing to an Evidently workspace"
    )
    monitor.add_argument(
        "--fail-on-drift", action="store_true", help="exit with status 5 when the verdict is drift"
    )
    monitor.set_defaults(handler=_run)
