"""Where the `tritonserver` bundled in the nvidia-pytriton wheel lives, and what it needs to run.

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
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from hoh.errors import RunFailed

_STUB = "triton_python_backend_stub"
_BACKEND_LIB = "libtriton_python.so"
_BACKEND_UTILS = "triton_python_backend_utils.py"


class ServerError(RunFailed):
    """The Triton server could not be found, started, or did not become ready."""


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
