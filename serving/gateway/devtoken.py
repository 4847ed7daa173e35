"""`hoh gateway dev-token`: a local signing key, its JWKS, and tokens signed with it.

For trying the gateway on one machine without an identity provider: the key stays in a
private directory (0700, key file 0600), the gateway is pointed at the JWKS beside it
(`--jwks-file DIR/jwks.json --issuer hoh-dev`), and the tokens are real ES256 JWTs that go
through exactly the checks a production token does.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

DEV_ISSUER = "hoh-dev"
KEY_FILE = "signing-key.pem"
JWKS_FILE = "jwks.json"


def default_key_dir() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "hoh" / "gateway-dev"


def ensure_key(key_dir: str | os.PathLike) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The directory's ES256 key (created on first use) and its kid; writes jwks.json."""
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = key_dir / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    kid = hashlib.sha256(json.dumps(jwk, sort_keys=True).encode()).hexdigest()[:16]
    jwk.update({"kid": kid, "use": "sig", "alg": "ES256"})
    (key_dir / JWKS_FILE).write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    return key, kid


def dev_token(
    key_dir: str | os.PathLike,
    scopes: Iterable[str],
    subject: str = "dev",
    audience: str = "hoh-gateway",
    ttl_s: int = 3600,
) -> str:
    key, kid = ensure_key(key_dir)
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes),
    }
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
