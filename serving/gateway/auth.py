"""Bearer-token checks: signature against the issuer's JWKS, claims, and scopes -> permissions.

The algorithm is taken from an allow-list of asymmetric algorithms and the key type must match
it, because the classic JWT attacks ride on the token choosing how it is checked: `alg: none`
(no signature at all) and `HS256` signed with the issuer's *public* key used as an HMAC secret.
Neither can pass here: the header's `alg` must be in the list before any key is looked at, and
PyJWT gets exactly one algorithm and a key object of the matching type.

Every refusal carries a short machine reason (for the metric and the audit line) and a message
for the client; neither ever contains the token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional
from urllib.parse import urlsplit

import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from hoh.errors import UsageError

PERMISSIONS = ("predict", "models:read", "feedback", "admin")
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}


class AuthError(Exception):
    """The request is not authenticated (401) or not allowed (403)."""

    def __init__(self, reason: str, message: str, status: int = 401):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Principal:
    subject: str
    permissions: frozenset[str]
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def require(self, permission: str) -> None:
        if permission not in self.permissions and "admin" not in self.permissions:
            raise AuthError(
                "insufficient_scope", f"this needs the {permission!r} permission", status=403
            )


ANONYMOUS = Principal("anonymous", frozenset(PERMISSIONS))


def bearer_token(authorization: Optional[str]) -> str:
    """The token of an `Authorization: Bearer ...` header, or AuthError."""
    if not authorization:
        raise AuthError("missing_token", "no bearer token (send Authorization: Bearer <token>)")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("malformed_header", "the Authorization header must be 'Bearer <token>'")
    return token.strip()


def claim_values(claims: Mapping[str, Any], path: str) -> list[str]:
    """Scopes/roles under a dotted claim path; a string is split on spaces (OAuth2's `scope`)."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return []
        node = node[part]
    if isinstance(node, str):
        return node.split()
    if isinstance(node, (list, tuple)):
        return [str(v) for v in node]
    return []


def key_type_allowed(kty: str, algorithms: Iterable[str]) -> bool:
    return any(_KEY_TYPES.get(alg) == kty for alg in algorithms)


def permissions_for(scopes: Iterable[str], scope_map: Mapping[str, Iterable[str]]) -> frozenset:
    return frozenset(p for s in scopes for p in scope_map.get(s, ()) if p in PERMISSIONS)


def parse_jwks(document: Any, source: str) -> dict[str, Any]:
    """{kid: public key object} of the RSA and EC signing keys in a JWKS document.

    Symmetric (`oct`) keys are ignored: a JWKS is public, and an HMAC key in it would let anyone
    mint tokens.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise UsageError(f"{source} is not a JWKS document (no 'keys' list)")
    keys: dict[str, Any] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, Mapping) or jwk.get("use", "sig") != "sig":
            continue
        kty, kid = jwk.get("kty"), jwk.get("kid")
        if kty not in ("RSA", "EC") or not kid:
            continue
        try:
            loader = RSAAlgorithm if kty == "RSA" else ECAlgorithm
            keys[str(kid)] = (kty, loader.from_jwk(json.dumps(dict(jwk))))
        except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
            raise UsageError(f"{source}: key {kid!r} is not a valid {kty} JWK: {exc}") from None
    return keys


def require_safe_url(url: str, what: str) -> None:
    """https, or plain http to a loopback address (a local IdP or a test server) only."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme == "http" and loopback:
        return
    raise UsageError(f"{what} {url!r} must be https:// (plain http only on a loopback address)")


class JwksCache:
    """Signing keys by `kid`, reloaded every `refresh_s` and on an unknown `kid` at most once
    per `min_refetch_s` (so a flood of tokens with made-up kids cannot hammer the issuer)."""

    def __init__(
        self,
        load: Callable[[], Any],
        refresh_s: float,
        min_refetch_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._load = load  # async () -> {kid: (kty, key)}
        self.refresh_s = refresh_s
        self.min_refetch_s = min_refetch_s
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._loaded_at: Optional[float] = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def _reload(self) -> None:
        self._keys = await self._load()
        self._loaded_at = self._clock()
        self.fetches += 1

    async def get(self, kid: str) -> Optional[tuple[str, Any]]:
        now = self._clock()
        if self._loaded_at is None or now - self._loaded_at >= self.refresh_s:
            async with self._lock:
                if self._loaded_at is None or self._clock() - self._loaded_at >= self.refresh_s:
                    await self._reload()
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            if kid not in self._keys and self._clock() - self._loaded_at >= self.min_refetch_s:
                await self._reload()
        return self._keys.get(kid)


def jwks_file_loader(path: str):
    async def load():
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the JWKS file {path}: {exc}") from None
        return parse_jwks(document, f"JWKS file {path}")

    return load


def oidc_loader(issuer: str, timeout: float = 5.0):
    """Keys from the issuer's discovery document -> jwks_uri (both fetched on every load)."""
    import httpx

    require_safe_url(issuer, "OIDC issuer")
    discovery = issuer.rstrip("/") + "/.well-known/openid-configuration"

    async def load():
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            try:
                doc = (await client.get(discovery)).raise_for_status().json()
                if doc.get("issuer", "").rstrip("/") != issuer.rstrip("/"):
                    raise UsageError(
                        f"{discovery} names issuer {doc.get('issuer')!r}, not {issuer!r}"
                    )
                jwks_uri = str(doc.get("jwks_uri") or "")
                require_safe_url(jwks_uri, "jwks_uri")
                jwks = (await client.get(jwks_uri)).raise_for_status().json()
            except (httpx.HTTPError, ValueError) as exc:
                raise UsageError(f"cannot read the OIDC keys of {issuer}: {exc}") from None
        return parse_jwks(jwks, jwks_uri)

    return load


_ERRORS = (  # most specific first: PyJWT's exception classes inherit from each other
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not valid yet (nbf/iat)"),
    (jwt.InvalidAudienceError, "wrong_audience", "the token is for another audience"),
    (jwt.InvalidIssuerError, "wrong_issuer", "the token is from another issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim", None),
    (jwt.InvalidSignatureError, "bad_signature", "the token's signature does not verify"),
    (jwt.DecodeError, "malformed_token", "the token is not a well-formed JWT"),
    (jwt.InvalidTokenError, "invalid_token", "the token is invalid"),
)


class Verifier:
    """Checks tokens; a token that passed is remembered for `remember_s` (never past its `exp`
    plus the leeway), because clients send the same token for many requests and the signature
    check is the largest CPU cost of a cached answer. Only the exact same string is a hit: a
    changed byte is a different token and goes through every check."""

    def __init__(
        self,
        keys: JwksCache,
        issuer: str,
        audience: str,
        algorithms: Iterable[str],
        leeway_s: float,
        scope_claim: str,
        scope_map: Mapping[str, Iterable[str]],
        remember_s: float = 0.0,
        remember_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ):
        from collections import OrderedDict

        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = tuple(a for a in algorithms if a in _KEY_TYPES)
        self.leeway_s = leeway_s
        self.scope_claim = scope_claim
        self.scope_map = scope_map
        self.remember_s, self.remember_entries, self._clock = remember_s, remember_entries, clock
        self._passed: OrderedDict[str, tuple[float, Principal]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        remembered = self._passed.get(token)
        if remembered is not None:
            if self._clock() < remembered[0]:
                self._passed.move_to_end(token)
                return remembered[1]
            del self._passed[token]
        principal = await self._verify(token)
        if self.remember_s > 0:
            until = min(
                float(principal.claims["exp"]) + self.leeway_s, self._clock() + self.remember_s
            )
            self._passed[token] = (until, principal)
            while len(self._passed) > self.remember_entries:
                self._passed.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError("malformed_token", "the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise AuthError(
                "algorithm_not_allowed",
                f"token algorithm {str(alg)[:16]!r} is not accepted; use one of "
                f"{', '.join(self.algorithms)}",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthError("missing_kid", "the token header has no 'kid'")
        found = await self.keys.get(kid)
        if found is None:
            raise AuthError("unknown_kid", "the token's signing key is not in the issuer's JWKS")
        kty, key = found
        if kty != _KEY_TYPES[alg]:
            raise AuthError("algorithm_not_allowed", f"{alg} does not go with a {kty} key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub"], "verify_iat": True},
            )
        except jwt.InvalidTokenError as exc:
            for kind, reason, message in _ERRORS:
                if isinstance(exc, kind):
                    raise AuthError(reason, message or str(exc)) from None
            raise AuthError("invalid_token", "the token is invalid") from None
        scopes = claim_values(claims, self.scope_claim)
        return Principal(str(claims["sub"]), permissions_for(scopes, self.scope_map), claims)


class RateLimiter:
    """Token bucket per subject: `rate` per second, up to `burst` at once.

    Remembers at most `max_subjects` buckets (least recently used dropped: a dropped subject
    simply starts with a full bucket), so made-up subjects cannot grow memory without bound.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_subjects: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        from collections import OrderedDict

        self.rate, self.burst, self.max_subjects = rate, burst, max_subjects
        self._clock = clock
        self._buckets: "OrderedDict[str, tuple[float, float]]" = OrderedDict()

    def check(self, subject: str) -> float:
        """0 when allowed (one token taken), else the seconds to wait before retrying."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, then = self._buckets.pop(subject, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        self._buckets[subject] = (tokens - 1.0 if wait == 0 else tokens, now)
        while len(self._buckets) > self.max_subjects:
            self._buckets.popitem(last=False)
        return wait


def www_authenticate(error: AuthError) -> str:
    code = "insufficient_scope" if error.status == 403 else "invalid_token"
    if error.reason == "missing_token":
        return 'Bearer realm="hoh"'
    description = error.message.replace('"', "'")
    return f'Bearer realm="hoh", error="{code}", error_description="{description}"'
