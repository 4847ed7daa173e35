"""The gateway's pure pieces, without a server: tokens (each attack itself), rate limits, cache,
single flight, the audit chain (each kind of tampering), capture, bodies, error mapping and
settings. The real-server tests are in test_gateway_e2e.py."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import pytest
from gateway_support import (
    AUDIENCE,
    ISSUER,
    Keys,
    tampered,
    token_attacks,
)
from tiny_model import make_image

from hoh.data.images import content_id
from hoh.errors import UsageError
from hoh.serving.gateway import audit, auth, bodies, cache, capture, settings, tls
from hoh.serving.gateway.errors import ApiError
from hoh.serving.gateway.triton import map_triton_error, newest


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def verifier(keys: Keys, tmp_path: Path, **kw) -> auth.Verifier:
    jwks = keys.write_jwks(tmp_path / "jwks.json")
    cache_ = auth.JwksCache(auth.jwks_file_loader(str(jwks)), 3600, kw.pop("min_refetch", 30))
    return auth.Verifier(
        cache_,
        ISSUER,
        AUDIENCE,
        ["RS256", "ES256"],
        30,
        "scope",
        {
            "predict": ["predict"],
            "models:read": ["models:read"],
            "admin": ["admin", "predict", "models:read"],
        },
    )


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_valid_token_gives_its_subject_and_permissions(keys, tmp_path, alg):
    principal = run(verifier(keys, tmp_path).verify(keys.token(alg, scope="predict extra")))
    assert principal.subject == "alice"
    assert principal.permissions == frozenset({"predict"})
    principal.require("predict")
    with pytest.raises(auth.AuthError) as err:
        principal.require("models:read")
    assert err.value.status == 403 and err.value.reason == "insufficient_scope"


def _attacks(keys: Keys) -> dict[str, tuple[str, str]]:
    return {
        **token_attacks(keys),
        "issued in the future": (keys.token(iat_offset=600), "not_yet_valid"),
        "not before in the future": (keys.token(nbf=int(time.time()) + 600), "not_yet_valid"),
        "garbage": ("not.a.jwt", "malformed_token"),
        "RS256 header on the EC key": (
            keys.token("ES256").replace(
                keys.token("ES256").split(".")[0], keys.token("RS256", kid="ec-1").split(".")[0]
            ),
            "algorithm_not_allowed",
        ),
    }


@pytest.mark.parametrize("attack", list(_attacks(Keys()).keys()))
def test_every_bad_token_is_refused_with_its_reason(keys, tmp_path, attack):
    token, reason = _attacks(keys)[attack]
    with pytest.raises(auth.AuthError) as err:
        run(verifier(keys, tmp_path).verify(token))
    assert err.value.reason == reason and err.value.status == 401
    assert token not in err.value.message


def test_skew_is_tolerated_within_the_leeway(keys, tmp_path):
    principal = run(verifier(keys, tmp_path).verify(keys.token(exp_in=-10, iat_offset=10)))
    assert principal.subject == "alice"


def test_a_missing_sub_is_refused(keys, tmp_path):
    now = int(time.time())
    token = __import__("jwt").encode(
        {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60},
        keys.rsa,
        "RS256",
        headers={"kid": "rsa-1"},
    )
    with pytest.raises(auth.AuthError, match="sub"):
        run(verifier(keys, tmp_path).verify(token))


def test_an_unknown_kid_refetches_once_and_finds_a_rotated_key(keys, tmp_path):
    clock = [0.0]
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys.jwks()["keys"][:1]}))  # RSA only
    jwks = auth.JwksCache(auth.jwks_file_loader(str(path)), 3600, 30, clock=lambda: clock[0])
    v = auth.Verifier(jwks, ISSUER, AUDIENCE, ["RS256", "ES256"], 30, "scope", {})

    async def scenario():
        assert (await v.verify(keys.token("RS256"))).subject == "alice"
        assert jwks.fetches == 1
        keys.write_jwks(path)  # the issuer rotates in the EC key
        clock[0] = 5.0  # too soon after the last fetch: no refetch, refused
        with pytest.raises(auth.AuthError, match="not in the issuer"):
            await v.verify(keys.token("ES256"))
        for _ in range(20):  # a flood of unknown kids costs no fetch
            with pytest.raises(auth.AuthError):
                await v.verify(keys.token("RS256", kid="made-up"))
        assert jwks.fetches == 1
        clock[0] = 40.0
        assert (await v.verify(keys.token("ES256"))).subject == "alice"
        assert jwks.fetches == 2

    run(scenario())


def test_jwks_ignores_symmetric_keys_and_refuses_junk():
    keys = auth.parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}, "x")
    assert keys == {}
    with pytest.raises(UsageError, match="not a JWKS"):
        auth.parse_jwks({"nope": 1}, "x")


def test_oidc_issuer_must_be_https_except_on_loopback():
    auth.require_safe_url("https://login.example.com/realms/x", "issuer")
    auth.require_safe_url("http://127.0.0.1:8080", "issuer")
    with pytest.raises(UsageError, match="https"):
        auth.require_safe_url("http://login.example.com", "issuer")


def test_scopes_from_strings_lists_and_nested_claims():
    c = {"scope": "predict  models:read", "realm_access": {"roles": ["admin"]}, "scp": ["a"]}
    assert auth.claim_values(c, "scope") == ["predict", "models:read"]
    assert auth.claim_values(c, "realm_access.roles") == ["admin"]
    assert auth.claim_values(c, "scp") == ["a"]
    assert auth.claim_values(c, "missing.path") == []
    assert auth.permissions_for(["hoh.user", "x"], {"hoh.user": ["predict", "bogus"]}) == {
        "predict"
    }


@pytest.mark.parametrize(
    "header, reason",
    [
        (None, "missing_token"),
        ("Basic dXNlcjpwdw==", "malformed_header"),
        ("Bearer ", "malformed_header"),
    ],
)
def test_bearer_header_problems(header, reason):
    with pytest.raises(auth.AuthError) as err:
        auth.bearer_token(header)
    assert err.value.reason == reason
    assert "error=" not in auth.www_authenticate(err.value) or reason != "missing_token"


def test_rate_limit_allows_a_burst_then_says_when_to_retry():
    clock = [0.0]
    limiter = auth.RateLimiter(rate=2.0, burst=3, clock=lambda: clock[0])
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("a") == pytest.approx(0.5)
    assert limiter.check("b") == 0.0  # per subject
    clock[0] = 0.5
    assert limiter.check("a") == 0.0


def test_rate_limiter_memory_is_bounded():
    limiter = auth.RateLimiter(rate=1.0, burst=1, max_subjects=10)
    for i in range(100):
        limiter.check(f"s{i}")
    assert len(limiter._buckets) == 10


# ---------------------------------------------------------------------- cache


def test_cache_key_depends_on_bytes_model_version_and_preprocessing(monkeypatch):
    d = content_id(b"img")
    base = cache.cache_key(d, "hoh", "1")
    assert base == cache.cache_key(d, "hoh", "1") and len(base) == 64
    assert (
        len(
            {
                base,
                cache.cache_key(d, "hoh", "2"),
                cache.cache_key(d, "other", "1"),
                cache.cache_key(content_id(b"img2"), "hoh", "1"),
            }
        )
        == 4
    )
    assert cache.cache_key(d, "a", "11") != cache.cache_key(d, "a1", "1")
    monkeypatch.setattr(cache, "PREPROCESSING_VERSION", "raw-bytes-2")
    assert cache.cache_key(d, "hoh", "1") != base


def test_lru_evicts_the_oldest_and_expires():
    clock = [0.0]
    lru = cache.LruCache(2, ttl_s=10, clock=lambda: clock[0])

    async def scenario():
        await lru.set("a", b"1")
        await lru.set("b", b"2")
        assert await lru.get("a") == b"1"  # a is now the newest
        await lru.set("c", b"3")
        assert await lru.get("b") is None and await lru.get("a") == b"1"
        clock[0] = 11
        assert await lru.get("a") is None

    run(scenario())


def test_redis_down_is_a_miss_and_a_degraded_state_not_an_error():
    from services import free_port

    errors, clock = [], [0.0]
    port = free_port()  # nothing listens there

    async def scenario():
        redis_cache = cache.RedisCache(
            f"redis://127.0.0.1:{port}/0",
            60,
            0.2,
            5.0,
            "t:",
            on_error=errors.append,
            clock=lambda: clock[0],
        )
        assert await redis_cache.get("k") is None
        await redis_cache.set("k", b"v")  # inside the back-off: not even tried
        assert len(errors) == 1 and redis_cache.degraded.startswith("redis get failed")
        assert await redis_cache.ping() is not None  # /readyz always really asks
        await redis_cache.close()

    run(scenario())


def test_single_flight_shares_success_and_not_failure():
    async def scenario():
        flights = cache.SingleFlight()
        assert flights.lead("k") is None
        follower = flights.lead("k")
        assert follower is not None and len(flights) == 1
        flights.finish("k", {"class": "horse"})
        assert await follower == {"class": "horse"} and len(flights) == 0
        assert flights.lead("k") is None
        follower = flights.lead("k")
        flights.finish("k", None)
        assert await follower is None

    run(scenario())


# ---------------------------------------------------------------------- audit log


def write_log(directory: Path, n: int, **kw) -> None:
    log = audit.AuditLog(directory, **kw)
    for i in range(n):
        log.write(
            audit.record_for(
                request_id=f"r{i}",
                subject="alice",
                route="predict",
                status=200,
                outcome="allowed",
                images=[{"sha256": "ab" * 32, "bytes": 10}],
            )
        )
    log.close()


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_audit_chain_verifies_across_rotation_and_restart(tmp_path):
    write_log(tmp_path, 30, max_bytes=4096, anchor_every=10)
    write_log(tmp_path, 5, max_bytes=4096, anchor_every=10)  # a restart continues the chain
    files = audit.audit_files(tmp_path)
    assert len(files) >= 3
    result = audit.verify(tmp_path)
    assert result.ok, result.problem
    assert result.anchors >= 3
    records = [json.loads(line) for f in files for line in lines_of(f)]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert sum(r["kind"] == "decision" for r in records) == 35
    assert all(json.loads(lines_of(f)[0])["kind"] == "rotate" for f in files[1:])


def test_audit_record_has_no_room_for_secrets():
    with pytest.raises(ValueError, match="token"):
        audit.record_for(token="eyJ...")
    with pytest.raises(ValueError, match="image_bytes"):
        audit.record_for(image_bytes=b"...")


def _tamper_edit(f: Path):
    lines = lines_of(f)
    lines[4] = lines[4].replace(b'"status":200', b'"status":403')
    f.write_bytes(b"".join(lines))
    return f"{f.name}:5: edited"


def _tamper_reorder(f: Path):
    lines = lines_of(f)
    lines[3], lines[4] = lines[4], lines[3]
    f.write_bytes(b"".join(lines))
    return f"{f.name}:4: seq 5 where 4 was expected"


def _tamper_delete(f: Path):
    lines = lines_of(f)
    del lines[2]
    f.write_bytes(b"".join(lines))
    return f"{f.name}:3: seq 4 where 3 was expected (lines missing"


def _tamper_truncate(f: Path):
    f.write_bytes(f.read_bytes()[:-20])
    return "truncated line"


def _tamper_break_json(f: Path):
    lines = lines_of(f)
    lines[1] = b"{not json\n"
    f.write_bytes(b"".join(lines))
    return f"{f.name}:2: not an audit record"


@pytest.mark.parametrize(
    "tamper", [_tamper_edit, _tamper_reorder, _tamper_delete, _tamper_truncate, _tamper_break_json]
)
def test_audit_verify_names_the_first_tampered_line(tmp_path, tamper):
    write_log(tmp_path, 12)
    f = audit.audit_files(tmp_path)[0]
    expected = tamper(f)
    result = audit.verify(tmp_path)
    assert not result.ok and expected in result.problem, result.problem


def test_a_removed_middle_file_breaks_the_chain(tmp_path):
    write_log(tmp_path, 40, max_bytes=4096)
    files = audit.audit_files(tmp_path)
    files[1].unlink()
    result = audit.verify(tmp_path)
    assert not result.ok and files[2].name + ":1: seq" in result.problem


def test_hoh_audit_verify_command(tmp_path, capsys):
    from hoh.cli import main

    write_log(tmp_path, 3)
    assert main(["audit", "verify", str(tmp_path)]) == 0
    assert "OK, 3 lines" in capsys.readouterr().out
    _tamper_edit_first = lines_of(audit.audit_files(tmp_path)[0])
    f = audit.audit_files(tmp_path)[0]
    f.write_bytes(
        _tamper_edit_first[0].replace(b"alice", b"bob") + b"".join(_tamper_edit_first[1:])
    )
    assert main(["audit", "verify", str(tmp_path)]) == 1
    assert "audit-000001.jsonl:1: edited" in capsys.readouterr().err


# ---------------------------------------------------------------------- capture


def _capture(i: int, data: bytes) -> capture.Capture:
    from datetime import datetime, timezone

    return capture.Capture(
        "req",
        i,
        "hoh",
        "3",
        data,
        content_id(data),
        {"class": "horse", "probability": 0.9, "probabilities": {"horse": 0.9, "human": 0.1}},
        datetime(2026, 5, 1, 12, tzinfo=timezone.utc),
    )


def test_captures_are_an_image_folder_the_importer_and_drift_read(tmp_path):
    from hoh.data.layout import scan_source
    from hoh.data.sources import resolve_path

    capturer = capture.Capturer(tmp_path, rate=1.0, queue_size=8)
    images = [make_image(1, fmt="PNG"), make_image(2, fmt="JPEG")]
    for i, data in enumerate(images):
        assert capturer.offer(_capture(i, data))
    capturer.flush()
    capturer.close()
    day = tmp_path / "date=2026-05-01"
    assert sorted(p.name for p in day.iterdir() if p.is_file()) == ["req-0.png", "req-1.jpg"]
    results = [
        json.loads(line)
        for f in (day / ".results").glob("results-*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert [(r["image"], r["class"], r["version"]) for r in results] == [
        ("req-0.png", "horse", "3"),
        ("req-1.jpg", "horse", "3"),
    ]
    assert results[0]["sha256"] == content_id(images[0])
    scan = scan_source(tmp_path, unlabeled=True)
    assert len(scan.files) == 2 and scan.rejected == []
    records = list(resolve_path(tmp_path, ["train"], "capture"))
    assert sorted(r.data for r in records) == sorted(images)
    assert all(r.problem is None for r in records)


def test_a_full_capture_queue_drops_and_counts_without_blocking(tmp_path):
    events = []
    capturer = capture.Capturer(tmp_path, rate=1.0, queue_size=1, on_event=events.append)
    capturer.close()  # the writer is gone: nothing empties the queue any more
    # offer() would hang here if it waited for room (the test's timeout would fail it)
    results = [capturer.offer(_capture(i, make_image(i))) for i in range(50)]
    assert results == [True] + [False] * 49
    assert capturer.dropped == 49 and events == ["dropped"] * 49
    assert not (tmp_path / "date=2026-05-01").exists()


def test_capture_sampling_rate():
    import random

    capturer = capture.Capturer("/nonexistent", rate=0.25, queue_size=1, rng=random.Random(0))
    share = sum(capturer.sampled() for _ in range(4000)) / 4000
    capturer.close()
    assert 0.2 < share < 0.3


# ---------------------------------------------------------------------- bodies and errors


def test_raw_and_multipart_bodies():
    png, jpg = make_image(1), make_image(2, fmt="JPEG")
    assert run(bodies.images_from_body("image/png", png, 4)) == [png]
    boundary = "xYz"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
        f'filename="{i}.img"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for i, data in enumerate([png, jpg])
    )
    body = parts + f"--{boundary}--\r\n".encode()
    ctype = f"multipart/form-data; boundary={boundary}"
    assert run(bodies.images_from_body(ctype, body, 4)) == [png, jpg]
    with pytest.raises(ApiError) as err:
        run(bodies.images_from_body(ctype, body, 1))
    assert err.value.status == 413 and err.value.code == "too_many_images"


@pytest.mark.parametrize(
    "ctype, body, status, message",
    [
        ("image/png", b"", 400, "no image"),
        ("image/png", b"hello, not an image", 400, "image 0: not a PNG, JPEG, GIF or BMP"),
        ("text/plain", b"x", 415, "Content-Type 'text/plain' is not accepted"),
        ("", b"x", 415, "Content-Type '(none)'"),
        ("multipart/form-data", b"junk", 400, "multipart"),
    ],
)
def test_bad_bodies_get_clear_errors(ctype, body, status, message):
    with pytest.raises(ApiError) as err:
        run(bodies.images_from_body(ctype, body, 4))
    assert err.value.status == status and message in err.value.message


def test_body_size_is_capped_before_and_while_reading():
    with pytest.raises(ApiError, match="limit is 10 bytes"):
        bodies.check_declared_length("11", 10)
    bodies.check_declared_length("10", 10)

    async def chunks():
        for _ in range(100):
            yield b"x" * 4

    with pytest.raises(ApiError) as err:
        run(bodies.read_capped(chunks(), 10))
    assert err.value.status == 413


class _TritonError(Exception):
    def __init__(self, status, msg):
        self._status, self._msg = status, msg

    def status(self):
        return self._status

    def message(self):
        return self._msg


@pytest.mark.parametrize(
    "status, msg, code, http, text",
    [
        (
            "StatusCode.INVALID_ARGUMENT",
            "input 1: could not be decoded as an image: Invalid PNG",
            "invalid_image",
            400,
            "image 7: could not be decoded",
        ),
        (
            "StatusCode.INVALID_ARGUMENT",
            "request holds 9 images; the limit is 6",
            "request_too_large",
            413,
            "request holds 9",
        ),
        (
            "StatusCode.UNAVAILABLE",
            "failed to connect to all addresses",
            "triton_unavailable",
            503,
            "not reachable",
        ),
        (
            "StatusCode.NOT_FOUND",
            "Request for unknown model: 'x' is not found",
            "model_not_found",
            404,
            "not served",
        ),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", "triton_timeout", 504, "in time"),
        ("StatusCode.INTERNAL", "boom", "triton_error", 502, "boom"),
    ],
)
def test_triton_errors_map_to_client_errors(status, msg, code, http, text):
    err = map_triton_error(_TritonError(status, msg), "hoh", indices=[3, 7])
    assert (err.code, err.status) == (code, http) and text in err.message


def test_newest_version():
    assert newest(["1", "10", "9"]) == "10" and newest([]) == ""


# ---------------------------------------------------------------------- settings and TLS


def test_settings_layering_env_then_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "gateway:\n  port: 9000\n  cache_ttl_s: 5\n  jwks_file: j.json\n  issuer: hoh-dev\n"
    )
    env = {
        "HOH_GATEWAY_PORT": "9100",
        "HOH_GATEWAY_MODELS": "[a, b]",
        "HOH_GATEWAY_CACHE_PREFIX": "x:",
    }
    s = settings.load_settings(str(cfg), {"port": 9200, "host": None}, env)
    assert (s.port, s.cache_ttl_s, s.models, s.cache_prefix) == (9200, 5, ["a", "b"], "x:")
    s = settings.load_settings(str(cfg), {}, env)
    assert s.port == 9100


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"insecure_no_auth": False}, "no token issuer"),
        ({"jwks_file": "j.json"}, "needs --issuer"),
        (
            {"insecure_no_auth": True, "cache_url": "redis://:hunter2@127.0.0.1:6379/0"},
            "holds a password",
        ),
        ({"insecure_no_auth": True, "port": 70000}, "gateway.port"),
        ({"insecure_no_auth": True, "tls_cert": "a.pem"}, "go together"),
    ],
)
def test_bad_settings_are_refused_naming_the_problem(flags, message):
    with pytest.raises(UsageError, match=message):
        settings.load_settings(None, flags, {})


def test_insecure_mode_binds_loopback_whatever_the_host():
    s = settings.load_settings(None, {"insecure_no_auth": True, "host": "0.0.0.0"}, {})
    assert settings.bind_host(s) == "127.0.0.1"


def test_secrets_come_from_env_or_file(tmp_path):
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    assert settings.secret("X_PW", str(f), {}) == "s3cret"
    assert settings.secret("X_PW", str(f), {"X_PW": "env"}) == "env"
    assert settings.secret("X_PW", None, {}) is None


def test_tls_context_is_tls13_minimum_and_mtls_requires_certs(tmp_path):
    from gateway_support import issue, make_ca, write_pair

    ca = make_ca("test CA")
    cert, key = write_pair(tmp_path, "server", issue(ca, "localhost", server=True))
    ca_path, _ = write_pair(tmp_path, "ca", ca)
    ctx = tls.server_context(str(cert), str(key))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3 and ctx.verify_mode == ssl.CERT_NONE
    ctx = tls.server_context(str(cert), str(key), client_ca=str(ca_path))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(UsageError, match="does not exist"):
        tls.server_context(str(tmp_path / "nope.crt"), str(key))
    with pytest.raises(UsageError, match="cannot load the TLS certificate"):
        tls.server_context(str(ca_path), str(key))  # a key that is not the certificate's


def test_dev_token_passes_the_verifier(tmp_path):
    from hoh.serving.gateway.devtoken import DEV_ISSUER, dev_token

    token = dev_token(tmp_path, ["predict"], subject="me")
    jwks = auth.JwksCache(auth.jwks_file_loader(str(tmp_path / "jwks.json")), 3600, 30)
    v = auth.Verifier(
        jwks, DEV_ISSUER, "hoh-gateway", ["ES256"], 30, "scope", {"predict": ["predict"]}
    )
    principal = run(v.verify(token))
    assert principal.subject == "me" and principal.permissions == {"predict"}
    assert (tmp_path / "signing-key.pem").stat().st_mode & 0o077 == 0
    assert dev_token(tmp_path, ["x"]).split(".")[0] == token.split(".")[0]  # same key reused


def test_hoh_gateway_dev_token_command_prints_only_the_token(tmp_path, capsys):
    from hoh.cli import main

    assert (
        main(
            [
                "gateway",
                "dev-token",
                "--scopes",
                "predict models:read",
                "--subject",
                "cli",
                "--key-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    token = out.out.strip()
    assert "\n" not in token and str(tmp_path / "jwks.json") in out.err
    jwks = auth.JwksCache(auth.jwks_file_loader(str(tmp_path / "jwks.json")), 3600, 30)
    v = auth.Verifier(
        jwks,
        "hoh-dev",
        "hoh-gateway",
        ["ES256"],
        30,
        "scope",
        {"predict": ["predict"], "models:read": ["models:read"]},
    )
    assert run(v.verify(token)).permissions == {"predict", "models:read"}


# ---------------------------------------------------------------------- hoh predict --gateway


def test_the_predict_token_comes_from_a_file_or_the_environment(tmp_path):
    from hoh.serving.gateway.client import read_token

    f = tmp_path / "token"
    f.write_text("abc.def.ghi\n")
    assert read_token(str(f), {"HOH_TOKEN": "env.tok.en"}) == ("abc.def.ghi", f"--token-file {f}")
    assert read_token(None, {"HOH_TOKEN": " env.tok.en\n"}) == ("env.tok.en", "$HOH_TOKEN")
    for content, message in (
        ("a.b.c\nX-Evil: 1\n", "more than one line"),
        ("a.b c\n", "spaces or control"),
        ("\n", "no token"),
    ):
        f.write_text(content)
        with pytest.raises(UsageError, match=message) as raised:
            read_token(str(f), {})
        assert "a.b" not in str(raised.value)  # the value itself is never echoed
    with pytest.raises(UsageError, match="no token: set HOH_TOKEN"):
        read_token(None, {})
    with pytest.raises(UsageError, match="cannot read the token file"):
        read_token(str(tmp_path / "missing"), {})


def _body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


@pytest.mark.parametrize(
    "status, body, kind, text",
    [
        (
            401,
            _body("expired", "the token has expired"),
            "UsageError",
            "refused the token from $HOH_TOKEN: the token has expired",
        ),
        (403, _body("insufficient_scope", "needs 'predict'"), "UsageError", "needs 'predict'"),
        (400, _body("invalid_image", "image 1: not a PNG"), "InvalidImage", "b.png: not a PNG"),
        (404, _body("model_not_found", "model 'x'"), "ModelNotReady", "model 'x'"),
        (429, _body("rate_limited", "too many"), "RunFailed", "Retry-After 3 s"),
        (503, _body("triton_unavailable", "down"), "ServerUnavailable", "down"),
        (502, "<html>proxy</html>", "ServerUnavailable", "HTTP 502 without a hoh error body"),
    ],
)
def test_gateway_errors_become_the_clients_errors(status, body, kind, text):
    import httpx

    from hoh.serving.gateway.client import GatewayImageClient

    content = json.dumps(body) if isinstance(body, dict) else body
    response = httpx.Response(status, content=content.encode(), headers={"Retry-After": "3"})
    with GatewayImageClient("https://gw.test:8443", "t.o.k", "$HOH_TOKEN") as client:
        error = client._error(response, ["a.png", "b.png"])
    assert type(error).__name__ == kind and text in str(error), str(error)


@pytest.mark.parametrize(
    "url, message",
    [
        ("gw.test:8443", "expected https://HOST:PORT"),
        ("https://user:pw@gw.test", "credentials in the URL"),
    ],
)
def test_gateway_urls_are_checked(url, message):
    from hoh.serving.gateway.client import GatewayImageClient

    with pytest.raises(UsageError, match=message):
        GatewayImageClient(url, "t.o.k")


def test_predict_gateway_flags_go_together(tmp_path, capsys):
    from hoh.cli import main

    image = tmp_path / "a.png"
    image.write_bytes(make_image(1))
    assert main(["predict", "--token-file", "t", str(image)]) == 2
    assert "go with --gateway" in capsys.readouterr().err
    assert main(["predict", "--gateway", "https://gw.test", "--url", "x:8001", str(image)]) == 2
    assert "--url is Triton's address" in capsys.readouterr().err


def test_one_audit_writer_per_directory(tmp_path):
    first = audit.AuditLog(tmp_path)
    try:
        with pytest.raises(UsageError, match="in use by another gateway"):
            audit.AuditLog(tmp_path)
    finally:
        first.close()
    audit.AuditLog(tmp_path).close()  # released on close (and with the process)


@pytest.mark.parametrize(
    "setup, message",
    [
        (
            lambda d: ["--jwks-file", str(d / "missing.json"), "--issuer", "x"],
            "cannot read the JWKS file",
        ),
        (
            lambda d: (
                (d / "j.json").write_text('{"keys": []}')
                and ["--jwks-file", str(d / "j.json"), "--issuer", "x"]
            ),
            "no signing key for RS256, ES256",
        ),
    ],
)
def test_gateway_start_problems_are_one_line_not_a_traceback(tmp_path, capsys, setup, message):
    from hoh.cli import main

    args = setup(tmp_path)
    assert main(["gateway", "--port", "0", "--audit-dir", str(tmp_path / "a"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_second_gateway_on_the_same_audit_dir_is_refused_at_start(tmp_path, capsys):
    from hoh.cli import main

    held = audit.AuditLog(tmp_path / "a")
    try:
        assert (
            main(
                ["gateway", "--port", "0", "--insecure-no-auth", "--audit-dir", str(tmp_path / "a")]
            )
            == 2
        )
    finally:
        held.close()
    assert "in use by another gateway" in capsys.readouterr().err


def test_a_verified_token_is_remembered_briefly_and_only_that_exact_string(keys, tmp_path):
    now = [time.time()]
    v = verifier(keys, tmp_path)
    v = auth.Verifier(
        v.keys,
        ISSUER,
        AUDIENCE,
        ["RS256"],
        30,
        "scope",
        {"predict": ["predict"]},
        remember_s=60,
        clock=lambda: now[0],
    )
    token = keys.token(scope="predict")
    assert run(v.verify(token)).subject == "alice"

    class NoKeys:
        async def get(self, kid):
            return None

    v.keys = NoKeys()  # the issuer dropped the key: remembered tokens live out their window
    assert run(v.verify(token)).permissions == {"predict"}
    with pytest.raises(auth.AuthError) as refused:  # a changed byte is a new token
        run(v.verify(tampered(token, scope="predict admin")))
    assert refused.value.reason == "unknown_kid"
    now[0] += 61
    with pytest.raises(auth.AuthError, match="not in the issuer's JWKS"):
        run(v.verify(token))
    short = auth.Verifier(
        verifier(keys, tmp_path).keys,
        ISSUER,
        AUDIENCE,
        ["RS256"],
        0,
        "scope",
        {},
        remember_s=3600,
        clock=lambda: now[0],
    )
    token = keys.token(exp_in=5)
    run(short.verify(token))
    assert short._passed[token][0] <= time.time() + 5  # never past exp (+ leeway 0)
