"""`TritonServer`: one tritonserver process on a hoh model repository, started and stopped in order.

How the bundled server is found and its environment assembled: hoh.serving.installation; its
command line (control mode, restricted admin APIs): hoh.serving.command.

The server runs in its own session so that Ctrl-C reaches only us and we shut it down in order
(SIGTERM, wait for in-flight requests, SIGKILL to its process group only after a timeout); on
Linux it also receives SIGTERM if this process dies, so no server outlives its launcher.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Optional, Sequence

from hoh.serving.command import ADMIN_HEADER, DEFAULT_CACHE_BYTES, server_command
from hoh.serving.installation import (
    ServerError,
    find_installation,
    prepare_backend_dir,
    server_environment,
)
from hoh.serving.process import PRCTL, die_with_parent, free_port


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class TritonServer:
    """One tritonserver process serving `model_repository`.

        with TritonServer("repo", http_port=0, grpc_port=0, metrics_port=0) as server:
            client = TritonImageClient(server.http_url)

    Ports given as 0 are replaced by free ones at `start()`. The context manager starts the
    server and waits until it is ready; leaving it always stops the process.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        model_control_mode: str = "poll",
        repository_poll_secs: int = 5,
        model_config_name: Optional[str] = None,
        cache_size_bytes: int = DEFAULT_CACHE_BYTES,
        exit_timeout_s: int = 5,
        log_file: Optional[str | os.PathLike] = None,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
    ):
        self.model_repository = os.path.abspath(os.fspath(model_repository))
        self.host = host
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.model_control_mode = model_control_mode
        self.repository_poll_secs = repository_poll_secs
        self.model_config_name = model_config_name
        self.cache_size_bytes = cache_size_bytes
        self.exit_timeout_s = exit_timeout_s
        self.log_file = os.fspath(log_file) if log_file is not None else None
        self.log_verbose = log_verbose
        self.extra_args = tuple(extra_args)
        self._process: Optional[subprocess.Popen] = None
        self._workdir: Optional[str] = None
        # Never printed nor exposed: whoever holds it can load Python code into the server.
        self._admin_key = secrets.token_urlsafe(32)
        self._log: Optional[IO[bytes]] = None

    # ---- endpoints
    @property
    def http_url(self) -> str:
        return f"{_connect_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_connect_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_connect_host(self.host)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # ---- lifecycle
    def start(self) -> "TritonServer":
        if self.is_running():
            return self
        if not os.path.isdir(self.model_repository):
            raise ServerError(
                f"model repository {self.model_repository} does not exist; run the pipeline "
                "(its TritonPusher creates it) or create the directory"
            )
        install = find_installation()
        for name in ("http_port", "grpc_port", "metrics_port"):
            if getattr(self, name) == 0:
                setattr(self, name, free_port(_connect_host(self.host)))
        self._workdir = tempfile.mkdtemp(prefix="hoh-triton-")
        backend_dir = prepare_backend_dir(install, Path(self._workdir) / "backends")
        cmd = server_command(
            install,
            backend_dir,
            self.model_repository,
            host=self.host,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            model_control_mode=self.model_control_mode,
            repository_poll_secs=self.repository_poll_secs,
            model_config_name=self.model_config_name,
            cache_size_bytes=self.cache_size_bytes,
            exit_timeout_s=self.exit_timeout_s,
            log_verbose=self.log_verbose,
            extra_args=self.extra_args,
            admin_key=self._admin_key,
        )
        if self.log_file:
            self._log = open(self.log_file, "ab")
        self._process = subprocess.Popen(
            cmd,
            env=server_environment(install, os.environ),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            start_new_session=True,
            preexec_fn=die_with_parent if PRCTL is not None else None,
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until `/v2/health/ready` answers 200 (server up, every model loaded).

        Raises ServerError with the exit code (and log tail) if the process dies, or with the
        state of each model (Triton's reason for UNAVAILABLE) if time runs out.
        """
        if self._process is None:
            raise ServerError("the server was not started")
        url = f"http://{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise ServerError(
                    f"tritonserver exited with code {code} before becoming ready{self._log_hint()}"
                )
            try:
                if _http_get(url, timeout=2.0)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ServerError(
                    f"tritonserver at {self.http_url} not ready after {timeout:.0f}s; "
                    f"models: {self.model_states()}{self._log_hint()}"
                )
            time.sleep(0.25)

    def _admin_post(self, path: str, timeout: float) -> tuple[int, bytes]:
        """POST `{}` to a restricted repository API, with the key only this object knows."""
        request = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/{path}",
            data=b"{}",
            method="POST",
            headers={ADMIN_HEADER: self._admin_key},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _repository_action(self, action: str, model: str, timeout: float) -> None:
        try:
            status, body = self._admin_post(f"models/{model}/{action}", timeout)
        except OSError as exc:
            raise ServerError(
                f"could not {action} model {model!r} on {self.http_url}: {exc}"
            ) from None
        if status != 200:
            text = body.decode("utf-8", "replace").strip()
            raise ServerError(f"could not {action} model {model!r} (HTTP {status}): {text}")

    def load_model(self, model: str, timeout: float = 300.0) -> None:
        """Load (or reload) `model` from the repository; explicit mode only (Triton's rule)."""
        self._repository_action("load", model, timeout)

    def unload_model(self, model: str, timeout: float = 60.0) -> None:
        self._repository_action("unload", model, timeout)

    def model_states(self) -> str:
        """'name vV: STATE (reason)' for every model in the repository index, for messages."""
        try:
            status, body = self._admin_post("index", timeout=5)
            if status != 200:
                return f"unknown (HTTP {status}: {body.decode('utf-8', 'replace').strip()})"
            index = json.loads(body)
        except (OSError, ValueError) as exc:
            return f"unknown ({exc})"
        parts = [
            f"{m.get('name')} v{m.get('version', '?')}: {m.get('state', '?')}"
            + (f" ({m['reason']})" if m.get("reason") else "")
            for m in index
        ]
        return "; ".join(parts) or "none"

    def wait(self) -> int:
        """Block until the server exits by itself; returns its exit code."""
        if self._process is None:
            raise ServerError("the server was not started")
        return self._process.wait()

    def stop(self, timeout: Optional[float] = None) -> Optional[int]:
        """SIGTERM the server (by PID), wait, then SIGKILL its process group; clean up.

        Triton waits up to `exit_timeout_s` for in-flight requests and for clients to close
        their HTTP keep-alive connections, so close clients first for a quick stop.
        """
        process, self._process = self._process, None
        code = None
        if process is not None:
            timeout = self.exit_timeout_s + 10 if timeout is None else timeout
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(process.pid, signal.SIGKILL)  # its own session: server + stubs
                    except ProcessLookupError:
                        pass
                    process.wait()
            code = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return code

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_file or not os.path.exists(self.log_file):
            return ""
        with open(self.log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _log_hint(self) -> str:
        tail = self.log_tail()
        return f"\n--- {self.log_file} (tail) ---\n{tail}" if tail else ""

    def __enter__(self) -> "TritonServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"TritonServer(repository={self.model_repository!r}, http={self.http_url}, "
            f"grpc={self.grpc_url}, pid={self.pid})"
        )
