"""`hoh gateway` (with `hoh gateway dev-token`) and `hoh audit verify`.

Flags override the `gateway:` section of `--config` and the HOH_GATEWAY_* environment; secrets
have no flag at all (docs/GATEWAY.md). Nothing heavy is imported until a handler runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from hoh.errors import ExitCode, HohError

# flag dest -> GatewayConfig field
_FIELDS = {
    "triton": "triton_url",
    "host": "host",
    "port": "port",
    "models": "models",
    "tls_cert": "tls_cert",
    "tls_key": "tls_key",
    "tls_client_ca": "tls_client_ca",
    "tls_min_version": "tls_min_version",
    "oidc_issuer": "oidc_issuer",
    "jwks_file": "jwks_file",
    "issuer": "issuer",
    "audience": "audience",
    "cache_url": "cache_url",
    "cache_ttl": "cache_ttl_s",
    "audit_dir": "audit_dir",
    "capture_dir": "capture_dir",
    "capture_rate": "capture_rate",
    "rate_limit": "rate_limit_per_s",
    "insecure_no_auth": "insecure_no_auth",
}


class AuditBroken(HohError):
    exit_code = ExitCode.FAILED


def register(subparsers) -> None:
    gw = subparsers.add_parser(
        "gateway",
        help="the authenticated HTTPS edge in front of Triton",
        description="Serve /v1/models/{model}/predict, /v1/models, /healthz, /readyz, /metrics "
        "and /docs in front of Triton's gRPC port, with TLS, OIDC bearer tokens, a result "
        "cache, an audit log and metrics (docs/GATEWAY.md). Secrets come from the environment "
        "or files: HOH_GATEWAY_TLS_KEY_PASSWORD, HOH_GATEWAY_CACHE_PASSWORD.",
    )
    gw.add_argument("--config", metavar="YAML", help="hoh config file with a gateway: section")
    gw.add_argument("--triton", metavar="HOST:PORT", help="Triton's gRPC address")
    gw.add_argument("--host")
    gw.add_argument("--port", type=int)
    gw.add_argument(
        "--models",
        type=lambda v: [m for m in v.split(",") if m],
        metavar="A,B",
        help="models exposed (default: hoh)",
    )
    gw.add_argument("--tls-cert", metavar="PEM")
    gw.add_argument("--tls-key", metavar="PEM")
    gw.add_argument("--tls-client-ca", metavar="PEM", help="require client certificates (mTLS)")
    gw.add_argument("--tls-min-version", choices=("1.3", "1.2"))
    gw.add_argument("--oidc-issuer", metavar="URL")
    gw.add_argument("--jwks-file", metavar="FILE")
    gw.add_argument("--issuer", help="expected iss (default: the OIDC issuer)")
    gw.add_argument("--audience", help="expected aud")
    gw.add_argument("--cache-url", metavar="redis://HOST:PORT/DB")
    gw.add_argument("--cache-ttl", type=int, metavar="SECONDS")
    gw.add_argument("--audit-dir", metavar="DIR")
    gw.add_argument("--capture-dir", metavar="DIR")
    gw.add_argument("--capture-rate", type=float, metavar="0..1")
    gw.add_argument("--rate-limit", type=float, metavar="PER_SECOND")
    gw.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="no authentication; binds 127.0.0.1 only",
    )
    gw.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    gw.set_defaults(handler=_gateway)
    sub = gw.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND")
    dev = sub.add_parser(
        "dev-token",
        help="print a token signed with a local development key",
        description="Create (once) a local ES256 key and its JWKS, and print a "
        "token signed with it. Start the gateway with --jwks-file "
        "KEY_DIR/jwks.json --issuer hoh-dev.",
    )
    dev.add_argument("--scopes", default="predict", help="space- or comma-separated scopes")
    dev.add_argument("--subject", default="dev")
    dev.add_argument("--audience", dest="dev_audience", default="hoh-gateway")
    dev.add_argument("--ttl", type=int, default=3600, metavar="SECONDS")
    dev.add_argument("--key-dir", default=None, help="default ~/.config/hoh/gateway-dev")
    dev.set_defaults(handler=_dev_token)

    audit = subparsers.add_parser("audit", help="check the gateway's audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    audit_sub.required = True
    verify = audit_sub.add_parser(
        "verify",
        help="check the hash chain of an audit directory",
        description="Exit 0 when every line of every file chains to the previous one; else "
        "exit 1 naming the first broken, edited, reordered or truncated line.",
    )
    verify.add_argument("directory", metavar="DIR")
    verify.set_defaults(handler=_audit_verify)


def _gateway(args: argparse.Namespace) -> int:
    from hoh.serving.gateway.server import run
    from hoh.serving.gateway.settings import load_settings

    flags = {field: getattr(args, dest) for dest, field in _FIELDS.items()}
    settings = load_settings(args.config, flags)
    return run(settings, args.log_level)


def _dev_token(args: argparse.Namespace) -> int:
    from hoh.serving.gateway.devtoken import default_key_dir, dev_token

    key_dir = args.key_dir or default_key_dir()
    scopes = [s for s in args.scopes.replace(",", " ").split() if s]
    token = dev_token(key_dir, scopes, args.subject, args.dev_audience, args.ttl)
    print(
        f"hoh: JWKS for the gateway: {os.path.join(key_dir, 'jwks.json')} (--issuer hoh-dev)",
        file=sys.stderr,
    )
    print(token)
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from hoh.serving.gateway.audit import verify

    result = verify(args.directory)
    if not result.ok:
        raise AuditBroken(
            f"audit log {args.directory}: {result.problem} "
            f"({result.lines} lines verified before it)"
        )
    print(
        f"hoh: audit log {args.directory}: OK, {result.lines} lines in {result.files} "
        f"file(s), {result.anchors} anchor(s)"
    )
    return 0
