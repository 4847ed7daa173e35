"""A real bundled tritonserver for the ONNX-flavour tests: free 127.0.0.1 ports, stopped by PID."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def running_server(repository: Path, log_file: Path, **options):
    """Start, wait until every model is ready, yield the server, always stop it."""
    from hoh.serving.server import TritonServer

    ports = {"http_port": 0, "grpc_port": 0, "metrics_port": 0}
    server = TritonServer(repository, log_file=log_file, **ports, **options)
    try:
        server.start()
        server.wait_ready(timeout=240)
        yield server
    finally:
        server.stop()
