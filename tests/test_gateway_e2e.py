"""`hoh gateway` as a real process in front of the real Triton, with real Redis and real TLS.

One Triton (tiny model pushed by the real TritonPusher) and one main gateway (TLS 1.3, JWKS
file, Redis cache, audit log, capture) serve the whole module; a few extra gateways cover mutual
TLS with OIDC discovery, a Redis killed mid-run, and Triton down. Every gateway binds 127.0.0.1
on a free port and is stopped by PID. Each test uses its own token subject, so the per-subject
rate limit of one test never throttles another.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import services
from gateway_support import (
    AUDIENCE,
    ISSUER,
    Keys,
    OidcServer,
    issue,
    make_ca,
    tampered,
    token_attacks,
    write_pair,
)
from tiny_model import build_model_artifact_dir, make_image, predict_in_process, run_pusher_executor

from hoh.serving import metrics as triton_metrics
from hoh.serving import server as srv
from hoh.serving.gateway.audit import audit_files, verify

pytestmark = pytest.mark.e2e
CLASSES = ("human", "horse")
MAX_BODY = 3_000_000
MAX_IMAGES = 4


# ---------------------------------------------------------------------- servers


@dataclass
class Triton:
    server: srv.TritonServer
    model_dir: Path


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    root = tmp_path_factory.mktemp("gw-triton")
    build_model_artifact_dir(root / "model", class_names=CLASSES, seed=0)
    run_pusher_executor(
        root / "model",
        root / "repository",
        root / "pushed",
        blessed=1,
        max_batch_size=8,
        preferred_batch_sizes=[4, 8],
        max_queue_delay_us=20_000,
        cpu_step_queue_delay_us=20_000,  # the default flavour's steps wait so requests batch
        max_images_per_request=3,
    )
    server = srv.TritonServer(
        root / "repository", http_port=0, grpc_port=0, metrics_port=0, log_file=root / "triton.log"
    )
    try:
        server.start()
        server.wait_ready(timeout=240)
        yield Triton(server, root / "model" / "Format-Serving")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("gw-pki")
    ca, rogue = make_ca("hoh test CA"), make_ca("rogue CA")
    out = {"dir": d}
    out["ca"], _ = write_pair(d, "ca", ca)
    out["cert"], out["key"] = write_pair(d, "server", issue(ca, "localhost", server=True))
    out["client_cert"], out["client_key"] = write_pair(d, "client", issue(ca, "svc", False))
    out["rogue_cert"], out["rogue_key"] = write_pair(d, "rogue", issue(rogue, "svc", False))
    return out


@pytest.fixture(scope="module")
def keys():
    return Keys()


@dataclass
class Gateway:
    process: subprocess.Popen
    url: str
    log: Path
    audit_dir: Path
    capture_dir: Path
    ca: Path | None

    def client(self, cert=None, **kw) -> httpx.Client:
        verify = ssl.create_default_context(cafile=str(self.ca)) if self.ca else False
        if verify and cert:
            verify.load_cert_chain(*map(str, cert))
        return httpx.Client(base_url=self.url, verify=verify, timeout=60, **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_gateway(
    root: Path, args: list[str], env: dict | None = None, ca: Path | None = None, client_cert=None
) -> Gateway:
    port = services.free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "gateway.log"
    audit_dir, capture_dir = root / "audit", root / "capture"
    cmd = [
        sys.executable,
        "-m",
        "hoh.cli",
        "gateway",
        "--port",
        str(port),
        "--audit-dir",
        str(audit_dir),
        *args,
    ]
    full_env = {
        **os.environ,
        "HOH_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY),
        "HOH_GATEWAY_MAX_IMAGES": str(MAX_IMAGES),
        **(env or {}),
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
        )
    scheme = "https" if ca else "http"
    gw = Gateway(process, f"{scheme}://127.0.0.1:{port}", log, audit_dir, capture_dir, ca)
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}: {gw.log_text()}")
        try:
            with gw.client(cert=client_cert) as c:
                if c.get("/healthz").status_code == 200:
                    return gw
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            gw.stop()
            raise RuntimeError(f"gateway not up after 90 s: {gw.log_text()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def redis_url():
    url, started = services.service("redis")
    yield url
    services.stop(started)


@pytest.fixture(scope="module")
def gateway(triton, pki, keys, redis_url, tmp_path_factory):
    import redis

    root = tmp_path_factory.mktemp("gw-main")
    jwks = keys.write_jwks(root / "jwks.json")
    prefix = services.unique_name("hoh-gw-test") + ":"
    gw = start_gateway(
        root,
        [
            "--triton",
            triton.server.grpc_url,
            "--tls-cert",
            str(pki["cert"]),
            "--tls-key",
            str(pki["key"]),
            "--jwks-file",
            str(jwks),
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
            "--cache-url",
            redis_url,
            "--capture-dir",
            str(root / "capture"),
            "--capture-rate",
            "1",
        ],
        env={
            "HOH_GATEWAY_CACHE_PREFIX": prefix,
            "HOH_GATEWAY_RATE_LIMIT_PER_S": "1",
            "HOH_GATEWAY_RATE_LIMIT_BURST": "30",
        },
        ca=pki["ca"],
    )
    gw.prefix = prefix
    try:
        yield gw
    finally:
        gw.stop()
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=prefix + "*"):
            r.delete(key)
        r.close()


def token(keys: Keys, scope: str = "predict models:read", **kw) -> dict:
    kw.setdefault("sub", f"user-{uuid.uuid4().hex[:8]}")
    return {"Authorization": f"Bearer {keys.token(scope=scope, **kw)}"}


def png(seed: int) -> bytes:
    return make_image(seed, size=(30 + seed % 7, 26))


def triton_count(triton: Triton, name: str, model: str = "hoh") -> float:
    metrics = triton_metrics.fetch(triton.server.metrics_url)
    return triton_metrics.model_totals(metrics, model).get(name, 0.0)


def assert_error(response: httpx.Response, status: int, code: str, text: str = "") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code and text in body["error"]["message"], body
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# ---------------------------------------------------------------------- happy paths


def test_predict_matches_the_model_and_a_repeat_is_a_cache_hit(gateway, triton, keys, redis_url):
    import redis

    image = png(1)
    reference = predict_in_process(triton.model_dir, [image])
    with gateway.client() as c:
        headers = {**token(keys), "Content-Type": "image/png"}
        first = c.post("/v1/models/hoh/predict", content=image, headers=headers)
        second = c.post("/v1/models/hoh/predict", content=image, headers=headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["model"], body["version"], body["cache_hit"]) == ("hoh", "1", False)
    p = body["predictions"][0]
    assert p["class"] == reference["label"][0].decode()
    assert np.allclose(
        [p["probabilities"][c] for c in CLASSES], reference["probabilities"][0], atol=1e-5
    )
    assert p["probability"] == max(p["probabilities"].values())
    again = second.json()
    assert again["cache_hit"] is True and again["predictions"][0]["cache_hit"] is True
    assert again["predictions"][0]["probabilities"] == p["probabilities"]
    assert again["request_id"] != body["request_id"]
    assert len(list(redis.Redis.from_url(redis_url).scan_iter(match=gateway.prefix + "*"))) >= 1


def test_multipart_images_come_back_in_order_across_split_triton_requests(gateway, triton, keys):
    images = [png(10 + i) for i in range(4)]  # the model takes 3 per request: 2 Triton calls
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    with gateway.client() as c:
        r = c.post("/v1/models/hoh/predict", files=files, headers=token(keys))
    assert r.status_code == 200, r.text
    reference = predict_in_process(triton.model_dir, images)
    got = np.array([[p["probabilities"][c] for c in CLASSES] for p in r.json()["predictions"]])
    assert np.allclose(got, reference["probabilities"], atol=1e-5)


def test_concurrent_requests_are_batched_by_triton(gateway, triton, keys):
    images = [png(100 + i) for i in range(8)]
    # The network's executions: the ensemble in front of it runs once per request.
    before = triton_count(triton, "nv_inference_exec_count", "hoh_classifier")
    headers = {**token(keys), "Content-Type": "image/png"}
    results = [None] * len(images)
    barrier = threading.Barrier(len(images))

    def send(i):
        with gateway.client() as c:
            c.get("/healthz")
            barrier.wait()
            results[i] = c.post("/v1/models/hoh/predict", content=images[i], headers=headers)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert [r.status_code for r in results] == [200] * len(images)
    assert triton_count(triton, "nv_inference_exec_count", "hoh_classifier") - before < len(images)


def test_identical_concurrent_misses_call_triton_once(gateway, triton, keys):
    image = png(500)
    before = triton_count(triton, "nv_inference_count")
    headers = {**token(keys), "Content-Type": "image/png"}
    results = [None] * 6
    barrier = threading.Barrier(6)

    def send(i):
        with gateway.client() as c:
            c.get("/healthz")
            barrier.wait()
            results[i] = c.post("/v1/models/hoh/predict", content=image, headers=headers)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert {r.status_code for r in results} == {200}
    assert len({json.dumps(r.json()["predictions"][0]["probabilities"]) for r in results}) == 1
    assert triton_count(triton, "nv_inference_count") - before == 1


def test_models_health_readiness_docs(gateway, keys):
    with gateway.client() as c:
        models = c.get("/v1/models", headers=token(keys, scope="models:read"))
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        docs = c.get("/docs")
        openapi = c.get("/openapi.json").json()
    assert models.status_code == 200
    assert models.json()["models"] == [
        {
            "name": "hoh",
            "versions": ["1"],
            "version": "1",
            "classes": list(CLASSES),
            "classes_by_version": {"1": list(CLASSES)},
        }
    ]
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert docs.status_code == 200 and "/v1/models/{model}/predict" in openapi["paths"]


def test_metrics_need_admin_and_count_what_happened(gateway, keys):
    with gateway.client() as c:
        c.get("/v1/models", headers={"Authorization": f"Bearer {keys.token(exp_in=-100)}"})
        denied = c.get("/metrics", headers=token(keys, scope="predict"))
        allowed = c.get("/metrics", headers=token(keys, scope="admin"))
    assert_error(denied, 403, "insufficient_scope")
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
    text = allowed.text
    assert allowed.status_code == 200
    for needle in (
        'hoh_gateway_auth_failures_total{reason="expired"}',
        'hoh_gateway_requests_total{model="hoh",route="predict",status="200"}',
        'hoh_gateway_cache_total{result="hit"}',
        "hoh_gateway_triton_seconds_bucket",
        "hoh_gateway_in_flight",
    ):
        assert needle in text, needle


# ---------------------------------------------------------------------- refusals


def _bad_tokens(keys: Keys) -> dict:
    return {"no token": (None, "missing_token"), **token_attacks(keys)}


def test_every_bad_token_is_a_401_and_the_gateway_keeps_serving(gateway, keys):
    cases = _bad_tokens(keys)
    with gateway.client() as c:
        for name, (bad, code) in cases.items():
            headers = {"Content-Type": "image/png"}
            if bad:
                headers["Authorization"] = f"Bearer {bad}"
            r = c.post("/v1/models/hoh/predict", content=png(2), headers=headers)
            assert_error(r, 401, code)
            assert r.headers["www-authenticate"].startswith('Bearer realm="hoh"'), name
        ok = c.post(
            "/v1/models/hoh/predict",
            content=png(2),
            headers={**token(keys), "Content-Type": "image/png"},
        )
    assert ok.status_code == 200
    log = gateway.log_text()
    for bad, _ in cases.values():
        if bad:
            assert bad not in log and bad.split(".")[1] not in log


def test_missing_permission_is_403(gateway, keys):
    with gateway.client() as c:
        r = c.post(
            "/v1/models/hoh/predict",
            content=png(3),
            headers={**token(keys, scope="models:read"), "Content-Type": "image/png"},
        )
    assert_error(r, 403, "insufficient_scope", "'predict'")


def test_per_subject_rate_limit_answers_429_with_retry_after(gateway, keys):
    headers = token(keys, scope="models:read")
    with gateway.client() as c:
        statuses = [c.get("/v1/models", headers=headers) for _ in range(40)]
        other = c.get("/v1/models", headers=token(keys, scope="models:read"))
    limited = [r for r in statuses if r.status_code == 429]
    assert limited and statuses[0].status_code == 200
    assert int(limited[0].headers["retry-after"]) >= 1
    assert_error(limited[0], 429, "rate_limited")
    assert other.status_code == 200  # another subject is not throttled


def _multipart(n: int) -> list:
    return [("images", (f"{i}.png", png(40 + i), "image/png")) for i in range(n)]


@pytest.mark.parametrize(
    "case",
    [
        "non-image",
        "empty",
        "over-size",
        "too many images",
        "wrong content type",
        "undecodable",
        "unknown model",
        "bad version",
    ],
)
def test_bad_bodies_get_clear_json_errors(gateway, keys, case):
    auth = token(keys)
    raw = {**auth, "Content-Type": "image/png"}
    with gateway.client() as c:
        send = {
            "non-image": lambda: c.post("/v1/models/hoh/predict", content=b"hello", headers=raw),
            "empty": lambda: c.post("/v1/models/hoh/predict", content=b"", headers=raw),
            "over-size": lambda: c.post(
                "/v1/models/hoh/predict", content=b"\x89PNG" + b"\0" * MAX_BODY, headers=raw
            ),
            "too many images": lambda: c.post(
                "/v1/models/hoh/predict", files=_multipart(MAX_IMAGES + 1), headers=auth
            ),
            "wrong content type": lambda: c.post(
                "/v1/models/hoh/predict",
                content=png(4),
                headers={**auth, "Content-Type": "application/json"},
            ),
            "undecodable": lambda: c.post(
                "/v1/models/hoh/predict", content=png(5)[:100], headers=raw
            ),
            "unknown model": lambda: c.post(
                "/v1/models/other/predict", content=png(6), headers=raw
            ),
            "bad version": lambda: c.post(
                "/v1/models/hoh/predict?version=7", content=png(7), headers=raw
            ),
        }[case]
        r = send()
        expected = {
            "non-image": (400, "invalid_image", "image 0: not a PNG, JPEG, GIF or BMP"),
            "empty": (400, "no_image", "empty body"),
            "over-size": (413, "body_too_large", f"limit is {MAX_BODY} bytes"),
            "too many images": (413, "too_many_images", f"limit is {MAX_IMAGES}"),
            "wrong content type": (415, "unsupported_media_type", "application/json"),
            "undecodable": (400, "invalid_image", "image 0: could not be decoded as an image"),
            "unknown model": (404, "model_not_found", "'other'"),
            "bad version": (404, "model_not_found", "not served"),
        }[case]
        assert_error(r, *expected)
        assert c.get("/readyz").status_code == 200


def test_a_bad_image_is_named_by_its_place_and_nothing_of_the_failure_is_cached(
    gateway, keys, redis_url
):
    import redis

    from hoh.data.images import content_id
    from hoh.serving.gateway.cache import cache_key

    files = [("images", (f"{i}.png", png(80 + i), "image/png")) for i in range(2)]
    files.append(("images", ("bad.png", png(60)[:90], "image/png")))
    with gateway.client() as c:
        r = c.post("/v1/models/hoh/predict", files=files, headers=token(keys))
        again = c.post("/v1/models/hoh/predict", files=files, headers=token(keys))
        good = c.post("/v1/models/hoh/predict", files=files[:2], headers=token(keys))
    assert_error(r, 400, "invalid_image", "image 2: could not be decoded")
    assert_error(again, 400, "invalid_image", "image 2: could not be decoded")  # not replayed
    assert good.json()["cache_hit"] is False  # the failed request stored nothing, not even 0, 1
    client = redis.Redis.from_url(redis_url)
    bad_key = cache_key(content_id(files[2][1][1]), "hoh", "1")
    assert client.get(gateway.prefix + bad_key) is None
    client.close()


def test_a_client_that_disconnects_mid_body_leaves_the_gateway_healthy(gateway, keys, pki):
    host, port = "127.0.0.1", int(gateway.url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    head = (
        f"POST /v1/models/hoh/predict HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {keys.token(sub='leaver')}\r\nContent-Type: image/png\r\n"
        "Content-Length: 200000\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port)) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(head + png(8)[:500])
    with gateway.client() as c:
        ok = c.post(
            "/v1/models/hoh/predict",
            content=png(9),
            headers={**token(keys), "Content-Type": "image/png"},
        )
    assert ok.status_code == 200
    deadline = time.monotonic() + 30
    while True:
        records = [
            json.loads(line)
            for f in audit_files(gateway.audit_dir)
            for line in f.read_text().splitlines()
        ]
        left = [r for r in records if r.get("subject") == "leaver"]
        if left or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert left and left[0]["status"] == 499 and left[0]["reason"] == "client_disconnected"


def test_tls_12_only_clients_and_plain_http_are_refused(gateway, pki):
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.TransportError):
        with httpx.Client(base_url=gateway.url, verify=context) as c:
            c.get("/healthz")
    with pytest.raises(httpx.TransportError):
        with httpx.Client(base_url=gateway.url.replace("https", "http")) as c:
            c.get("/healthz")
    with gateway.client() as c:
        assert c.get("/healthz").status_code == 200


# ---------------------------------------------------------------------- audit, capture, logs


def test_audit_log_chain_records_and_no_secrets(gateway, keys):
    secret = keys.token(sub="auditee")
    image = png(11)
    with gateway.client() as c:
        c.post(
            "/v1/models/hoh/predict",
            content=image,
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "image/png"},
        )
        c.post(
            "/v1/models/hoh/predict",
            content=image,
            headers={"Authorization": f"Bearer {secret}x", "Content-Type": "image/png"},
        )
    deadline = time.monotonic() + 30
    while True:
        records = [
            json.loads(line)
            for f in audit_files(gateway.audit_dir)
            for line in f.read_text().splitlines()
        ]
        mine = [r for r in records if r.get("subject") == "auditee"]
        denied = [r for r in records if r.get("reason") == "bad_signature"]
        if (mine and denied) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    record = mine[0]
    assert record["outcome"] == "allowed" and record["status"] == 200
    assert record["route"] == "predict" and record["model"] == "hoh" and record["version"] == "1"
    assert record["client"] == "127.0.0.1" and record["latency_ms"] > 0
    from hoh.data.images import content_id

    assert record["images"] == [{"sha256": content_id(image), "bytes": len(image)}]
    assert denied and denied[-1]["outcome"] == "denied" and denied[-1]["status"] == 401
    assert verify(gateway.audit_dir).ok
    everything = b"".join(f.read_bytes() for f in audit_files(gateway.audit_dir))
    everything += gateway.log.read_bytes()
    assert secret.encode() not in everything and secret.split(".")[2].encode() not in everything
    assert image[20:60] not in everything


def test_captured_traffic_is_an_importable_image_folder(gateway, keys, tmp_path):
    from hoh.data.importer import import_images

    image = png(12)
    with gateway.client() as c:
        r = c.post(
            "/v1/models/hoh/predict",
            content=image,
            headers={**token(keys), "Content-Type": "image/png"},
        )
    assert r.status_code == 200
    deadline = time.monotonic() + 30
    while True:
        saved = [
            p
            for p in gateway.capture_dir.glob("date=*/*")
            if p.is_file() and p.read_bytes() == image
        ]
        if saved or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert saved and saved[0].suffix == ".png"
    results = [
        json.loads(line)
        for f in saved[0].parent.glob(".results/*.jsonl")
        for line in f.read_text().splitlines()
    ]
    mine = [x for x in results if x["image"] == saved[0].name]
    assert mine and mine[0]["class"] == r.json()["predictions"][0]["class"]
    assert mine[0]["model"] == "hoh" and mine[0]["version"] == "1"
    report = import_images(gateway.capture_dir, tmp_path / "pool", unlabeled=True)
    assert report.written >= 1 and report.rejected == []


def test_fed_back_labels_give_the_hand_computed_online_accuracy(gateway, keys):
    """predict -> POST /v1/feedback with two known errors -> `hoh monitor`'s online accuracy
    over the gateway's own captures is 4/6."""
    from datetime import datetime, timezone

    from hoh.components.monitor.accuracy import online_accuracy
    from hoh.components.monitor.window import read_window

    served = []
    with gateway.client() as c:
        for seed in range(300, 306):
            r = c.post(
                "/v1/models/hoh/predict",
                content=png(seed),
                headers={**token(keys), "Content-Type": "image/png"},
            )
            assert r.status_code == 200, r.text
            prediction = r.json()["predictions"][0]
            served.append((r.json()["request_id"], prediction))
        for n, (request_id, prediction) in enumerate(served):
            truth = prediction["class"]
            if n in (1, 4):  # two known errors: the truth is the other class
                truth = next(k for k in prediction["probabilities"] if k != truth)
            answer = c.post(
                "/v1/feedback",
                json={"request_id": request_id, "index": 0, "class": truth},
                headers=token(keys, scope="feedback"),
            )
            assert answer.status_code == 200, answer.text
        refused = c.post(
            "/v1/feedback", json={"request_id": served[0][0], "class": "x"}, headers=token(keys)
        )
        assert_error(refused, 403, "insufficient_scope")
    today = datetime.now(timezone.utc).date()
    mine = {request_id for request_id, _ in served}
    deadline = time.monotonic() + 30
    while True:  # the capture writer is a thread: wait for our six
        window = read_window(gateway.capture_dir, today, today, "1", "hoh")
        if mine <= {s.request_id for s in window.served} or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    result = online_accuracy(window, min_accuracy=0.8, min_labels=6)
    assert result["labels"] == 6 and result["correct"] == 4
    assert result["accuracy"] == pytest.approx(4 / 6) and result["accuracy_low"]


