"""The tritonserver command line hoh starts: ports, control mode, cache and restricted APIs.

Model control mode is `poll` by default: the server rescans the repository every
`repository_poll_secs`, so a version published by the TritonPusher goes live without a restart
(and the version policy retires the old one). `explicit` (all models loaded at start, nothing
after) is available for fixed deployments.

The model-repository, shared-memory, trace and logging APIs are restricted on both HTTP and gRPC
to requests carrying a key that each server generates at start and never prints: Triton's load
API accepts a `file:` override holding Python source, so anyone who can reach an unrestricted
port can run code as the server's user (in explicit mode) or read the repository index. Only the
`TritonServer` object that started the server uses them (`model_states`, `load_model`,
`unload_model`). Inference, health, metadata, model config and statistics stay open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from hoh.serving.installation import ServerError, TritonInstallation

CONTROL_MODES = ("poll", "explicit")
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
# Triton 2.51 names for the APIs that change or reveal server state beyond inference.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
ADMIN_HEADER = "hoh-admin-key"  # gRPC clients send it as `triton-grpc-protocol-hoh-admin-key`


def server_command(
    install: TritonInstallation,
    backend_dir: Path,
    model_repository: str,
    *,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    model_control_mode: str = "poll",
    repository_poll_secs: int = 5,
    model_config_name: Optional[str] = None,
    cache_size_bytes: int = DEFAULT_CACHE_BYTES,
    exit_timeout_s: int = 5,
    log_verbose: int = 0,
    extra_args: Sequence[str] = (),
    admin_key: str,
) -> list[str]:
    """The tritonserver command line (pure, so it is unit-tested without starting anything)."""
    if model_control_mode not in CONTROL_MODES:
        raise ServerError(
            f"model control mode must be one of {CONTROL_MODES}, got {model_control_mode!r}"
        )
    if not admin_key or not admin_key.replace("-", "").replace("_", "").isalnum():
        raise ServerError("the admin key must be a non-empty [A-Za-z0-9_-] string")
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={admin_key}"
    cmd = [
        str(install.binary),
        f"--model-repository={model_repository}",
        f"--backend-directory={backend_dir}",
        f"--cache-directory={install.caches}",
        f"--cache-config=local,size={cache_size_bytes}",
        f"--model-control-mode={model_control_mode}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=true",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        "--allow-gpu-metrics=false",
        # One broken model must not take the others (or the server) down.
        "--exit-on-error=false",
        f"--exit-timeout-secs={exit_timeout_s}",
        f"--log-verbose={log_verbose}",
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
    ]
    if model_control_mode == "poll":
        cmd.append(f"--repository-poll-secs={repository_poll_secs}")
    else:
        cmd.append("--load-model=*")
    if model_config_name:
        cmd.append(f"--model-config-name={model_config_name}")
    cmd.extend(extra_args)
    return cmd
