"""Where MLflow keeps runs and registered models, from the `tracking:` section of the config.

MLflow is imported inside the functions: `hoh --help` must not pay for it, and a run with
tracking off never loads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

from hoh.config import HohConfig
from hoh.errors import RunFailed

CHAMPION = "champion"
CHALLENGER = "challenger"


class TrackingUnavailable(RunFailed):
    """The tracking store or registry cannot be reached or read; the message says which."""


def tracking_uris(cfg: HohConfig) -> Tuple[str, str, Optional[str]]:
    """(tracking URI, registry URI, artifact location for a new experiment)."""
    t = cfg.tracking
    local = Path(cfg.tracking_dir).resolve()
    uri = with_installed_driver(t.uri or f"sqlite:///{local / 'mlflow.db'}")
    registry = with_installed_driver(t.registry_uri or uri)
    artifacts = t.artifact_location
    if artifacts is None and not uri.startswith(("http://", "https://", "databricks")):
        artifacts = (local / "artifacts").as_uri()
    return uri, registry, artifacts


def with_installed_driver(uri: str) -> str:
    """`postgresql://` names the psycopg 3 driver in SQLAlchemy 2.1, while the lock installs
    psycopg2: name the installed one, so the plain URL everyone writes works."""
    import importlib.util

    if uri.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + uri[len("postgresql://") :]
    return uri


def experiment_name(cfg: HohConfig) -> str:
    return cfg.tracking.experiment or cfg.pipeline_name


def _configure_requests(cfg: HohConfig) -> None:
    """Bound how long an unreachable tracking server can hold up the end of a run: MLflow's
    defaults retry with backoff for minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, cfg.tracking.timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(cfg.tracking.max_retries)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def client(cfg: HohConfig):
    """An MlflowClient on the configured stores (the embedded SQLite store is created here)."""
    uri, registry, artifacts = tracking_uris(cfg)
    if uri.startswith("sqlite:///") and not cfg.tracking.uri:
        Path(cfg.tracking_dir).mkdir(parents=True, exist_ok=True)
    _configure_requests(cfg)
    for store_uri in dict.fromkeys((uri, registry)):
        check_database_reachable(store_uri, cfg.tracking.timeout_s)
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient(tracking_uri=uri, registry_uri=registry)
    except Exception as exc:
        raise TrackingUnavailable(f"MLflow store {redact(uri)} is unusable: {short(exc)}") from None


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_database_reachable(uri: str, timeout_s: float) -> None:
    """Fail in seconds when a database store does not answer: MLflow itself retries creating
    its engine ten times with backoff, about 100 s, before it gives up."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    dialect = parts.scheme.split("+")[0]
    if dialect not in _DEFAULT_PORTS or not parts.hostname:
        return  # sqlite, file stores, http(s) (bounded by MLflow's request settings)
    port = parts.port or _DEFAULT_PORTS[dialect]
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise TrackingUnavailable(
            f"MLflow store {redact(uri)}: cannot connect to {parts.hostname}:{port}: {exc}"
        ) from None


def experiment_id(mlflow_client, cfg: HohConfig, create: bool = True) -> Optional[str]:
    name = experiment_name(cfg)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    if not create:
        return None
    return mlflow_client.create_experiment(name, artifact_location=tracking_uris(cfg)[2])


def redact(uri: str) -> str:
    """A URI fit for a message: any password in it replaced."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def scrub(text: str, *uris: Optional[str]) -> str:
    """`text` without the passwords of `uris` (drivers may quote the URL they failed on)."""
    from urllib.parse import unquote, urlsplit

    for uri in uris:
        password = urlsplit(uri).password if uri else None
        if password:
            text = text.replace(password, "***").replace(unquote(password), "***")
    return text


def short(exc: BaseException) -> str:
    """The first line of an error: SQLAlchemy and requests append pages of context."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]
