"""`hoh serve` and `hoh predict`.

Nothing heavy is imported here: the handlers import the server/client modules when they run, so
`hoh --help` stays instant (see hoh/cli.py).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from hoh.serving.files import IMAGE_SUFFIXES, expand_images


class _Terminated(Exception):
    """SIGTERM, turned into an exception so the same clean shutdown path as Ctrl-C runs."""


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve a model repository with the bundled Triton server",
        description="Start Triton (python backend) on a model repository written by the "
        "TritonPusher. In poll mode (default) new versions pushed while it runs go live without "
        "a restart.",
    )
    serve.add_argument(
        "--model-repository", metavar="DIR", help="the repository to serve (required to serve)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument(
        "--model-config-name",
        default=None,
        metavar="NAME",
        help="use MODEL/configs/NAME.pbtxt instead of config.pbtxt (e.g. gpu)",
    )
    serve.add_argument(
        "--model-control-mode",
        choices=("poll", "explicit"),
        default="poll",
        help="poll: pick up pushed versions while running (default); explicit: load once",
    )
    serve.add_argument("--repository-poll-secs", type=int, default=5, metavar="N")
    serve.add_argument(
        "--cache-size",
        type=int,
        default=256 * 1024 * 1024,
        metavar="BYTES",
        help="response cache size, used by models whose config enables the "
        "cache (hoh pushes it off by default; default 256 MiB)",
    )
    serve.add_argument("--ready-timeout", type=float, default=300.0, metavar="SECONDS")
    serve.add_argument("--log-verbose", type=int, default=0, metavar="LEVEL")
    serve.set_defaults(handler=_serve)
    tools = serve.add_subparsers(dest="serve_command", metavar="COMMAND")
    perf = tools.add_parser(
        "perf-data",
        help="real images -> perf_analyzer --input-data JSON, and the command to run it",
        description="Write perf_analyzer's --input-data JSON from real images, link the "
        "libraries the bundled perf_analyzer lacks, and print the command line "
        "(docs/SERVING.md, 'perf_analyzer').",
    )
    from hoh.serving import perf_data_cli

    perf_data_cli.add_arguments(perf)
    perf.set_defaults(handler=perf_data_cli.run)

    predict = subparsers.add_parser(
        "predict",
        help="classify images with a served model",
        description="Send images (files, or directories searched for "
        f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)}) to a Triton server.",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    predict.add_argument(
        "--url", default=None, help="host:port (default 127.0.0.1:8000 for http, :8001 for grpc)"
    )
    predict.add_argument("--protocol", choices=("http", "grpc"), default="http")
    predict.add_argument("--model-name", default="hoh")
    predict.add_argument(
        "--model-version",
        default="",
        metavar="N",
        help="ask this version (e.g. the one with the old classes while a newer one is served "
        "beside it); default: the latest ready version. Each answer is labelled with the "
        "classes of the version that gave it (`version` in --json)",
    )
    predict.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument(
        "--gateway",
        metavar="URL",
        help="send through `hoh gateway` at https://HOST:PORT instead of to "
        "Triton; the bearer token comes from HOH_TOKEN or --token-file",
    )
    predict.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the gateway token (never pass a token as a flag)",
    )
    predict.add_argument(
        "--ca-cert", metavar="PEM", help="CA certificate that signed the gateway's (a private CA)"
    )
    predict.set_defaults(handler=_predict)


def _raise_terminated(signum, frame):
    raise _Terminated()


def _serve(args: argparse.Namespace) -> int:
    from hoh.errors import UsageError
    from hoh.serving.server import TritonServer

    if not args.model_repository:
        raise UsageError("hoh serve: --model-repository DIR is required")

    server = TritonServer(
        args.model_repository,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs,
        model_config_name=args.model_config_name,
        cache_size_bytes=args.cache_size,
        log_verbose=args.log_verbose,
    )
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        server.start()
        server.wait_ready(args.ready_timeout)
        print(
            f"hoh: Triton ready (pid {server.pid}, {args.model_control_mode} mode)\n"
            f"  HTTP    http://{server.http_url}\n"
            f"  gRPC    {server.grpc_url}\n"
            f"  metrics {server.metrics_url}\n"
            f"  models  {server.model_states()}\n"
            "  admin   repository, shared-memory, trace and logging APIs: refused without the "
            "key this process holds\n"
            "Ctrl-C to stop.",
            flush=True,
        )
        code = server.wait()
        print(f"hoh: tritonserver exited with code {code}", file=sys.stderr)
        return 1 if code else 0
    except (KeyboardInterrupt, _Terminated):
        print("hoh: stopping Triton ...", file=sys.stderr, flush=True)
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


def _open_client(args: argparse.Namespace):
    from hoh.errors import UsageError

    if args.model_version and not args.model_version.isdigit():
        raise UsageError(f"--model-version {args.model_version!r}: expected a version number")

    if not args.gateway:
        from hoh.serving.client import TritonImageClient

        if args.token_file or args.ca_cert:
            raise UsageError("--token-file and --ca-cert go with --gateway URL")
        return TritonImageClient(
            args.url,
            protocol=args.protocol,
            model_name=args.model_name,
            model_version=args.model_version,
            timeout=args.timeout,
        )
    from hoh.serving.gateway.client import GatewayImageClient, read_token

    if args.url:
        raise UsageError("--url is Triton's address; with --gateway, give only the gateway's")
    token, source = read_token(args.token_file)
    return GatewayImageClient(
        args.gateway,
        token,
        source,
        model_name=args.model_name,
        model_version=args.model_version,
        timeout=args.timeout,
        ca_cert=args.ca_cert,
    )


def _predict(args: argparse.Namespace) -> int:
    paths = expand_images(args.images)
    with _open_client(args) as client:
        predictions = client.predict(paths)
    if args.json:
        rows = [
            {
                "image": str(p),
                "version": r.version,
                "label": r.label,
                "probability": r.probability,
                "probabilities": r.probabilities,
            }
            for p, r in zip(paths, predictions)
        ]
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(str(p)) for p in paths)
        for path, result in zip(paths, predictions):
            print(f"{str(path):<{width}}  {result.label}  {result.probability:.4f}")
    return 0
