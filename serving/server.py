"""Runs the `tritonserver` binary bundled in the nvidia-pytriton wheel on a hoh model repository.

The wheel ships a complete Triton 2.51 (server, python backend, a stub per Python version, the
`local` response cache, its shared libraries) but no launcher for a plain model repository, and
it runs only when its environment is assembled by hand:
- a backend directory whose `python/` holds the backend library, `triton_python_backend_utils.py`
  and the stub built for *this* interpreter's Python version (made per server in a temp dir, of
  symlinks);
- `LD_LIBRARY_PATH` = this interpreter's LIBDIR first (else a pyenv stub picks up the system
  libpython and dies), then `nvidia_pytriton.libs`;
- this environment's `bin` first on `PATH`, so the stub embeds this venv's Python (and finds
  TensorFlow and numpy 1.x there).

Model control mode is `poll` by default: the server rescans the repository every
`repository_poll_secs`, so a version published by the TritonPusher goes live without a restart
(and the version policy retires the old one). `explicit` (all models loaded at start, nothing
after) is available for fixed deployments.

The server runs in its own session so that Ctrl-C reaches only us and we shut it down in order
(SIGTERM, wait for in-flight requests, SIGKILL to its process group only after a timeout); on
Linux it also receives SIGTERM if this process dies, so no server outlives its launcher.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Optional, Sequence

from hoh.errors import HohError

CONTROL_MODES = ("poll", "explicit")
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
_STUB = "triton_python_backend_stub"
_BACKEND_LIB = "libtriton_python.so"
_BACKEND_UTILS = "triton_python_backend_utils.py"


class ServerError(HohError):
    """The Triton server could not be found, started, or did not become ready."""


# --------------------------------------------------------------------------- installation


@dataclass(frozen=True)
class TritonInstallation:
    """Paths inside the nvidia-pytriton wheel, plus this interpreter's library directory."""

    binary: Path
    python_backend: Path
    stub: Path
    caches: Path
    libs: Path
    python_libdir: Path
    python_bin: Path


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_installation(python_version: Optional[str] = None) -> TritonInstallation:
    """Locate the bundled server; HohError naming what is missing and how to get it."""
    python_version = python_version or _python_version()
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it
    if spec is None or not spec.origin:
        raise ServerError(
            "nvidia-pytriton is not installed in this environment; it carries the tritonserver "
            "binary hoh runs (`make setup`, or pip install nvidia-pytriton==0.7.0)"
        )
    package = Path(spec.origin).parent
    dist = package / "tritonserver"
    install = TritonInstallation(
        binary=dist / "bin" / "tritonserver",
        python_backend=dist / "backends" / "python",
        stub=dist / "python_backend_stubs" / python_version / _STUB,
        caches=dist / "caches",
        libs=package.parent / "nvidia_pytriton.libs",
        python_libdir=Path(sysconfig.get_config_var("LIBDIR") or sys.base_prefix + "/lib"),
        python_bin=Path(sys.executable).parent,
    )
    if not install.stub.is_file():
        available = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise ServerError(
            f"nvidia-pytriton has no python backend stub for Python {python_version} "
            f"(it has: {', '.join(available) or 'none'}); run hoh with one of those versions"
        )
    for what, path in (
        ("tritonserver binary", install.binary),
        ("python backend", install.python_backend / _BACKEND_LIB),
        ("server libraries", install.libs),
    ):
        if not path.exists():
            raise ServerError(f"the nvidia-pytriton wheel is incomplete: no {what} at {path}")
    return install


def prepare_backend_dir(install: TritonInstallation, dest: Path) -> Path:
    """Assemble `dest/python/` = backend library + utils + the stub for this Python."""
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (
        install.python_backend / _BACKEND_LIB,
        install.python_backend / _BACKEND_UTILS,
        install.stub,
    ):
        link = python_dir / src.name
        if not link.exists():
            link.symlink_to(src)
    return dest


def server_environment(install: TritonInstallation, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    libs = [str(install.python_libdir), str(install.libs)]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = os.pathsep.join(p for p in (str(install.python_bin), env.get("PATH", "")) if p)
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


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
) -> list[str]:
    """The tritonserver command line (pure, so it is unit-tested without starting anything)."""
    if model_control_mode not in CONTROL_MODES:
        raise ServerError(
            f"model control mode must be one of {CONTROL_MODES}, got {model_control_mode!r}"
        )
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
    ]
    if model_control_mode == "poll":
        cmd.append(f"--repository-poll-secs={repository_poll_secs}")
    else:
        cmd.append("--load-model=*")
    if model_config_name:
        cmd.append(f"--model-config-name={model_config_name}")
    cmd.extend(extra_args)
    return cmd


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (the server binds it a moment later; good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _load_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved here, not in the child: dlopen between fork and exec can deadlock a threaded parent.
_PRCTL = _load_prctl() if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The server gets SIGTERM when the launching thread dies, so it is never orphaned.

    (PR_SET_PDEATHSIG follows the thread that forked: start servers from a long-lived thread.)
    """
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --------------------------------------------------------------------------- server


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
            preexec_fn=_die_with_parent if _PRCTL is not None else None,
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

    def model_states(self) -> str:
        """'name vV: STATE (reason)' for every model in the repository index, for messages."""
        request = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/index", data=b"{}", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                index = json.loads(resp.read())
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
