"""`hoh kfp compile | submit | schedule | runs`. Heavy imports (TFX, kfp) happen in handlers."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="YAML config (the kubeflow: section says where pods find things)"
    )
    parser.add_argument("--profile", help="built-in config: demo, tiny, real")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set data.classes=horses,humans (repeatable)",
    )


def _add_compile_args(parser: argparse.ArgumentParser, output_required: bool) -> None:
    _add_config_args(parser)
    parser.add_argument(
        "--image", help="container image built from the Dockerfile (kubeflow.image)"
    )
    parser.add_argument(
        "--pipeline-root", help="gs://... or a mounted path for the pods' artifacts"
    )
    parser.add_argument("--data", help="span directory as the pods see it (kubeflow.data_root)")
    if output_required:
        parser.add_argument(
            "--output", default="pipeline.yaml", help="where to write the pipeline spec"
        )
    else:
        parser.add_argument(
            "--package", help="a pipeline.yaml from `hoh kfp compile` (default: compile one now)"
        )


def _add_submit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", required=True, help="Kubeflow Pipelines API, e.g. http://localhost:8080"
    )
    parser.add_argument("--experiment", default="hoh", help="experiment name (created if missing)")
    parser.add_argument("--name", dest="run_name", help="run / recurring run display name")
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="pipeline parameter (data_root, range_config, trainer_config, eval_config) or a "
        "shortcut: span, epochs, batch_size, learning_rate, min_auc, min_accuracy, max_regression",
    )
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="force Kubeflow caching on/off for this run's tasks (default: as compiled); "
        "TrackRun, which logs the run, is never cached",
    )
    parser.add_argument("--service-account", help="Kubernetes service account of the run's pods")
    _add_auth_args(parser)


def _add_auth_args(parser: argparse.ArgumentParser) -> None:
    from hoh.pipeline.kfp.client import COOKIE_ENV, TOKEN_ENV

    auth = parser.add_argument_group(
        "authentication (passed to the kfp SDK)",
        f"Keep secrets off the command line, where `ps` and the shell history show them: "
        f"${TOKEN_ENV} or --token-file for a bearer token, ${COOKIE_ENV} or --cookie-file for "
        "a session cookie.",
    )
    auth.add_argument("--token-file", help="file holding a bearer token, re-read on every request")
    auth.add_argument(
        "--cookie-file", help="file holding a session cookie NAME=VALUE (Dex / oauth2-proxy)"
    )
    auth.add_argument("--token", help=f"bearer token (visible in `ps`: prefer ${TOKEN_ENV})")
    auth.add_argument("--cookie", help=f"session cookie (visible in `ps`: prefer ${COOKIE_ENV})")
    auth.add_argument("--namespace", help="profile namespace of a multi-user deployment")
    auth.add_argument("--ssl-ca-cert", help="CA bundle of the server's TLS certificate")


def _load(args: argparse.Namespace, extra_overrides: tuple[str, ...] = ()):
    from hoh.config import builtin_config_path, load_config
    from hoh.errors import HohError

    if args.config and args.profile:
        raise HohError("give either --config or --profile, not both")
    path = builtin_config_path(args.profile) if args.profile else args.config
    return load_config(path, [*args.overrides, *extra_overrides])


def _target(args: argparse.Namespace, cfg):
    from hoh.pipeline.runners import kubeflow

    return kubeflow.resolve_target(
        cfg, image=args.image, pipeline_root=args.pipeline_root, data_root=args.data
    )


def _compile_to(args: argparse.Namespace, output: str) -> dict:
    """Load the config, build and compile; prints what was compiled."""
    cfg = _load(args)
    from hoh.pipeline.kfp import params as kfp_params
    from hoh.pipeline.runners import kubeflow

    target = _target(args, cfg)  # checked before TFX is imported (20-45 s)
    print("loading TFX ...", flush=True)
    pipeline = kubeflow.build_pipeline(cfg, target)
    spec = kubeflow.compile_pipeline(pipeline, target.image, output)
    defaults = kubeflow.runtime_parameter_defaults(pipeline)
    print(
        f"compiled {cfg.pipeline_name}: {len(spec['root']['dag']['tasks'])} tasks, "
        f"image {target.image}"
    )
    print(f"pipeline root {target.pipeline_root}; parameters and defaults:")
    for line in kfp_params.describe_parameters(defaults):
        print(line)
    reason = kubeflow.untracked_reason(cfg)
    print(
        f"MLflow: runs are NOT tracked ({reason}); the TrackRun node still leaves the UI reports"
        if reason
        else f"MLflow: the TrackRun node logs each run to {_redacted(cfg.tracking.uri)}"
    )
    print(f"wrote {output}")
    return spec


def _redacted(uri: str) -> str:
    from hoh.pipeline.tracking.store import redact

    return redact(uri)


def _compile(args: argparse.Namespace) -> int:
    _compile_to(args, args.output)
    return 0


def _defaults_for(args: argparse.Namespace):
    """`overrides -> parameter defaults` of the pipeline built from the submit's own config.

    Image and pipeline root shape no parameter, and the data root only its own (never changed
    by a shortcut), so stand-ins do when a package is submitted without them.
    """

    def build(overrides: list[str]) -> dict:
        from hoh.pipeline.runners import kubeflow

        cfg = _load(args, tuple(overrides))
        target = kubeflow.resolve_target(
            cfg,
            image=args.image or cfg.kubeflow.image or "unused",
            pipeline_root=args.pipeline_root or cfg.kubeflow.pipeline_root or "gs://unused",
            data_root=args.data or cfg.kubeflow.data_root or "gs://unused",
        )
        print("loading TFX to apply the --param shortcuts ...", flush=True)
        return kubeflow.runtime_parameter_defaults(kubeflow.build_pipeline(cfg, target))

    return build


def _request(args: argparse.Namespace, package: str, auth):
    from hoh.pipeline.kfp import client as kfp_client
    from hoh.pipeline.kfp import params as kfp_params

    compiled = kfp_params.read_package(package)
    given = kfp_client.parse_params(args.params)
    params = kfp_params.parameter_values(given, compiled.parameters, _defaults_for(args))
    cfg = _load(args)
    return kfp_client.Request(
        host=args.host,
        package=package,
        pipeline_name=compiled.name,
        experiment=args.experiment,
        params=params,
        pipeline_root=args.pipeline_root or cfg.kubeflow.pipeline_root,
        run_name=args.run_name,
        enable_caching=args.cache,
        service_account=args.service_account,
        auth=auth,
    )


def _auth(args: argparse.Namespace):
    """Credentials from the environment, a file or (with a warning) a flag; checked, and
    warned about when they would cross the network in clear text."""
    import sys

    from hoh.pipeline.kfp import client as kfp_client

    auth, warnings = kfp_client.read_auth(
        token=args.token,
        token_file=args.token_file,
        cookie=args.cookie,
        cookie_file=args.cookie_file,
        namespace=args.namespace,
        ssl_ca_cert=args.ssl_ca_cert,
    )
    kfp_client.client_kwargs(args.host, auth)
    insecure = kfp_client.transport_warning(args.host, auth)
    for warning in [*warnings, *([insecure] if insecure else [])]:
        print(f"hoh: warning: {warning}", file=sys.stderr)
    return auth


def _check_before_compiling(args: argparse.Namespace) -> None:
    """Every mistake in the flags is reported before a minute of compiling, not after."""
    from hoh.pipeline.kfp import client as kfp_client

    kfp_client.parse_params(args.params)
    if getattr(args, "cron", None) is not None:
        kfp_client.validate_cron(args.cron)
        kfp_client.validate_max_concurrency(args.max_concurrency)


def _with_package(args: argparse.Namespace, send, auth=None) -> int:
    _check_before_compiling(args)
    auth = auth or _auth(args)
    if args.package:
        if not Path(args.package).is_file():
            from hoh.errors import HohError

            raise HohError(f"--package {args.package}: no such file")
        submitted = send(_request(args, args.package, auth))
    else:
        with tempfile.TemporaryDirectory(prefix="hoh-kfp-") as tmp:
            package = str(Path(tmp) / "pipeline.yaml")
            _compile_to(args, package)
            submitted = send(_request(args, package, auth))
    for line in submitted.lines():
        print(line)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from hoh.pipeline.kfp import client as kfp_client

    if not args.wait:
        return _with_package(args, kfp_client.submit)
    cfg = _load(args)  # the wait settings; a bad config is refused before anything is sent
    auth = _auth(args)
    submitted: list = []

    def submit_and_keep(request):
        submitted.append(kfp_client.submit(request))
        return submitted[-1]

    _with_package(args, submit_and_keep, auth)
    k = cfg.kubeflow
    run = kfp_client.wait_for_run(args.host, auth, submitted[0].id, k.wait_timeout_s, k.wait_poll_s)
    print(run.line())
    if run.state != "SUCCEEDED":
        from hoh.errors import RunFailed

        raise RunFailed(
            f"run {run.id} ended {run.state}"
            + (f": {run.error}" if run.error else "")
            + f" ({submitted[0].url})"
        )
    return 0


def _runs(args: argparse.Namespace) -> int:
    from hoh.pipeline.kfp import client as kfp_client

    if args.limit is not None and args.limit < 1:
        from hoh.errors import UsageError

        raise UsageError(f"--limit {args.limit}: give a number of runs, at least 1")
    cfg = _load(args)
    limit = args.limit or cfg.kubeflow.runs_limit
    runs = kfp_client.list_runs(args.host, _auth(args), args.experiment, limit)
    if not runs:
        print("no runs" + (f" in experiment {args.experiment}" if args.experiment else ""))
    for run in runs:
        print(run.line())
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from hoh.pipeline.kfp import client as kfp_client

    return _with_package(
        args,
        lambda request: kfp_client.schedule(request, args.cron, args.max_concurrency, args.catchup),
    )


def register(subparsers) -> None:
    kfp = subparsers.add_parser(
        "kfp",
        help="Kubeflow Pipelines: compile the DAG, submit a run, schedule retraining",
        description="See docs/KUBEFLOW.md.",
    )
    sub = kfp.add_subparsers(dest="kfp_command", metavar="SUBCOMMAND")
    sub.required = True

    compile_ = sub.add_parser("compile", help="compile the pipeline to KFP v2 pipeline YAML")
    _add_compile_args(compile_, output_required=True)
    compile_.set_defaults(handler=_compile)

    submit = sub.add_parser("submit", help="upload the pipeline as a new version and start a run")
    _add_compile_args(submit, output_required=False)
    _add_submit_args(submit)
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait for the run to end and print how it ended (exit code 0 only if it succeeded; "
        "kubeflow.wait_timeout_s, kubeflow.wait_poll_s)",
    )
    submit.set_defaults(handler=_submit)

    runs = sub.add_parser("runs", help="list the newest Kubeflow runs and how they ended")
    _add_config_args(runs)
    runs.add_argument(
        "--host", required=True, help="Kubeflow Pipelines API, e.g. http://localhost:8080"
    )
    runs.add_argument("--experiment", help="only this experiment's runs (default: all)")
    runs.add_argument(
        "--limit", type=int, help="how many, newest first (default kubeflow.runs_limit)"
    )
    _add_auth_args(runs)
    runs.set_defaults(handler=_runs)

    schedule = sub.add_parser("schedule", help="upload the pipeline and create a recurring run")
    _add_compile_args(schedule, output_required=False)
    _add_submit_args(schedule)
    schedule.add_argument(
        "--cron",
        required=True,
        help=(
            "six fields, seconds first: 'SEC MIN HOUR DAY MONTH WEEKDAY', "
            "e.g. '0 0 3 * * *' (daily 03:00)"
        ),
    )
    schedule.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default 1)")
    schedule.add_argument(
        "--catchup",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=(
            "run missed intervals after a pause "
            "(default --no-catchup: each run takes the newest span anyway)"
        ),
    )
    schedule.set_defaults(handler=_schedule)
