"""The production path of the ONNX flavour, checked without Docker or a cluster: the serving
image installs every import of the generated preprocessing model, and the Kubernetes manifests
parse and agree with the names, ports and metrics hoh and Triton use.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hoh.components.triton_pusher import onnx_repository
from hoh.components.triton_pusher.model_config import GPU_CONFIG_FILE
from hoh.config import PushConfig
from hoh.serving.command import RESTRICTED_APIS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "serving" / "Dockerfile.serving"
REQUIREMENTS = ROOT / "serving" / "requirements-serving.txt"
K8S = ROOT / "deploy" / "k8s"
# Distribution name -> the module it installs (where they differ).
MODULE_OF = {"pillow": "PIL"}
# Provided by Triton's python backend itself.
TRITON_PROVIDED = {"triton_python_backend_utils"}


def requirements(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a hashed requirements file."""
    out = {}
    for block in re.split(r"\n(?=[A-Za-z])", re.sub(r"(?m)^#.*\n", "", text)):
        head = re.match(r"([A-Za-z0-9_.-]+)==([^\s\\]+)", block.strip())
        if head:
            hashes = re.findall(r"sha256:([0-9a-f]{64})", block)
            out[head.group(1).lower()] = (head.group(2), hashes)
    return out


def _inside(tree, kind, name_test) -> set[int]:
    return {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, kind) and name_test(f.name)
        for n in ast.walk(f)
    }


def imports(path: Path, entry_point: bool) -> list[tuple[str, bool]]:
    """(top-level module, inside a `_load_*` fallback) for every import a file can run.

    A helper module's own Triton model class (hoh_triton_model.py's TritonPythonModel, which
    imports TensorFlow) is never instantiated by the preprocessing model: not counted there.
    """
    tree = ast.parse(path.read_text())
    fallback_nodes = _inside(tree, ast.FunctionDef, lambda n: n.startswith("_load_"))
    unused = set() if entry_point else _inside(tree, ast.ClassDef, "TritonPythonModel".__eq__)
    out = []
    for node in ast.walk(tree):
        if id(node) in unused:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        out += [(n.split(".")[0], id(node) in fallback_nodes) for n in names]
    return out


def test_serving_image_is_the_pinned_stock_triton():
    text = DOCKERFILE.read_text()
    image = re.search(r"^ARG TRITON_IMAGE=(\S+)$", text, re.M).group(1)
    digest = re.search(r"^ARG TRITON_DIGEST=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", image)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest) and set(digest[7:]) != {"0"}
    assert re.search(r"^FROM \$\{TRITON_IMAGE\}@\$\{TRITON_DIGEST\}$", text, re.M)
    assert "--require-hashes" in text and "requirements-serving.txt" in text
    # The GPU config the pusher writes is the one the image selects.
    assert f"--model-config-name={Path(GPU_CONFIG_FILE).stem}" in text


def test_serving_requirements_are_the_locked_ones():
    locked = requirements((ROOT / "requirements.lock").read_text())
    serving = requirements(REQUIREMENTS.read_text())
    assert set(serving) == {"numpy", "pillow"}
    for name, (version, hashes) in serving.items():
        assert locked[name][0] == version and sorted(locked[name][1]) == sorted(hashes)
    assert int(serving["numpy"][0].split(".")[0]) < 2  # the python-backend stub needs numpy 1


def test_every_import_of_the_preprocessing_model_is_installed(tmp_path, monkeypatch):
    """The files the pusher really writes into a preprocess version, not the source tree."""
    from hoh.components.triton_pusher.filesystem import fs_for

    version = tmp_path / "version"
    onnx_repository.write_sources(
        fs_for(str(version)), str(version), onnx_repository.PREPROCESS_SOURCES
    )
    files = sorted(version.glob("*.py"))
    assert [f.name for f in files] == sorted(onnx_repository.PREPROCESS_SOURCES)
    siblings = {f.stem for f in files}
    installed = {MODULE_OF.get(n, n) for n in requirements(REQUIREMENTS.read_text())}
    missing = []
    for path in files:
        for module, in_fallback in imports(path, path.name == onnx_repository.MODEL_FILE):
            if module in sys.stdlib_module_names or module in siblings | TRITON_PROVIDED:
                continue
            if module == "hoh" and in_fallback:  # runs only when the sibling file is absent
                continue
            if module not in installed:
                missing.append(f"{path.name}: {module}")
    assert not missing, f"imports the serving image does not install: {missing}"


