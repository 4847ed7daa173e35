"""The Dockerfile, checked without a Docker engine (none here): it installs the runtime lock with
hash checking on a base image pulled by digest, then the package non-editable, copies every
folder setup.py installs, and leaves a small non-root runtime whose `python` is the venv the
compiled pipeline's commands call."""

from __future__ import annotations

import fnmatch
import os
import re
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def setup_kwargs() -> dict:
    """What setup.py passes to setup(), computed by setup.py itself (run with setup() captured)."""
    import setuptools

    captured: dict = {}
    real_setup, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    os.chdir(REPO)
    try:
        runpy.run_path(str(REPO / "setup.py"))
    finally:
        setuptools.setup = real_setup
        os.chdir(cwd)
    return captured


def setup_folders() -> dict[str, str]:
    """`hoh.x` package -> the repository folder it comes from."""
    return dict(setup_kwargs()["package_dir"])


def folder_of(dotted: str) -> str:
    """Repository folder a dotted module or package comes from (longest package_dir match)."""
    folders = setup_folders()
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in folders:
            return folders[".".join(parts[:n])]
    raise AssertionError(f"{dotted} is not under any package setup.py installs")


def _instructions() -> list[tuple[str, str, int]]:
    """(INSTRUCTION, arguments, stage index) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    result, stage = [], -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stage += 1
        result.append((instruction.upper(), " ".join(rest.split()), stage))
    return result


def _stage(index: int) -> list[tuple[str, str]]:
    return [(i, a) for i, a, s in _instructions() if s == index]


def copied_folders() -> set[str]:
    """Repository folders the build stage copies."""
    folders = set()
    for instruction, args, _ in _instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            folders |= {src.rstrip("/") for src in args.split()[:-1]}
    return folders


def test_installs_the_lock_then_the_package_non_editable():
    runs = [a for i, a in _stage(0) if i == "RUN"]
    copies = [a for i, a in _stage(0) if i == "COPY"]
    sync = next(i for i, r in enumerate(runs) if "uv pip sync" in r)
    assert "requirements.lock" in runs[sync] and "--require-hashes" in runs[sync]
    assert not any("requirements-dev" in a for _, a, _ in _instructions())  # no test/lint tools
    assert any(c.split()[0] == "requirements.lock" for c in copies)
    install = next(r for r in runs if "uv pip install" in r and " ." in r)
    assert "--no-deps" in install and " -e " not in install and "--editable" not in install
    assert runs.index(install) > sync
    # The only thing installed from outside the lock is uv itself, checked against its own lock.
    others = [r for r in runs if "pip install" in r and "uv pip" not in r]
    assert others and all(
        "--require-hashes -" in r and "requirements-image.lock" in r for r in others
    )


def test_every_base_image_is_pulled_by_digest():
    """A tag is moved to a new build every few weeks; the digest names the bytes."""
    text = (REPO / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax=", text, re.M | re.I)  # no frontend image pulled by tag
    digest = re.search(r"^ARG PYTHON_DIGEST=(\S+)$", text, re.M)
    assert digest, "ARG PYTHON_DIGEST=sha256:... before the first FROM"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest.group(1))
    assert set(digest.group(1)[7:]) != {"0"}  # a real digest, not a placeholder
    images = [a.split()[0] for i, a, _ in _instructions() if i == "FROM"]
    assert images and all(image == "${PYTHON_IMAGE}@${PYTHON_DIGEST}" for image in images)
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert "@" not in default  # the digest is given once, in PYTHON_DIGEST


def test_make_image_builds_with_the_committed_digest_or_a_given_one(tmp_path):
    """`make image` with a stand-in `docker` on PATH that records its arguments."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    calls = tmp_path / "docker-calls"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}

    def make(*args):
        return subprocess.run(
            ["make", "-s", "image", "IMAGE=hoh:test", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )

    committed = re.search(
        r"^ARG PYTHON_DIGEST=(\S+)$", (REPO / "Dockerfile").read_text(), re.M
    ).group(1)
    given = "sha256:" + "ab" * 32
    for args, digest in (((), committed), ((f"PYTHON_DIGEST={given}",), given)):
        calls.unlink(missing_ok=True)
        built = make(*args)
        assert built.returncode == 0, built.stderr
        assert calls.read_text().split() == [
            "build",
            "--build-arg",
            f"PYTHON_DIGEST={digest}",
            "-t",
            "hoh:test",
            ".",
        ]


def test_copies_every_folder_setup_py_installs():
    folders = set(setup_folders().values())
    assert folders <= copied_folders()
    # pyproject.toml holds the metadata and reads README.md; setup.py maps the folders.
    assert {"pyproject.toml", "setup.py", "README.md"} <= copied_folders()
    for package in setup_kwargs()["packages"]:
        assert folder_of(package) in copied_folders(), package


def test_runtime_stage_is_slim_non_root_and_has_no_build_tools():
    instructions = _instructions()
    stages = {s for *_, s in instructions if s >= 0}  # -1: ARGs before the first FROM
    assert len(stages) == 2, "a build stage and a runtime stage"
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"ARG PYTHON_IMAGE=python:3\.11-slim", text)
    runtime = _stage(1)
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE}@${PYTHON_DIGEST}")
    runtime_runs = " ".join(a for i, a in runtime if i == "RUN")
    assert "apt-get" not in runtime_runs and "pip install" not in runtime_runs
    assert any(i == "COPY" and a.startswith("--from=build /opt/hoh/venv") for i, a in runtime)
    user = [a for i, a in runtime if i == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0") and user[-1].split(":")[0].isdigit()


def test_environment_and_entrypoint_match_the_compiled_pipeline():
    from tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner import KUBEFLOW_TFX_CMD

    from hoh import env
    from hoh.pipeline.runners import kubeflow

    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    env_lines = " ".join(a for i, a in _stage(1) if i == "ENV")
    for key, value in env._DEFAULTS.items():
        assert f"{key}={value}" in env_lines, key
    assert f"PATH={kubeflow.IMAGE_VENV}/bin:$PATH" in env_lines
    # The schema path baked into the compiled pipeline is where this Dockerfile installs hoh.
    assert (
        f"uv venv --python /usr/local/bin/python{kubeflow.IMAGE_PYTHON} {kubeflow.IMAGE_VENV}"
        in text
    )
    entrypoint = next(a for i, a in _stage(1) if i == "ENTRYPOINT")
    assert entrypoint == '["' + '", "'.join(KUBEFLOW_TFX_CMD) + '"]'


@pytest.mark.parametrize(
    "needed",
    [
        "setup.py",
        "pyproject.toml",
        "README.md",
        "requirements.lock",
        "requirements-image.lock",
        "hoh/cli.py",
        "pipeline/runners/kubeflow.py",
        "components/latest_pushed_model/component.py",
        "schemas/schema.pbtxt",
        "serving/triton_model.py",
    ],
)
def test_dockerignore_keeps_what_the_build_needs(needed):
    patterns = [
        p.strip()
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = Path(needed).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not any(fnmatch.fnmatch(prefix, pattern.rstrip("/")) for prefix in prefixes), (
            needed,
            pattern,
        )


def test_make_image_builds_the_dockerfile():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^image:", makefile, re.M)
    assert "docker build --build-arg PYTHON_DIGEST=$(PYTHON_DIGEST) -t $(IMAGE) ." in makefile