# ---------------------------------------------------------------------- other gateways


def test_mutual_tls_with_oidc_discovery(triton, pki, keys, tmp_path):
    oidc = OidcServer(keys)
    good = (pki["client_cert"], pki["client_key"])
    gw = None
    try:
        gw = start_gateway(
            tmp_path,
            [
                "--triton",
                triton.server.grpc_url,
                "--tls-cert",
                str(pki["cert"]),
                "--tls-key",
                str(pki["key"]),
                "--tls-client-ca",
                str(pki["ca"]),
                "--oidc-issuer",
                oidc.issuer,
                "--audience",
                AUDIENCE,
            ],
            ca=pki["ca"],
            client_cert=good,
        )
        headers = {
            "Authorization": f"Bearer {keys.token(issuer=oidc.issuer)}",
            "Content-Type": "image/png",
        }
        with gw.client(cert=good) as c:
            r = c.post("/v1/models/hoh/predict", content=png(20), headers=headers)
            wrong_iss = c.post(
                "/v1/models/hoh/predict",
                content=png(20),
                headers={**headers, "Authorization": f"Bearer {keys.token()}"},
            )
        assert r.status_code == 200, r.text
        assert_error(wrong_iss, 401, "wrong_issuer")
        assert oidc.jwks_requests >= 1
        for cert in (None, (pki["rogue_cert"], pki["rogue_key"])):
            with pytest.raises(httpx.TransportError):
                with gw.client(cert=cert) as c:
                    c.post("/v1/models/hoh/predict", content=png(20), headers=headers)
    finally:
        if gw is not None:
            gw.stop()
        oidc.close()


