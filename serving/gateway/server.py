"""Running the app on uvicorn: TLS context, bind address, and the warnings an operator must see."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from hoh.config import GatewayConfig
from hoh.errors import UsageError
from hoh.serving.gateway.settings import TLS_PASSWORD_ENV, bind_host, secret

log = logging.getLogger("hoh.gateway")

INSECURE_WARNING = (
    "hoh gateway: WARNING: --insecure-no-auth: every request is accepted without a token and "
    "with every permission; bound to 127.0.0.1 only. Never use this beyond one machine."
)


def configure_logging(level: str = "info") -> None:
    """The gateway's and uvicorn's loggers, set here rather than by uvicorn: its dictConfig
    closes every handler already installed in the process (absl's among them, which then closes
    the stream it was given), so an embedding process or a test loses its stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("hoh.gateway", "uvicorn"):  # uvicorn.error and uvicorn.access propagate here
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def uvicorn_config(settings: GatewayConfig, log_level: str = "info"):
    import uvicorn

    from hoh.serving.gateway.app import create_app
    from hoh.serving.gateway.tls import server_context

    context = None
    if settings.tls_cert:
        context = server_context(
            settings.tls_cert,
            settings.tls_key,
            password=secret(TLS_PASSWORD_ENV, settings.tls_key_password_file),
            client_ca=settings.tls_client_ca,
            min_version=settings.tls_min_version,
        )
    return uvicorn.Config(
        create_app(settings),
        host=bind_host(settings),
        port=settings.port,
        log_level=log_level,
        log_config=None,  # configure_logging: uvicorn's dictConfig would close other handlers
        server_header=False,
        proxy_headers=False,
        lifespan="on",
        ssl_context_factory=(lambda config, default: context) if context else None,
    )


def preflight(settings: GatewayConfig) -> None:
    """What would otherwise fail inside uvicorn's startup (as a traceback) fails here, as one
    line naming the input: the issuer's keys, and the audit directory."""
    from hoh.serving.gateway import audit, auth

    if not settings.insecure_no_auth:
        source = settings.jwks_file or settings.oidc_issuer
        load = (
            auth.jwks_file_loader(settings.jwks_file)
            if settings.jwks_file
            else auth.oidc_loader(settings.oidc_issuer)
        )
        usable = [
            k
            for k, (kty, _) in asyncio.run(load()).items()
            if auth.key_type_allowed(kty, settings.algorithms)
        ]
        if not usable:
            raise UsageError(
                f"{source}: no signing key for {', '.join(settings.algorithms)} "
                "(every token would be refused)"
            )
    if settings.audit_dir:
        os.close(audit.lock_directory(Path(settings.audit_dir)))


def run(settings: GatewayConfig, log_level: str = "info") -> int:
    import uvicorn

    configure_logging(log_level)
    if settings.insecure_no_auth:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
        log.warning("authentication is OFF (--insecure-no-auth); bound to 127.0.0.1")
    if not settings.tls_cert:
        log.warning("no --tls-cert: serving plain HTTP; terminate TLS in front of it or set one")
    config = uvicorn_config(settings, log_level)
    preflight(settings)
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
