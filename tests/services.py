"""Real Redis, NATS JetStream and PostgreSQL for tests, found or started, never faked.

Order, per service: the URL in its environment variable (REDIS_URL, NATS_URL, POSTGRES_URL);
else the default loopback port when something answers there; else the server binary from PATH
started on a free 127.0.0.1 port (stopped by PID at the end of the session, also on failure);
else the test is skipped with the reason. With `CI` set, that skip is a failure instead: CI must
exercise the real thing, while a laptop without the services still gets a green `make test`.

Servers on the default ports are shared with other users of the machine: tests use their own
key prefix / stream name / database (see `unique_name`) and remove what they created.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest


def unavailable(reason: str) -> None:
    """Skip, or fail when CI is set (a skipped service test must not pass CI silently)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: service tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def unique_name(prefix: str) -> str:
    """A name no other test run on this shared server uses (key prefix, stream, database)."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Started:
    """A server process this test session started; `stop` ends it by PID."""

    process: subprocess.Popen
    workdir: Path
    log: Path
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_server(argv: list[str], port: int, name: str, timeout: float = 20.0) -> Started:
    """Start `argv` (which binds 127.0.0.1:`port`) and wait until the port answers."""
    workdir = Path(tempfile.mkdtemp(prefix=f"hoh-{name}-"))
    log = workdir / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
        )
    started = Started(process, workdir, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text(errors="replace")[-2000:]
            started.stop()
            raise RuntimeError(f"{name} exited with {process.returncode}: {text}")
        if port_open("127.0.0.1", port):
            return started
        time.sleep(0.1)
    started.stop()
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def find_or_start(
    env_var: str,
    default_port: int,
    binary: str,
    argv: Callable[[int, Path], list[str]],
    url: Callable[[int], str],
):
    """(url, Started or None) for one service, or `unavailable(...)` with the reason.

    `argv(port, workdir)` builds the command that serves on 127.0.0.1:port.
    """
    given = os.environ.get(env_var)
    if given:
        return given, None
    if port_open("127.0.0.1", default_port):
        return url(default_port), None
    exe = shutil.which(binary)
    if exe is None:
        unavailable(f"no {env_var}, nothing on 127.0.0.1:{default_port} and no {binary} on PATH")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix=f"hoh-{binary}-data-"))
    try:
        started = start_server(argv(port, workdir), port, binary)
    except RuntimeError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        unavailable(f"could not start {binary}: {exc}")
    started.cleanups.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    return url(port), started


def redis_argv(port: int, workdir: Optional[Path] = None) -> list[str]:
    """A throw-away Redis on loopback: no snapshots, no append-only file."""
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    argv += ["--appendonly", "no"]
    return argv + (["--dir", str(workdir)] if workdir is not None else [])


def _nats_argv(port: int, workdir: Path) -> list[str]:
    return ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(workdir)]


SERVICES = {
    "redis": ("REDIS_URL", 6379, "redis-server", redis_argv, lambda p: f"redis://127.0.0.1:{p}/0"),
    "nats": ("NATS_URL", 4222, "nats-server", _nats_argv, lambda p: f"nats://127.0.0.1:{p}"),
}


def service(name: str):
    """(url, Started or None) of `name` in SERVICES."""
    return find_or_start(*SERVICES[name])


TOOLS = Path(__file__).resolve().parents[1] / ".tools"


def tool(name: str, make_target: str) -> str:
    """Path of the executable `name`: from PATH, else from .tools/*/bin/ (where `make
    <make_target>` unpacks it), else `unavailable(...)`."""
    found = shutil.which(name) or next(
        (str(p) for p in sorted(TOOLS.glob(f"*/bin/{name}")) if os.access(p, os.X_OK)), None
    )
    if found is None:
        unavailable(f"{name} is not on PATH nor in {TOOLS}/*/bin (make {make_target})")
    return found


def postgres_url() -> str:
    """A PostgreSQL URL: POSTGRES_URL, else the local server on 5432 (trust auth), else skip.

    No server is started here: initdb + postgres takes seconds and a PATH PostgreSQL usually is
    the machine's own service anyway.
    """
    given = os.environ.get("POSTGRES_URL")
    if given:
        return given
    if port_open("127.0.0.1", 5432):
        return f"postgresql://{os.environ.get('PGUSER', 'postgres')}@127.0.0.1:5432/postgres"
    unavailable("no POSTGRES_URL and nothing on 127.0.0.1:5432")
    return ""  # unreachable


def stop(started: Optional[Started]) -> None:
    if started is not None:
        started.stop()
        for cleanup in started.cleanups:
            cleanup()