def _own_redis(port: int) -> services.Started:
    import shutil

    if shutil.which("redis-server") is None:
        services.unavailable("no redis-server on PATH to start (and kill) a Redis of our own")
    return services.start_server(services.redis_argv(port), port, "redis-server")


def test_redis_slow_or_killed_costs_no_request_and_caching_resumes(triton, tmp_path):
    port = services.free_port()
    redis_server = _own_redis(port)
    gw = None
    try:
        gw = start_gateway(
            tmp_path,
            [
                "--triton",
                triton.server.grpc_url,
                "--insecure-no-auth",
                "--host",
                "0.0.0.0",
                "--cache-url",
                f"redis://127.0.0.1:{port}/0",
            ],
            env={"HOH_GATEWAY_CACHE_RETRY_S": "0.2", "HOH_GATEWAY_CACHE_TIMEOUT_S": "0.2"},
        )
        headers = {"Content-Type": "image/png"}

        def ask(c, seed):
            r = c.post("/v1/models/hoh/predict", content=png(seed), headers=headers)
            assert r.status_code == 200, r.text
            return r.json()["cache_hit"]

        with gw.client() as c:
            assert [ask(c, 30), ask(c, 30)] == [False, True]
            os.kill(redis_server.process.pid, signal.SIGSTOP)  # slow: every call times out
            try:
                assert [ask(c, 31), ask(c, 31)] == [False, False]
                assert c.get("/readyz").json()["status"] == "degraded"
            finally:
                os.kill(redis_server.process.pid, signal.SIGCONT)
            statuses = []
            for i in range(20):
                if i == 5:
                    redis_server.process.kill()  # killed mid-run
                    redis_server.process.wait(10)
                statuses.append(
                    c.post(
                        "/v1/models/hoh/predict", content=png(40 + i % 3), headers=headers
                    ).status_code
                )
            assert statuses == [200] * 20
            ready = c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded"
            assert "redis" in ready.json()["cache"]
            metrics = c.get("/metrics").text
            assert 'hoh_gateway_cache_total{result="error"}' in metrics
            assert "hoh_gateway_cache_degraded 1.0" in metrics
            redis_server.stop()
            redis_server = _own_redis(port)  # back, same address: no gateway restart
            deadline = time.monotonic() + 30
            while c.get("/readyz").json()["status"] != "ready":
                assert time.monotonic() < deadline, "the cache did not come back"
                time.sleep(0.3)
            assert [ask(c, 32), ask(c, 32)] == [False, True]
        log = gw.log_text()
        assert "--insecure-no-auth" in log and "Uvicorn running on http://127.0.0.1:" in log
    finally:
        if gw is not None:
            gw.stop()
        redis_server.stop()


