"""Serving a pushed model with the bundled Triton server, through the hoh client.

The e2e tests share one real server (started once: the python backend loads TensorFlow, 5-30 s)
on a repository written by the real TritonPusher executor. They run in file order because the
last ones change the repository (a failed push, then version 2). The other tests cover the pure
pieces (image checks, command line, client parsing) without a server.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from tiny_model import build_model_artifact_dir, make_image, predict_in_process, run_pusher_executor

import hoh  # noqa: F401
from hoh.components.triton_pusher import repository
from hoh.serving import command, installation, process
from hoh.serving import server as srv
from hoh.serving import triton_model as tm
from hoh.serving.client import (
    ClientError,
    InvalidImage,
    ServerUnavailable,
    TritonImageClient,
    model_info_from_config,
    normalize_url,
    predictions_from_outputs,
)
from hoh.serving.files import expand_images

CLASSES_V1 = ("human", "horse")
CLASSES_V2 = ("cat", "dog", "horse")
FORMATS = ("PNG", "JPEG", "BMP", "GIF")
MAX_BATCH = 8
MAX_IMAGES = 6  # per request: below MAX_BATCH, so hoh's own check answers, not Triton's
MAX_REQUEST_BYTES = 20 * 1024 * 1024  # above the 16 MiB per image (the push default)
# These tests read the TensorFlow flavour's files (hoh/N/model.savedmodel, its one config);
# the ONNX flavour (the default) has its own in test_onnx_flavor.py and test_pipeline_e2e.py.
FLAVOR = "tensorflow"


def huge_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit PNG that compresses to ~100 KB but decodes to width*height*3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def images(seed: int, n: int) -> list[bytes]:
    return [
        make_image(seed + i, size=(24 + i % 5, 20 + i % 7), fmt=FORMATS[i % 4]) for i in range(n)
    ]


# ====================================================================== pure pieces


@pytest.mark.parametrize("fmt", FORMATS)
def test_image_header_sizes(fmt):
    data = make_image(1, size=(37, 23), fmt=fmt)
    assert tm.image_format_and_size(data) == (fmt, (37, 23))
    tm.check_image(0, data, max_bytes=10**6, max_pixels=10**6)


def test_jpeg_size_behind_exif_block():
    import io

    from PIL import Image

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "x" * 5000  # ImageDescription: pushes SOF 5 KB further
    Image.new("RGB", (41, 17)).save(buf, format="JPEG", exif=exif)
    assert tm.image_format_and_size(buf.getvalue()) == ("JPEG", (41, 17))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "input 3: empty image bytes"),
        (b"hello world", r"input 3: not a PNG, JPEG, GIF or BMP image \(starts with b'hello wo'\)"),
        (
            b"\x89PNG\r\n\x1a\n" + b"\x00" * 200,
            "input 3: 208 bytes is above the limit of 100 bytes",
        ),
        (huge_png(20000, 10000), "input 3: PNG image of 20000x10000 pixels is above the limit"),
    ],
)
def test_check_image_rejects(data, message):
    with pytest.raises(tm.InputError, match=message):
        tm.check_image(3, data, max_bytes=100 if len(data) == 208 else 10**7, max_pixels=10**6)


def test_error_summary_keeps_the_reason_only():
    message = (
        "Graph execution error:\n\nDetected at node map/while/decode_image/DecodeImage "
        "defined at (most recent call last):\n<stack traces unavailable>\nInvalid PNG data, "
        "size 100\n\t [[{{node map/while/decode_image/DecodeImage}}]] [Op:__inference_1]"
    )
    assert tm.error_summary(message) == "Invalid PNG data, size 100"
    assert tm.error_summary("") == "unknown error"


def test_thread_counts_split_cores_between_instances():
    config = {"instance_group": [{"kind": "KIND_CPU", "count": 2}], "parameters": {}}
    assert tm.thread_counts(config, 8) == (4, 2)
    assert tm.thread_counts(config, 2) == (1, 1)
    config["parameters"] = {"intra_op_threads": {"string_value": "3"}}
    assert tm.thread_counts(config, 2) == (3, 2)


def test_flatten_input():
    batch = np.array([[b"a\x00"], [b""]], dtype=object)
    assert tm.flatten_input(batch) == [b"a\x00", b""]


def test_server_command_and_environment(tmp_path):
    install = installation.find_installation()
    cmd = command.server_command(
        install,
        tmp_path,
        "/repo",
        host="127.0.0.1",
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        model_config_name="gpu",
        repository_poll_secs=7,
        admin_key="k",
    )
    for flag in (
        "--model-repository=/repo",
        "--model-control-mode=poll",
        "--repository-poll-secs=7",
        "--model-config-name=gpu",
        "--exit-on-error=false",
        "--http-port=1",
        "--grpc-port=2",
        "--metrics-port=3",
        "--allow-metrics=true",
        f"--backend-directory={tmp_path}",
        f"--cache-directory={install.caches}",
    ):
        assert flag in cmd
    assert any(a.startswith("--cache-config=local,size=") for a in cmd)
    explicit = command.server_command(
        install,
        tmp_path,
        "/repo",
        host="0.0.0.0",
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        model_control_mode="explicit",
        admin_key="k",
    )
    assert "--load-model=*" in explicit and not any("poll-secs" in a for a in explicit)
    with pytest.raises(installation.ServerError, match="control mode"):
        command.server_command(
            install,
            tmp_path,
            "/r",
            host="h",
            http_port=1,
            grpc_port=2,
            metrics_port=3,
            model_control_mode="none",
            admin_key="k",
        )
    env = installation.server_environment(install, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/x"})
    libs = env["LD_LIBRARY_PATH"].split(":")
    assert libs == [str(install.python_libdir), str(install.libs), "/x"]
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_backend_dir_has_backend_utils_and_stub(tmp_path):
    install = installation.find_installation()
    python_dir = installation.prepare_backend_dir(install, tmp_path / "b") / "python"
    names = sorted(p.name for p in python_dir.iterdir())
    assert names == [
        "libtriton_python.so",
        "triton_python_backend_stub",
        "triton_python_backend_utils.py",
    ]
    assert (python_dir / "triton_python_backend_stub").resolve() == install.stub.resolve()


def test_missing_stub_or_repository_is_a_clear_error(tmp_path):
    with pytest.raises(
        installation.ServerError, match=r"no python backend stub for Python 2\.7 \(.*3\.11"
    ):
        installation.find_installation("2.7")
    with pytest.raises(installation.ServerError, match="does not exist"):
        srv.TritonServer(tmp_path / "nope").start()


def test_client_parsing():
    assert normalize_url("http://h:1/", "http") == "h:1"
    assert normalize_url(None, "grpc") == "127.0.0.1:8001"
    http_config = {
        "name": "hoh",
        "max_batch_size": 8,
        "output": [{"name": "probabilities", "dims": [3]}],
        "parameters": {"class_names": {"string_value": '["a", "b", "c"]'}},
    }
    info = model_info_from_config(http_config)
    assert (info.max_batch_size, info.class_names) == (8, ("a", "b", "c"))
    grpc_config = {
        "config": {
            "name": "hoh",
            "max_batch_size": "4",
            "output": [{"name": "probabilities", "dims": ["2"]}],
        }
    }
    assert model_info_from_config(grpc_config).names_for("1", 2) == ("class_0", "class_1")
    (p,) = predictions_from_outputs(np.array([[0.25, 0.75]]), ["dog"], ("cat", "dog"))
    assert (p.label, p.probability, p.probabilities) == ("dog", 0.75, {"cat": 0.25, "dog": 0.75})


def test_client_errors_without_a_server(tmp_path):
    port = process.free_port()
    for protocol in ("http", "grpc"):
        client = TritonImageClient(f"127.0.0.1:{port}", protocol=protocol, timeout=5)
        assert not client.is_ready()
        with pytest.raises(ServerUnavailable, match=f"no Triton server at 127.0.0.1:{port}"):
            client.predict([b"x"])
    with pytest.raises(ClientError, match="cannot read image"):
        TritonImageClient().predict([tmp_path / "missing.png"])


def test_expand_images(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("b.PNG", "a.jpg", "sub/c.gif", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"x")
    found = expand_images([str(tmp_path / "d")])
    names = [p.relative_to(tmp_path / "d").as_posix() for p in found]
    assert names == ["a.jpg", "b.PNG", "sub/c.gif"]
    from hoh.errors import HohError

    with pytest.raises(HohError, match="does not exist"):
        expand_images([str(tmp_path / "nope.png")])


# ====================================================================== real server


@dataclass
class Served:
    server: srv.TritonServer
    repository: Path
    model_dir: Path  # the serving SavedModel of version 1
    root: Path
    clients: list

    def client(self, protocol: str = "http") -> TritonImageClient:
        """A new client (one per thread: tritonclient's clients are not thread-safe)."""
        url = self.server.http_url if protocol == "http" else self.server.grpc_url
        self.clients.append(TritonImageClient(url, protocol=protocol, timeout=60))
        return self.clients[-1]


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    model_uri = root / "model-1"
    build_model_artifact_dir(model_uri, class_names=CLASSES_V1, seed=0)
    run_pusher_executor(
        model_uri,
        root / "repository",
        root / "pushed-1",
        blessed=1,
        max_batch_size=MAX_BATCH,
        preferred_batch_sizes=[4, 8],
        max_queue_delay_us=50_000,  # wide enough that concurrent test requests share a batch
        versions_to_serve=1,
        versions_to_keep=2,
        flavor=FLAVOR,
        max_images_per_request=MAX_IMAGES,
        max_request_bytes=MAX_REQUEST_BYTES,
    )
    server = srv.TritonServer(
        root / "repository",
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        repository_poll_secs=1,
        log_file=root / "triton.log",
    )
    try:
        server.start()
        server.wait_ready(timeout=240)
        served = Served(server, root / "repository", model_uri / "Format-Serving", root, [])
        yield served
        for client in served.clients:  # open keep-alive connections would delay the stop
            client.close()
    finally:
        server.stop()


def metric(served: Served, name: str) -> float:
    """Sum of a Prometheus counter over the versions of model 'hoh'."""
    with urllib.request.urlopen(served.server.metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    pattern = re.compile(rf'^{name}{{[^}}]*model="hoh"[^}}]*}} ([0-9.e+]+)$', re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


@pytest.mark.e2e
def test_server_is_ready_with_model_metadata(served):
    import tritonclient.http as httpclient

    assert served.client("http").is_ready() and served.client("grpc").is_ready()
    assert served.server.model_states() == "hoh v1: READY"
    meta = httpclient.InferenceServerClient(served.server.http_url).get_model_metadata("hoh")
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image_bytes", "datatype": "BYTES", "shape": [-1, 1]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]} == {
        "probabilities": ("FP32", [-1, -1]),  # the width is each version's (class_names.v<N>)
        "label": ("BYTES", [-1, 1]),
    }
    info = served.client().model_info()
    assert (info.class_names, info.max_batch_size) == (CLASSES_V1, MAX_BATCH)
    assert info.versions == (("1", CLASSES_V1),)


@pytest.mark.e2e
@pytest.mark.parametrize("protocol, seed", [("http", 100), ("grpc", 200)])
def test_predictions_equal_in_process_serving_default(served, protocol, seed):
    batch = images(seed, 6)
    reference = predict_in_process(served.model_dir, batch)
    probabilities, labels = served.client(protocol).infer(batch)
    assert probabilities.shape == (6, len(CLASSES_V1))
    assert np.max(np.abs(probabilities - reference["probabilities"])) <= 1e-5
    assert labels == [x.decode() for x in reference["label"]]
    predictions = served.client(protocol).predict(batch)
    assert [p.label for p in predictions] == labels
    for p, row in zip(predictions, reference["probabilities"]):
        assert list(p.probabilities) == list(CLASSES_V1)
        assert np.allclose(list(p.probabilities.values()), row, atol=1e-5)
        assert p.probability == max(p.probabilities.values())


@pytest.mark.e2e
def test_more_images_than_max_batch_size_are_split_into_requests(served, tmp_path):
    batch = images(300, 2 * MAX_BATCH + 3)
    paths = []
    for i, data in enumerate(batch):
        paths.append(tmp_path / f"img{i}.bin")
        paths[-1].write_bytes(data)
    reference = predict_in_process(served.model_dir, batch)
    predictions = served.client("grpc").predict(paths)
    served_probs = np.array([list(p.probabilities.values()) for p in predictions])
    assert np.max(np.abs(served_probs - reference["probabilities"])) <= 1e-5


@pytest.mark.e2e
def test_concurrent_requests_share_a_batch_and_a_bad_one_fails_alone(served):
    good = images(400, 4)
    bad = [make_image(450)[:120], make_image(451, fmt="JPEG")[:200]]  # pass the header check
    requests = good + bad
    results: list = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def send(i: int) -> None:
        client = served.client("http")
        barrier.wait()
        try:
            results[i] = client.infer([requests[i]])
        except Exception as exc:  # noqa: BLE001 - recorded for the asserts
            results[i] = exc

    executions = metric(served, "nv_inference_exec_count")
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    reference = predict_in_process(served.model_dir, good)["probabilities"]
    for i in range(len(good)):
        probabilities, _ = results[i]
        assert np.max(np.abs(probabilities[0] - reference[i])) <= 1e-5
    for result in results[len(good) :]:
        assert isinstance(result, InvalidImage) and result.source == "#0"
        assert result.reason.startswith("could not be decoded as an image: ")
    # Fewer model executions than requests: the dynamic batcher grouped them, and the
    # per-request fallback still answered the good ones.
    assert metric(served, "nv_inference_exec_count") - executions < len(requests)


# Each maker gets a number so that HTTP and gRPC send different bytes (a model pushed with
# push.response_cache on would replay the first failure; see test_a_repeated_bad_request_...).
BAD_INPUTS = {
    "not-an-image": (lambda n: b"GIF? no, text %d" % n, "not a PNG, JPEG, GIF or BMP image"),
    "empty": (lambda n: b"", "empty image bytes"),
    "huge-pixels": (
        lambda n: huge_png(30000 + n, 30000),
        "PNG image of 3000{n}x30000 pixels is above the limit of 50000000 pixels",
    ),
    "huge-bytes": (
        lambda n: b"\x89PNG\r\n\x1a\n" + bytes([n]) * (17 * 1024 * 1024),
        "bytes is above the limit of 16777216 bytes",
    ),
    "truncated": (
        lambda n: make_image(70 + n)[:90],
        "could not be decoded as an image: Invalid PNG data",
    ),
}
BAD_CASES = [
    (kind, protocol)
    for kind in BAD_INPUTS
    for protocol in ("http", "grpc")
    if not (kind == "empty" and protocol == "grpc")
]  # b"" cannot be made unique


@pytest.mark.e2e
@pytest.mark.parametrize("kind, protocol", BAD_CASES)
def test_bad_input_gets_a_clear_error_and_the_next_request_succeeds(
    served, tmp_path, kind, protocol
):
    n = ("http", "grpc").index(protocol)
    make, reason = BAD_INPUTS[kind]
    path = tmp_path / f"{kind}.png"
    path.write_bytes(make(n))
    client = served.client(protocol)
    with pytest.raises(InvalidImage, match=re.escape(reason.format(n=n))) as err:
        client.predict([path])
    assert err.value.source == str(path)
    (prediction,) = client.predict(images(500 + n, 1))
    assert prediction.label in CLASSES_V1


def raw_infer(url: str, images: list[bytes], headers: dict | None = None) -> tuple[int, str]:
    """POST /v2/models/hoh/infer with binary data, as any HTTP client may: (status, body)."""
    import http.client
    import json

    data = b"".join(struct.pack("<I", len(i)) + i for i in images)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image_bytes",
                    "shape": [len(images), 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
        }
    ).encode()
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request(
            "POST",
            "/v2/models/hoh/infer",
            body=head + data,
            headers={"Inference-Header-Content-Length": str(len(head)), **(headers or {})},
        )
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


@pytest.mark.e2e
def test_a_repeated_bad_request_is_still_an_error_for_any_client(served):
    """Triton 2.51's response cache would answer the repeat with 200 and no outputs; hoh pushes
    the model with the cache off, so the raw HTTP API says why both times."""
    config = repository.parse_model_config((served.repository / "hoh/config.pbtxt").read_text())
    assert config.response_cache.enable is False
    for _ in range(2):
        status, body = raw_infer(served.server.http_url, [b"repeated garbage"])
        assert (status, "not a PNG, JPEG, GIF or BMP image" in body) == (400, True), body
    client = served.client("grpc")
    for _ in range(2):
        with pytest.raises(InvalidImage, match="not a PNG") as err:
            client.predict([images(550, 1)[0], b"repeated garbage"])
        assert err.value.source == "#1"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "batch, message",
    [
        (
            [b"x"] * (MAX_IMAGES + 1),
            f"request holds {MAX_IMAGES + 1} images; the limit is {MAX_IMAGES} images per request",
        ),
        (
            [b"\x89PNG\r\n\x1a\n" + b"\x00" * (11 * 1024 * 1024)] * 2,
            f"the limit is {MAX_REQUEST_BYTES} bytes per request (max_request_bytes)",
        ),
        (
            [b"\x89PNG\r\n\x1a\n" + b"\x01" * (17 * 1024 * 1024)],
            "input 0: 17825800 bytes is above the limit of 16777216 bytes",
        ),
    ],
)
def test_an_over_limit_request_gets_a_4xx_naming_the_limit(served, batch, message):
    status, body = raw_infer(served.server.http_url, batch)
    assert status == 400 and message in body, body
    status, body = raw_infer(served.server.http_url, images(560, 2))
    assert status == 200 and '"name":"probabilities"' in body
    assert served.server.model_states() == "hoh v1: READY"


