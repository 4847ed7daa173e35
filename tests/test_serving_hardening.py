"""Serving hardening without a Triton server: restricted admin APIs on the command line, request
limits from the typed config to config.pbtxt to model.py and the client, and the client's
messages when the URL points at something that is not Triton's API.

The attacks themselves against a real server are in test_triton_serving.py (they share its
server).
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading

import pytest

import hoh  # noqa: F401
from hoh.components.triton_pusher import repository
from hoh.config import PushConfig
from hoh.serving import command, installation
from hoh.serving import server as srv
from hoh.serving import triton_model as tm
from hoh.serving.client import (
    CACHED_REJECTION,
    InvalidImage,
    ServerUnavailable,
    TritonImageClient,
    _EmptyResponse,
    model_info_from_config,
    plan_requests,
)

# ---------------------------------------------------------------- restricted admin APIs


def test_command_restricts_admin_apis_on_http_and_grpc(tmp_path):
    install = installation.find_installation()
    cmd = command.server_command(
        install,
        tmp_path,
        "/repo",
        host="127.0.0.1",
        http_port=1,
        grpc_port=2,
        metrics_port=3,
        model_control_mode="explicit",
        admin_key="k3y_-A",
    )
    expected = "model-repository,shared-memory,trace,logging:hoh-admin-key=k3y_-A"
    assert f"--http-restricted-api={expected}" in cmd
    assert f"--grpc-restricted-protocol={expected}" in cmd
    for bad_key in ("", "a b", "x,y:z=1"):  # would break Triton's flag syntax
        with pytest.raises(installation.ServerError, match="admin key"):
            command.server_command(
                install,
                tmp_path,
                "/r",
                host="h",
                http_port=1,
                grpc_port=2,
                metrics_port=3,
                admin_key=bad_key,
            )


def test_each_server_has_its_own_unprinted_key(tmp_path):
    a, b = srv.TritonServer(tmp_path), srv.TritonServer(tmp_path)
    assert a._admin_key != b._admin_key and len(a._admin_key) >= 40
    assert a._admin_key not in repr(a)


# ---------------------------------------------------------------- limits


def test_push_defaults_come_from_the_typed_config():
    defaults = PushConfig()
    settings = repository.TritonPushSettings()
    for name in (
        "max_image_bytes",
        "max_image_pixels",
        "max_images_per_request",
        "max_request_bytes",
        "response_cache",
    ):
        assert getattr(settings, name) == getattr(defaults, name)
    # model.py cannot import hoh; its fallbacks (for a hand-written config) must still agree.
    assert tm.DEFAULT_MAX_IMAGE_BYTES == defaults.max_image_bytes
    assert tm.DEFAULT_MAX_IMAGE_PIXELS == defaults.max_image_pixels
    assert tm.DEFAULT_MAX_REQUEST_BYTES == defaults.max_request_bytes


def test_config_pbtxt_carries_the_limits_and_no_response_cache():
    info = repository.ServingModelInfo(("a", "b"), None)
    settings = repository.TritonPushSettings(
        max_batch_size=16, preferred_batch_sizes=(8,), max_request_bytes=1000, max_image_bytes=900
    )
    config = repository.parse_model_config(
        repository.render_model_config(repository.build_model_config(settings, info))
    )
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["max_images_per_request"] == "16"  # null = max_batch_size
    assert params["max_request_bytes"] == "1000" and params["max_image_bytes"] == "900"
    assert config.response_cache.enable is False
    on = repository.TritonPushSettings(response_cache=True, max_images_per_request=4)
    config = repository.build_model_config(on, info)
    assert config.response_cache.enable is True
    assert config.parameters["max_images_per_request"].string_value == "4"


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"max_images_per_request": 64},
            r"max_images_per_request \(64\) must be <= max_batch_size",
        ),
        ({"max_image_bytes": 10, "max_request_bytes": 5}, "must be <= max_request_bytes"),
        ({"max_request_bytes": 0}, "max_request_bytes must be >= 1"),
    ],
)
def test_inconsistent_limits_are_refused_before_a_push(changes, message):
    with pytest.raises(repository.PushError, match=message):
        repository.TritonPushSettings(**changes).validate()
    with pytest.raises(ValueError, match=message.split(" ")[0].replace("(", "")):
        PushConfig(**changes)


def test_model_refuses_requests_over_their_limits():
    tm.check_request([b"x" * 10] * 3, max_images=3, max_bytes=30)
    with pytest.raises(
        tm.InputError,
        match=r"request holds 4 images; the limit is 3 images per "
        r"request \(max_images_per_request\)",
    ):
        tm.check_request([b"x"] * 4, max_images=3, max_bytes=100)
    with pytest.raises(
        tm.InputError,
        match=r"request holds 31 bytes of images; the limit is 30 "
        r"bytes per request \(max_request_bytes\)",
    ):
        tm.check_request([b"x" * 10, b"x" * 21], max_images=3, max_bytes=30)


def test_client_splits_requests_by_count_and_bytes():
    assert plan_requests([1] * 5, max_images=2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert plan_requests([4, 4, 4, 9, 1], max_images=8, max_bytes=8) == [
        slice(0, 2),
        slice(2, 3),
        slice(3, 4),
        slice(4, 5),
    ]  # 9 > 8 goes alone: server names it
    assert plan_requests([], max_images=3) == []
    info = model_info_from_config(
        {
            "max_batch_size": 8,
            "output": [{"name": "probabilities", "dims": [2]}],
            "parameters": {
                "max_images_per_request": {"string_value": "4"},
                "max_request_bytes": {"string_value": "1000"},
            },
        }
    )
    assert (info.images_per_request, info.max_request_bytes) == (4, 1000)
    old = model_info_from_config({"max_batch_size": 8})  # pushed before the limits existed
    assert (old.images_per_request, old.max_request_bytes) == (8, 0)


# ---------------------------------------------------------------- client messages


class _Answer(http.server.BaseHTTPRequestHandler):
    """Answers every request with `status` and an empty body, as Triton's metrics port does."""

    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def answering(request):
    """An HTTP server on 127.0.0.1 answering `request.param` to everything, for one test."""
    handler = type("Handler", (_Answer,), {"status": request.param})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("answering", [404], indirect=True)