def test_triton_down_is_a_503_and_the_gateway_stays_up(tmp_path):
    gw = start_gateway(
        tmp_path,
        ["--triton", f"127.0.0.1:{services.free_port()}", "--insecure-no-auth"],
        env={"HOH_GATEWAY_TRITON_TIMEOUT_S": "3"},
    )
    try:
        with gw.client() as c:
            r = c.post(
                "/v1/models/hoh/predict", content=png(50), headers={"Content-Type": "image/png"}
            )
            assert_error(r, 503, "triton_unavailable", "not reachable")
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
            assert c.get("/healthz").status_code == 200
            assert c.get("/v1/models").json()["models"][0]["error"] == "Triton is not reachable"
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text()


# ---------------------------------------------------------------------- the README flow


def _hoh(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hoh.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_readme_flow_dev_token_predict_cli_and_a_new_version_is_never_served_stale(pki, tmp_path):
    """`hoh gateway dev-token` -> `hoh gateway` -> `hoh predict --gateway` with the token from a
    file and from HOH_TOKEN; then a new version goes live and the same bytes get its answer, not
    the cached one of the old version (the in-process LRU, the embedded default)."""
    repository = tmp_path / "repository"
    build_model_artifact_dir(tmp_path / "m1", class_names=CLASSES, seed=0)
    run_pusher_executor(tmp_path / "m1", repository, tmp_path / "pushed1", blessed=1)
    server = srv.TritonServer(
        repository,
        http_port=0,
        grpc_port=0,
        metrics_port=0,
        repository_poll_secs=1,
        log_file=tmp_path / "triton.log",
    )
    gw = None
    try:
        server.start()
        server.wait_ready(timeout=240)
        made = _hoh(
            "gateway",
            "dev-token",
            "--scopes",
            "predict,models:read",
            "--key-dir",
            str(tmp_path / "dev"),
        )
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        gw = start_gateway(
            tmp_path / "gw",
            [
                "--triton",
                server.grpc_url,
                "--tls-cert",
                str(pki["cert"]),
                "--tls-key",
                str(pki["key"]),
                "--jwks-file",
                str(tmp_path / "dev" / "jwks.json"),
                "--issuer",
                "hoh-dev",
            ],
            env={"HOH_GATEWAY_MODEL_INFO_TTL_S": "0.5"},
            ca=pki["ca"],
        )
        images = [tmp_path / "a.png", tmp_path / "b.png"]
        for i, path in enumerate(images):
            path.write_bytes(png(70 + i))
        reference = predict_in_process(
            tmp_path / "m1" / "Format-Serving", [p.read_bytes() for p in images]
        )

        via_file = _hoh(
            "predict",
            "--gateway",
            gw.url,
            "--token-file",
            str(token_file),
            "--ca-cert",
            str(pki["ca"]),
            "--json",
            *map(str, images),
        )
        assert via_file.returncode == 0, via_file.stderr
        rows = json.loads(via_file.stdout)
        got = [[r["probabilities"][c] for c in CLASSES] for r in rows]
        assert np.allclose(got, reference["probabilities"], atol=1e-5)
        assert [r["label"] for r in rows] == [x.decode() for x in reference["label"]]
        via_env = _hoh(
            "predict",
            "--gateway",
            gw.url,
            "--ca-cert",
            str(pki["ca"]),
            str(images[0]),
            env={"HOH_TOKEN": token},
        )
        assert via_env.returncode == 0 and rows[0]["label"] in via_env.stdout, via_env.stderr

        token_file.write_text(tampered(token, scope="admin") + "\n")
        refused = _hoh(
            "predict",
            "--gateway",
            gw.url,
            "--token-file",
            str(token_file),
            "--ca-cert",
            str(pki["ca"]),
            str(images[0]),
        )
        assert refused.returncode == 2, refused.stderr
        assert f"refused the token from --token-file {token_file}" in refused.stderr
        assert token.split(".")[2] not in refused.stderr + refused.stdout
        untrusted = _hoh("predict", "--gateway", gw.url, str(images[0]), env={"HOH_TOKEN": token})
        assert untrusted.returncode == 2 and "--ca-cert" in untrusted.stderr, untrusted.stderr

        headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}
        image = images[0].read_bytes()
        with gw.client() as c:
            before = c.post("/v1/models/hoh/predict", content=image, headers=headers).json()
            assert (before["version"], before["cache_hit"]) == ("1", True)  # cached by the CLI
            build_model_artifact_dir(tmp_path / "m2", class_names=CLASSES, seed=1)
            run_pusher_executor(tmp_path / "m2", repository, tmp_path / "pushed2", blessed=1)
            deadline = time.monotonic() + 120
            while "2" not in c.get("/v1/models", headers=headers).json()["models"][0]["versions"]:
                assert time.monotonic() < deadline, "version 2 did not go live"
                time.sleep(0.5)
            time.sleep(1.0)  # past the gateway's model-info TTL
            after = c.post("/v1/models/hoh/predict", content=image, headers=headers).json()
            again = c.post("/v1/models/hoh/predict", content=image, headers=headers).json()
        new = predict_in_process(tmp_path / "m2" / "Format-Serving", [image])
        assert (after["version"], after["cache_hit"]) == ("2", False)
        assert np.allclose(
            [after["predictions"][0]["probabilities"][c] for c in CLASSES],
            new["probabilities"][0],
            atol=1e-5,
        )
        assert not np.allclose(new["probabilities"][0], reference["probabilities"][0])
        assert (again["version"], again["cache_hit"]) == ("2", True)
    finally:
        if gw is not None:
            gw.stop()
        server.stop()
