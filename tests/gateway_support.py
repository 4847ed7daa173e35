"""Keys, tokens, certificates and a JWKS/OIDC server for the gateway tests (made on the fly)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://idp.test"
AUDIENCE = "hoh-gateway"


class Keys:
    """An RSA and an EC signing key with their JWKS."""

    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict:
        r = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        e = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        r.update(kid="rsa-1", use="sig", alg="RS256")
        e.update(kid="ec-1", use="sig", alg="ES256")
        return {"keys": [r, e]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def token(
        self,
        alg: str = "RS256",
        kid: str | None = None,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        scope: str = "predict models:read",
        sub: str = "alice",
        exp_in: int = 300,
        iat_offset: int = 0,
        **extra,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer,
            "aud": audience,
            "sub": sub,
            "iat": now + iat_offset,
            "exp": now + exp_in,
            "scope": scope,
            **extra,
        }
        key = self.rsa if alg == "RS256" else self.ec
        return jwt.encode(
            claims,
            key,
            algorithm=alg,
            headers={"kid": kid or ("rsa-1" if alg == "RS256" else "ec-1")},
        )

    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claims: dict, kid: str = "rsa-1") -> str:
    """`alg: none`: no signature at all."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def hs256_with_public_key(claims: dict, public_pem: bytes, kid: str = "rsa-1") -> str:
    """The key-confusion attack: HMAC-SHA256 keyed with the issuer's public key (PEM)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(sig)}"


def tampered(token: str, **changes) -> str:
    """The same signature over a changed payload (e.g. more scopes)."""
    header, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return f"{header}.{_b64(json.dumps(claims).encode())}.{sig}"


def claims(**over) -> dict:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "mallory",
        "iat": now,
        "exp": now + 300,
        "scope": "admin predict",
        **over,
    }


def token_attacks(keys: Keys) -> dict[str, tuple[str, str]]:
    """The bad tokens issue 13 lists, each with the refusal reason it must get (401)."""
    return {
        "expired": (keys.token(exp_in=-120), "expired"),
        "wrong audience": (keys.token(audience="someone-else"), "wrong_audience"),
        "wrong issuer": (keys.token(issuer="https://evil.test"), "wrong_issuer"),
        "alg none": (unsigned_token(claims()), "algorithm_not_allowed"),
        "HS256 with the public key": (
            hs256_with_public_key(claims(), keys.public_pem()),
            "algorithm_not_allowed",
        ),
        "unknown kid": (keys.token(kid="rotated-away"), "unknown_kid"),
        "tampered payload": (
            tampered(keys.token(scope="models:read"), scope="admin predict"),
            "bad_signature",
        ),
    }


# ---------------------------------------------------------------------- certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca, cn: str, server: bool):
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if server:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def write_pair(directory: Path, name: str, pair) -> tuple[Path, Path]:
    key, cert = pair
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# ---------------------------------------------------------------------- a local OIDC issuer


class OidcServer:
    """Discovery document + JWKS on 127.0.0.1 (plain http: allowed on loopback only)."""

    def __init__(self, keys: Keys):
        self.keys = keys
        self.jwks_requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": outer.issuer, "jwks_uri": f"{outer.issuer}/jwks"}
                elif self.path == "/jwks":
                    outer.jwks_requests += 1
                    body = outer.keys.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