def test_a_host_that_is_not_live_is_not_reported_as_model_not_ready(answering):
    """What an unreachable host behind a proxy, or any other web server, looks like."""
    with pytest.raises(
        ServerUnavailable,
        match=r"answers, but not as Triton's HTTP inference "
        r"API \(its liveness check failed\)",
    ):
        TritonImageClient(answering, timeout=5).check_ready()


@pytest.mark.parametrize("answering", [200], indirect=True)
def test_predict_at_a_metrics_like_port_is_a_clear_error(answering, tmp_path):
    with pytest.raises(ServerUnavailable, match="is it the metrics port"):
        TritonImageClient(answering, timeout=5).predict([b"x"])
    image = tmp_path / "x.png"
    image.write_bytes(b"x")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hoh.cli",
            "predict",
            str(image),
            "--url",
            answering,
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode != 0
    assert "is it the metrics port" in out.stderr and "Traceback" not in out.stderr


def test_http_client_at_a_non_http_port_is_a_clear_error():
    """Triton's gRPC port answers HTTP/1 with HTTP/2 frames; any non-HTTP listener is alike."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def answer_garbage():
        for _ in range(4):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(4096)
            conn.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00not http at all\r\n\r\n")
            conn.close()

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    try:
        url = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ServerUnavailable, match="answers, but not as Triton's HTTP"):
            TritonImageClient(url, timeout=5).check_ready()
    finally:
        listener.close()
        thread.join(10)


def test_grpc_name_that_does_not_resolve_is_server_unavailable():
    with pytest.raises(ServerUnavailable, match="no Triton server at nonexistent.invalid:8001"):
        TritonImageClient("nonexistent.invalid:8001", protocol="grpc", timeout=5).check_ready()


class _ReplayingClient(TritonImageClient):
    """Answers like a cache-enabled Triton: a request whose exact images are in `rejected` (the
    failures the cache holds) comes back without outputs."""

    def __init__(self, rejected):
        super().__init__("127.0.0.1:1")
        self.rejected, self.sent = set(rejected), []

    def _infer_once(self, images):
        import numpy as np

        self.sent.append(list(images))
        if tuple(images) in self.rejected:
            raise _EmptyResponse("replayed")
        return np.full((len(images), 2), 0.5, np.float32), ["a"] * len(images), "1"


def test_a_replayed_failure_is_named_as_such_not_as_this_clients_earlier_rejection():
    client = _ReplayingClient({(b"good1", b"bad", b"good2"), (b"bad",)})
    with pytest.raises(InvalidImage) as err:
        client.infer([b"good1", b"bad", b"good2"])
    assert err.value.source == "#1" and err.value.reason == CACHED_REJECTION
    assert "sent earlier by some client" in CACHED_REJECTION and "earlier;" not in CACHED_REJECTION
    assert client.sent[1:3] == [[b"good1"], [b"bad"]]  # re-sent one by one
