"""Packaging and the locks: one version, a runtime lock without test or notebook tools, a dev
lock that agrees with it, hashes everywhere, and the make targets that use them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

import pytest
from test_kubeflow_image import REPO, setup_kwargs

import hoh

LOCKS = ("requirements.lock", "requirements-dev.lock", "requirements-image.lock")
DEV_ONLY = (
    "pytest",
    "pytest-timeout",
    "jupyterlab",
    "notebook",
    "nbclient",
    "nbstripout",
    # (matplotlib is not here: mlflow, a runtime dependency, requires it)
    "ruff",
    "atheris",
    "cyclonedx-bom",
    "pip-audit",
)


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def read_lock(name: str) -> dict[str, tuple[str, frozenset[str]]]:
    """package -> (version, hashes) of a `uv pip compile --generate-hashes` output."""
    text = re.sub(r"\\\n", " ", (REPO / name).read_text())
    locked = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pin, *options = line.split(" --hash=")
        package, version = pin.strip().split("==")
        locked[_name(package)] = (version, frozenset(h.strip() for h in options))
    return locked


def read_in(name: str) -> list[str]:
    lines = [line.strip() for line in (REPO / name).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_package_has_a_pinned_version_and_hashes(lock):
    locked = read_lock(lock)
    assert locked
    for package, (version, hashes) in locked.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), package
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), package


def test_the_runtime_lock_has_what_requirements_in_asks_and_no_dev_tools():
    runtime = read_lock("requirements.lock")
    assert {_name(r) for r in read_in("requirements.in")} <= set(runtime)
    assert not set(DEV_ONLY) & set(runtime)
    assert "widgetsnbextension" not in runtime  # requirements-excludes.txt: no JupyterLab
    assert "ipykernel" in runtime  # imported by TFMA through ipywidgets


def test_the_dev_lock_agrees_with_the_runtime_lock():
    """Both are installed together (`make`): a package in both must be the same file."""
    assert read_in("requirements-dev.in")[0] == "-c requirements.lock"
    runtime, dev = read_lock("requirements.lock"), read_lock("requirements-dev.lock")
    assert set(DEV_ONLY) <= set(dev)
    shared = set(runtime) & set(dev)
    assert shared  # the dev tools do share dependencies with the stack
    assert {p: runtime[p] for p in shared} == {p: dev[p] for p in shared}


def test_one_version_and_setup_py_keeps_only_the_folder_mapping():
    from setuptools.config.expand import read_attr

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" in config["project"]["dynamic"]
    attr = config["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    # How setuptools reads it when building (statically, without importing hoh).
    assert read_attr(attr, setup_kwargs()["package_dir"], REPO) == hoh.__version__
    assert config["project"]["scripts"] == {"hoh": "hoh.cli:main"}
    assert set(setup_kwargs()) == {"package_dir", "packages"}
    declared = {_name(d) for d in config["project"]["dependencies"]}
    assert declared <= {_name(r) for r in read_in("requirements.in")}


def test_ruff_and_pytest_are_configured_in_pyproject():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]
    assert tool["ruff"]["line-length"] == 100
    # Pinned rule set: a newer ruff's wider defaults must not turn CI red on its own.
    assert set(tool["ruff"]["lint"]["select"]) >= {"E", "F", "W", "I"}
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^test: .*\blint\b", makefile, re.M)  # make test (= CI) lints first
    assert tool["pytest"]["ini_options"]["testpaths"] == ["tests"]
    assert any(m.startswith("e2e:") for m in tool["pytest"]["ini_options"]["markers"])
    assert not (REPO / "pytest.ini").exists()  # it would win over pyproject.toml


def _recipe(target: str) -> str:
    """The recipe lines of one Makefile rule, joined (continuations included)."""
    text = re.sub(r"\\\n", " ", (REPO / "Makefile").read_text())
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)*)", text, re.M)
    assert match, target
    return match.group(0)


def test_make_installs_both_locks_with_hash_checking_and_tracks_them():
    stamp = _recipe("$(STAMP)")
    assert re.search(
        r"^LOCKS := requirements\.lock requirements-dev\.lock$",
        (REPO / "Makefile").read_text(),
        re.M,
    )
    for prerequisite in ("$(LOCKS)", "pyproject.toml", "setup.py"):
        assert prerequisite in stamp.splitlines()[0]
    assert "pip sync --python $(PY) --require-hashes $(LOCKS)" in stamp
    assert "--no-deps -e ." in stamp
    lock = _recipe("lock")
    for name in ("requirements.in", "requirements-dev.in", "requirements-image.in"):
        assert f"pip compile {name} $(LOCK_FLAGS)" in lock
    assert "--generate-hashes" in (REPO / "Makefile").read_text()
    assert "ruff" not in _recipe("test") and "ruff check" in _recipe("lint")
    assert "--strict" in _recipe("audit") and "-r requirements.lock" in _recipe("audit")


@pytest.mark.skipif(
    shutil.which("cyclonedx-py") is None and not (REPO / ".venv/bin/cyclonedx-py").exists(),
    reason="cyclonedx-bom is not installed (requirements-dev.lock)",
)
def test_sbom_lists_every_package_of_the_runtime_lock_with_its_hashes(tmp_path):
    """What `make sbom` runs, on the real lock (offline: the lock holds all it needs)."""
    recipe = _recipe("sbom")
    assert "cyclonedx-py requirements requirements.lock" in recipe
    tool = shutil.which("cyclonedx-py") or str(REPO / ".venv/bin/cyclonedx-py")
    out = tmp_path / "sbom.cdx.json"
    subprocess.run(
        [
            tool,
            "requirements",
            "requirements.lock",
            "--pyproject",
            "pyproject.toml",
            "--output-reproducible",
            "-o",
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    sbom = json.loads(out.read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["metadata"]["component"]["name"] == "hoh"
    listed = {c["name"].lower(): c for c in sbom["components"]}
    locked = read_lock("requirements.lock")
    assert set(listed) == set(locked)
    for package, (version, hashes) in locked.items():
        component = listed[package]
        assert component["version"] == version and component["purl"].endswith(f"@{version}")
        sbom_hashes = {
            f"sha256:{h['content']}"
            for ref in component["externalReferences"]
            for h in ref.get("hashes", [])
        }
        assert sbom_hashes == hashes, package
