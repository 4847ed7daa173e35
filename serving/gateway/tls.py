"""The server's TLS context: TLS 1.3 minimum by default, optional mutual TLS.

Built here rather than by uvicorn's flags because uvicorn cannot set a minimum version; the
context is handed to uvicorn through its `ssl_context_factory`.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Optional

from hoh.errors import UsageError

_VERSIONS = {"1.3": ssl.TLSVersion.TLSv1_3, "1.2": ssl.TLSVersion.TLSv1_2}


def server_context(
    cert: str,
    key: str,
    password: Optional[str] = None,
    client_ca: Optional[str] = None,
    min_version: str = "1.3",
) -> ssl.SSLContext:
    for what, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path and not Path(path).is_file():
            raise UsageError(f"{what} {path} does not exist")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[min_version]
    try:
        context.load_cert_chain(cert, key, password=password)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise UsageError(
            f"cannot load the TLS certificate {cert} with key {key}: {exc} (wrong password, or "
            "the key does not belong to the certificate?)"
        ) from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"cannot load the client CA bundle {client_ca}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