@pytest.mark.e2e
def test_the_client_splits_a_request_over_the_image_limit(served):
    batch = images(570, MAX_IMAGES + 2)
    reference = predict_in_process(served.model_dir, batch)["probabilities"]
    requests = metric(served, "nv_inference_request_success")
    predictions = served.client().predict(batch)
    assert np.allclose([list(p.probabilities.values()) for p in predictions], reference, atol=1e-5)
    assert metric(served, "nv_inference_request_success") - requests == 2


@pytest.mark.e2e
def test_load_with_a_code_override_is_refused_and_hoh_still_loads(served, tmp_path):
    """The attack: in explicit mode Triton's load API takes a model.py in the request body.
    Without the launcher's key it is refused on HTTP and gRPC; TritonServer itself still
    unloads and loads the model."""
    import base64
    import json

    import tritonclient.grpc as grpcclient

    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('owned')\n".encode()
    body = json.dumps(
        {
            "parameters": {
                "config": json.dumps({"backend": "python", "max_batch_size": 0}),
                "file:1/model.py": base64.b64encode(code).decode(),
            }
        }
    ).encode()
    log = tmp_path / "explicit.log"
    with srv.TritonServer(
        served.repository,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        model_control_mode="explicit",
        log_file=log,
    ) as server:
        request = urllib.request.Request(
            f"http://{server.http_url}/v2/repository/models/evil/load", data=body, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        assert err.value.code == 403 and b"This API is restricted" in err.value.read()
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(Exception, match="This protocol is restricted"):
            grpc.load_model(
                "evil", config=json.dumps({"backend": "python"}), files={"file:1/model.py": code}
            )
        grpc.close()
        for path in ("v2/logging", "v2/trace/setting", "v2/systemsharedmemory/status"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(f"http://{server.http_url}/{path}", timeout=10)
            assert err.value.code == 403, path
        assert not marker.exists()
        assert server.model_states() == "hoh v1: READY"  # the launcher's own key works
        server.unload_model("hoh")
        wait_until(lambda: "READY" not in server.model_states(), 60, "the model to unload")
        server.load_model("hoh")
        assert server.model_states() == "hoh v1: READY"
        client = TritonImageClient(server.http_url, timeout=60)
        assert len(client.predict(images(580, 2))) == 2
        client.close()
    assert not marker.exists()


@pytest.mark.e2e
def test_pointing_the_client_at_the_wrong_port_says_so(served):
    metrics_port = served.server.metrics_url.split(":")[2].split("/")[0]
    with pytest.raises(ServerUnavailable, match="is it the metrics port"):
        TritonImageClient(f"127.0.0.1:{metrics_port}", timeout=10).predict(images(590, 1))
    with pytest.raises(ServerUnavailable, match="127.0.0.1"):
        TritonImageClient(served.server.http_url, protocol="grpc", timeout=10).check_ready()
    with pytest.raises(ServerUnavailable, match="answers, but not as Triton's HTTP"):
        TritonImageClient(served.server.grpc_url, timeout=10).check_ready()


@pytest.mark.e2e
def test_bad_image_inside_a_multi_image_request_is_named(served):
    batch = images(600, 3)
    batch[1] = make_image(601)[:100]
    with pytest.raises(InvalidImage) as err:
        served.client().predict(batch)
    assert err.value.source == "#1" and "Invalid PNG data" in err.value.reason


@pytest.mark.e2e
def test_metrics_report_inferences_and_no_cache_hits(served):
    image = images(700, 1)
    success = metric(served, "nv_inference_request_success")
    hits = metric(served, "nv_cache_num_hits_per_model")
    first = served.client().predict(image)
    second = served.client().predict(image)
    assert first == second
    assert metric(served, "nv_inference_request_success") - success >= 2
    assert metric(served, "nv_cache_num_hits_per_model") - hits == 0  # pushed with the cache off


@pytest.mark.e2e
def test_hoh_predict_command(served):
    path = served.root / "cli.png"
    path.write_bytes(images(800, 1)[0])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hoh.cli",
            "predict",
            str(path),
            "--url",
            served.server.grpc_url,
            "--protocol",
            "grpc",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    (row,) = __import__("json").loads(out)
    assert row["image"] == str(path) and row["label"] in CLASSES_V1


@pytest.mark.e2e
def test_interrupted_pushes_leave_the_repository_servable(served, monkeypatch):
    model_dir = served.repository / "hoh"
    # 1. A pusher on another host (pod) died mid-copy a moment ago: its half-written staging
    #    directory is too recent to be judged stale, so it stays while the server polls.
    leftover = model_dir / ".hoh-staging-other-host-123-deadbeef"
    (leftover / "model.savedmodel").mkdir(parents=True)
    (leftover / "model.py").write_text("raise SystemExit('half written')\n")
    # 2. A push whose final rename fails.
    model_uri = served.root / "model-broken"
    build_model_artifact_dir(model_uri, class_names=CLASSES_V2, seed=5)

    def rename_fails(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(repository.LocalFS, "rename_dir", staticmethod(rename_fails))
    with pytest.raises(repository.PushError, match="could not publish version 2"):
        run_pusher_executor(
            model_uri, served.repository, served.root / "pushed-broken", flavor=FLAVOR
        )
    monkeypatch.undo()
    assert repository.list_versions(str(model_dir)) == [1]
    assert repository.served_versions(str(model_dir)) == [1]  # config.pbtxt restored
    assert (model_dir / "1" / "labels.txt").read_text().splitlines() == list(CLASSES_V1)
    staging = [p for p in model_dir.iterdir() if p.name.startswith(".hoh-staging-")]
    assert staging == [leftover]  # the failed push cleaned up after itself
    time.sleep(3 * served.server.repository_poll_secs)  # let the server poll what is there
    assert served.server.model_states() == "hoh v1: READY"
    batch = images(900, 2)
    probabilities, _ = served.client().infer(batch)
    reference = predict_in_process(served.model_dir, batch)["probabilities"]
    assert np.max(np.abs(probabilities - reference)) <= 1e-5
    os.utime(leftover, (0, 0))  # a day later: the next push removes it (checked after version 3)


def push_version(served: Served, name: str, classes, seed: int):
    model_uri = served.root / name
    build_model_artifact_dir(model_uri, class_names=classes, seed=seed)
    pushed = run_pusher_executor(
        model_uri,
        served.repository,
        served.root / f"pushed-{name}",
        max_batch_size=MAX_BATCH,
        preferred_batch_sizes=[4, 8],
        max_queue_delay_us=50_000,
        versions_to_keep=2,
        flavor=FLAVOR,
    )
    return model_uri / "Format-Serving", pushed.get_string_custom_property("pushed_version")


def assert_serves(client: TritonImageClient, model_dir: Path, classes, seed: int) -> None:
    batch = images(seed, 4)
    reference = predict_in_process(model_dir, batch)
    predictions = client.predict(batch)
    assert [p.label for p in predictions] == [x.decode() for x in reference["label"]]
    served_probs = np.array([list(p.probabilities.values()) for p in predictions])
    assert np.max(np.abs(served_probs - reference["probabilities"])) <= 1e-5
    assert list(predictions[0].probabilities) == list(classes)


@pytest.mark.e2e
def test_pushing_version_2_goes_live_without_downtime_and_retires_version_1(served):
    """Poll mode: no restart, and (same config) no moment without a ready version."""
    stop, failures, answered = threading.Event(), [], [0]

    def keep_asking(client: TritonImageClient) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                client.infer(images(10_000 + i, 1))
                answered[0] += 1
            except Exception as exc:  # noqa: BLE001 - recorded for the assert
                failures.append(str(exc))
            time.sleep(0.05)

    asker = threading.Thread(target=keep_asking, args=(served.client(),))
    asker.start()
    try:
        model_dir, version = push_version(served, "model-2", CLASSES_V1, seed=1)
        assert version == "2"
        client = served.client()
        wait_until(lambda: client.is_ready("2"), 180, "version 2 to be ready")
        wait_until(
            lambda: "v1: UNAVAILABLE" in served.server.model_states(),
            60,
            "version 1 to be unloaded",
        )
    finally:
        stop.set()
        asker.join(60)
    assert served.server.model_states() == "hoh v1: UNAVAILABLE (unloaded); hoh v2: READY"
    assert failures == [] and answered[0] > 10
    assert_serves(client, model_dir, CLASSES_V1, seed=1000)
    assert repository.list_versions(str(served.repository / "hoh")) == [1, 2]  # keep 2 on disk


@pytest.mark.e2e
def test_version_3_with_other_classes_replaces_the_config(served):
    client = served.client()
    assert client.model_info().class_names == CLASSES_V1
    model_dir, version = push_version(served, "model-3", CLASSES_V2, seed=2)
    assert version == "3"
    wait_until(lambda: client.is_ready("3"), 180, "version 3 to be ready")
    wait_until(
        lambda: (
            served.server.model_states() == "hoh v3: READY"
            or "v2: UNAVAILABLE" in served.server.model_states()
        ),
        60,
        "version 2 to go",
    )
    assert_serves(client, model_dir, CLASSES_V2, seed=1100)  # the client notices the new classes
    model_dir_on_disk = served.repository / "hoh"
    assert repository.list_versions(str(model_dir_on_disk)) == [2, 3]  # version 1 deleted
    assert not [p.name for p in model_dir_on_disk.iterdir() if p.name.startswith(".")]


@pytest.mark.e2e
def test_hoh_serve_command_stops_cleanly_on_sigterm(served):
    ports = [str(process.free_port()) for _ in range(3)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hoh.cli",
            "serve",
            "--model-repository",
            str(served.repository),
            "--http-port",
            ports[0],
            "--grpc-port",
            ports[1],
            "--metrics-port",
            ports[2],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # blocks until ready (or exit)
            lines.append(line)
            if "Ctrl-C" in line:
                break
        assert f"HTTP    http://127.0.0.1:{ports[0]}" in "".join(lines)
        assert TritonImageClient(f"127.0.0.1:{ports[0]}").is_ready()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not TritonImageClient(f"127.0.0.1:{ports[0]}", timeout=2).is_ready()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