def test_a_written_version_imports_without_hoh(tmp_path):
    """In a version directory the siblings are found, so `hoh` is never imported there."""
    from hoh.components.triton_pusher.filesystem import fs_for

    version = tmp_path / "1"
    onnx_repository.write_sources(
        fs_for(str(version)), str(version), onnx_repository.PREPROCESS_SOURCES
    )
    code = (
        "import importlib.util, sys; sys.modules['hoh'] = None; "
        "spec = importlib.util.spec_from_file_location('model', 'model.py'); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "print(m.common.__file__, m.common.imagecheck.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=version,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out == [str(version / "hoh_triton_model.py"), str(version / "hoh_imagecheck.py")]


def manifests() -> dict[tuple[str, str], dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def test_manifests_parse_and_agree():
    docs = manifests()
    deployment = docs[("Deployment", "hoh-triton")]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}  # tritonserver's defaults
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()

    service = docs[("Service", "hoh-triton")]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == selector
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)

    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    args = " ".join(container["args"])
    for api in RESTRICTED_APIS:  # the same APIs `hoh serve` restricts
        assert api in args
    assert "$(HOH_ADMIN_KEY)" in args and "HOH_ADMIN_KEY" in {e["name"] for e in container["env"]}

    hpa = docs[("HorizontalPodAutoscaler", "hoh-triton")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    rules = yaml.safe_load(docs[("ConfigMap", "hoh-triton-adapter-rules")]["data"]["config.yaml"])
    (rule,) = rules["rules"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    # The adapter reads the ensemble clients call, under the name the pusher gives it.
    model = PushConfig().model_name
    assert f'model="{model}"' in rule["seriesQuery"] and f'model="{model}"' in rule["metricsQuery"]

    service_ = docs[("InferenceService", "hoh")]
    runtime = docs[("ServingRuntime", "hoh-triton")]
    assert service_["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    assert runtime["spec"]["containers"][0]["image"] == container["image"]


def adapter_metric_names() -> set[str]:
    rules = yaml.safe_load(
        manifests()[("ConfigMap", "hoh-triton-adapter-rules")]["data"]["config.yaml"]
    )
    return set(re.findall(r"\b(nv_[a-z_]+)\{", rules["rules"][0]["metricsQuery"]))


@pytest.mark.e2e
def test_adapter_metrics_exist_on_a_served_onnx_flavour(served_metrics):
    """Triton exports the series the HPA rule divides, for the model hoh pushes."""
    model = PushConfig().model_name
    for name in adapter_metric_names():
        assert re.search(rf'^{name}{{[^}}]*model="{model}"', served_metrics, re.M), name


@pytest.fixture(scope="module")
def served_metrics(served_metrics_server):
    import urllib.request

    with urllib.request.urlopen(served_metrics_server.metrics_url, timeout=10) as resp:
        return resp.read().decode()


@pytest.fixture(scope="module")
def served_metrics_server(tmp_path_factory):
    from onnx_support import running_server
    from tiny_model import build_tiny_model, make_image

    from hoh.components.triton_pusher.flavors import push_model
    from hoh.components.triton_pusher.repository import TritonPushSettings
    from hoh.serving.client import TritonImageClient

    root = tmp_path_factory.mktemp("deploy")
    build_tiny_model(root / "model")
    push_model(
        str(root / "model"),
        str(root / "repo"),
        TritonPushSettings(flavor="onnx", max_batch_size=4, preferred_batch_sizes=(4,)),
    )
    with running_server(
        root / "repo", root / "triton.log", model_control_mode="explicit"
    ) as server:
        with TritonImageClient(server.http_url) as client:
            client.predict([make_image(1)])
        yield server


def test_perf_data_is_perf_analyzers_serialized_bytes():
    import base64
    import struct

    from hoh.errors import UsageError
    from hoh.serving.perf_data import perf_input_data

    data = perf_input_data([b"\x89PNGabc", b"xy"])["data"]
    assert [d["image_bytes"]["shape"] for d in data] == [[1], [1]]
    raw = base64.b64decode(data[0]["image_bytes"]["b64"])
    assert struct.unpack("<I", raw[:4]) == (7,) and raw[4:] == b"\x89PNGabc"
    with pytest.raises(UsageError, match="no images"):
        perf_input_data([])


@pytest.mark.e2e
def test_perf_analyzer_runs_against_the_onnx_flavour(served_metrics_server, tmp_path):
    """The bundled perf_analyzer, with the libraries linked and hoh's input data."""
    from tiny_model import make_image

    server = served_metrics_server
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.png").write_bytes(make_image(i))
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("hoh")),
            "serve",
            "perf-data",
            str(images),
            "--out",
            str(tmp_path / "perf.json"),
            "--lib-dir",
            str(tmp_path / "libs"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    command = out.splitlines()[-1].split()
    env_assignment, binary = command[0], command[1]
    env = {**__import__("os").environ, "LD_LIBRARY_PATH": env_assignment.split("=", 1)[1]}
    result = subprocess.run(
        [
            binary,
            "-m",
            "hoh",
            "-u",
            server.http_url,
            "--input-data",
            str(tmp_path / "perf.json"),
            "--concurrency-range",
            "1",
            # A run, not a measurement: any timing counts as stable on a busy machine.
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            "10",
            "--stability-percentage",
            "1000",
            "--max-trials",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Composing models" in result.stdout and "hoh_classifier" in result.stdout


def test_hoh_serve_perf_data_writes_the_input_data_and_serve_still_needs_a_repository(
    tmp_path, capsys
):
    from tiny_model import make_image

    from hoh.cli import main

    (tmp_path / "a.png").write_bytes(make_image(1))
    out = tmp_path / "perf.json"
    assert main(["serve", "perf-data", str(tmp_path / "a.png"), "--out", str(out)]) == 0
    [item] = json.loads(out.read_text())["data"]
    assert "perf_analyzer -m hoh -u 127.0.0.1:8000" in capsys.readouterr().out
    assert item["image_bytes"]["shape"] == [1]
    assert main(["serve"]) == 2
    assert "--model-repository DIR is required" in capsys.readouterr().err
    assert main(["serve", "perf-data", str(tmp_path), "--out", str(out), "--limit", "-1"]) == 2
