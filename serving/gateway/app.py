"""The ASGI application: routes, and the order of checks every request goes through.

Order: request id -> token (401) -> permission (403) -> per-subject rate limit (429) -> the
route. Every decision, allowed or denied, becomes one audit line and one metric sample; errors
are JSON bodies `{"error": {"code", "message"}, "request_id"}` and never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from hoh.config import GatewayConfig
from hoh.data.images import content_id
from hoh.serving.client import ClassNamesMissing, plan_requests, predictions_from_outputs
from hoh.serving.gateway import auth, bodies
from hoh.serving.gateway import cache as cache_mod
from hoh.serving.gateway.audit import AuditLog, record_for
from hoh.serving.gateway.capture import Capture, Capturer
from hoh.serving.gateway.errors import ApiError
from hoh.serving.gateway.feedback import FeedbackError, FeedbackStore, parse_label
from hoh.serving.gateway.metrics import GatewayMetrics
from hoh.serving.gateway.settings import CACHE_PASSWORD_ENV, secret
from hoh.serving.gateway.triton import ServedModel, TritonBackend

log = logging.getLogger("hoh.gateway")
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection"
FEEDBACK_MAX_BYTES = 4096  # one label; anything longer is not one


@dataclass
class Outcome:
    """What a route reports for the audit line, besides its JSON body."""

    request_id: str = ""
    model: Optional[str] = None
    version: Optional[str] = None
    cache_hit: Optional[bool] = None
    images: list = field(default_factory=list)


async def _each(calls: list) -> list:
    """Await `calls` together; the common single call without gather's extra task."""
    if len(calls) == 1:
        return [await calls[0]]
    return list(await asyncio.gather(*calls))


class Gateway:
    """The parts a running app holds; built at startup, inside the event loop."""

    def __init__(self, settings: GatewayConfig, metrics: GatewayMetrics):
        self.settings = settings
        self.metrics = metrics
        self.flights = cache_mod.SingleFlight()
        self.limiter = auth.RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.backend: Optional[TritonBackend] = None
        self.cache: Any = None
        self.verifier: Optional[auth.Verifier] = None
        self.audit: Optional[AuditLog] = None
        self.capturer: Optional[Capturer] = None
        self.feedback: Optional[FeedbackStore] = None

    async def start(self) -> None:
        s = self.settings
        self.backend = TritonBackend(s.triton_url, s.triton_timeout_s, s.model_info_ttl_s)
        if s.cache_url:
            self.cache = cache_mod.RedisCache(
                s.cache_url,
                s.cache_ttl_s,
                s.cache_timeout_s,
                s.cache_retry_s,
                s.cache_prefix,
                password=secret(CACHE_PASSWORD_ENV, s.cache_password_file),
                on_error=lambda _: self.metrics.cache.labels("error").inc(),
            )
        else:
            self.cache = cache_mod.LruCache(s.cache_lru_entries, s.cache_ttl_s)
        if not s.insecure_no_auth:
            load = (
                auth.jwks_file_loader(s.jwks_file)
                if s.jwks_file
                else auth.oidc_loader(s.oidc_issuer)
            )
            keys = auth.JwksCache(load, s.jwks_refresh_s, s.jwks_min_refetch_s)
            self.verifier = auth.Verifier(
                keys,
                s.issuer or s.oidc_issuer,
                s.audience,
                s.algorithms,
                s.leeway_s,
                s.scope_claim,
                s.scope_map,
                remember_s=s.token_cache_s,
            )
            await keys.get("")  # load now: a wrong issuer or file fails the start, not a request
        if s.audit_dir:
            self.audit = AuditLog(
                s.audit_dir, s.audit_fsync_batch, s.audit_anchor_every, s.audit_max_bytes
            )
        if s.capture_dir:
            self.feedback = FeedbackStore(s.capture_dir)
        if s.capture_dir and s.capture_rate > 0:
            self.capturer = Capturer(
                s.capture_dir,
                s.capture_rate,
                s.capture_queue,
                on_event=lambda e: self.metrics.captures.labels(e).inc(),
            )

    async def stop(self) -> None:
        if self.backend is not None:
            await self.backend.close()
        if self.cache is not None:
            await self.cache.close()
        if self.capturer is not None:
            self.capturer.close()
        if self.audit is not None:
            self.audit.close()

    # ---- checks every request goes through
    async def principal(self, request: Request) -> auth.Principal:
        if self.verifier is None:
            return auth.ANONYMOUS
        token = auth.bearer_token(request.headers.get("authorization"))
        return await self.verifier.verify(token)

    async def authorize(self, request: Request, permission: Optional[str]) -> auth.Principal:
        try:
            principal = await self.principal(request)
            if permission:
                principal.require(permission)
        except auth.AuthError as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            raise ApiError(
                exc.status,
                exc.reason,
                exc.message,
                {"WWW-Authenticate": auth.www_authenticate(exc)},
            ) from None
        wait = self.limiter.check(principal.subject)
        if wait > 0:
            self.metrics.rate_limited.inc()
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests; retry in {wait:.1f} s",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return principal

    async def handle(
        self,
        request: Request,
        route: str,
        permission: Optional[str],
        run: Callable[[Outcome], Awaitable[Any]],
    ) -> Response:
        request_id = uuid.uuid4().hex
        start = time.perf_counter()
        outcome, subject, reason = Outcome(request_id), None, None
        self.metrics.in_flight.inc()
        try:
            principal = await self.authorize(request, permission)
            subject = principal.subject
            body = await run(outcome)
            response: Response = (
                body
                if isinstance(body, Response)
                else JSONResponse({"request_id": request_id, **body})
            )
        except ApiError as exc:
            reason = exc.code
            response = JSONResponse(exc.body(request_id), exc.status, headers=exc.headers)
        except ClientDisconnect:
            reason = "client_disconnected"
            response = Response(status_code=CLIENT_CLOSED)
        except Exception as exc:  # noqa: BLE001 - the client gets a clean 500, the log the type
            reason = "internal_error"
            log.error("request %s on %s failed: %s", request_id, route, type(exc).__name__)
            response = JSONResponse(
                ApiError(500, "internal_error", "internal error; see the gateway log").body(
                    request_id
                ),
                500,
            )
        finally:
            self.metrics.in_flight.dec()
        response.headers["X-Request-ID"] = request_id
        elapsed = time.perf_counter() - start
        status = response.status_code
        self.metrics.requests.labels(route, outcome.model or "", str(status)).inc()
        self.metrics.latency.labels(route).observe(elapsed)
        if self.audit is not None:
            self.audit.write(
                record_for(
                    time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    request_id=request_id,
                    subject=subject,
                    client=request.client.host if request.client else None,
                    route=route,
                    model=outcome.model,
                    version=outcome.version,
                    outcome="allowed" if status < 400 else "denied",
                    reason=reason,
                    status=status,
                    latency_ms=round(elapsed * 1000, 3),
                    cache_hit=outcome.cache_hit,
                    images=outcome.images,
                )
            )
        return response

    # ---- predict
    async def _triton(self, served: ServedModel, images: list[bytes], indices: list[int]):
        """Predictions (as response dicts) for `images`, in as many Triton requests as the
        model's limits need, all sent at once."""
        info = served.info
        chunks = plan_requests(
            [len(x) for x in images], info.images_per_request, info.max_request_bytes
        )
        start = time.perf_counter()
        parts = await _each(
            [self.backend.infer(served.name, served.version, images[c], indices[c]) for c in chunks]
        )
        self.metrics.triton_latency.labels(served.name).observe(time.perf_counter() - start)
        out = []
        for probabilities, labels, version in parts:
            names = await self._names(served, version, int(probabilities.shape[-1]))
            for p in predictions_from_outputs(probabilities, labels, names, version):
                out.append(
                    {
                        "class": p.label,
                        "probability": p.probability,
                        "probabilities": p.probabilities,
                    }
                )
        return out

    async def _names(self, served: ServedModel, version: str, width: int) -> tuple[str, ...]:
        """The class names of the version that answered: read the config again once when it
        does not name it (pushed since), then a 502 rather than another version's names."""
        try:
            return served.info.names_for(version, width)
        except ClassNamesMissing:
            fresh = await self.backend.served(served.name, served.version, refresh=True)
        try:
            return fresh.info.names_for(version, width)
        except ClassNamesMissing as exc:
            raise ApiError(502, "class_names_missing", str(exc)) from None

    async def _classify(self, served: ServedModel, images: list[bytes], digests: list[str]):
        keys = [cache_mod.cache_key(d, served.name, served.version) for d in digests]
        stored = await _each([self.cache.get(k) for k in keys])
        results: list[Optional[dict]] = [cache_mod.decode(v) for v in stored]
        hits = [r is not None for r in results]
        for hit, raw in zip(hits, stored):
            if hit or raw is None:
                self.metrics.cache.labels("hit" if hit else "miss").inc()
        lead, follow = [], []
        for i in (i for i, r in enumerate(results) if r is None):
            future = self.flights.lead(keys[i])
            (lead.append(i) if future is None else follow.append((i, future)))
        try:
            if lead:
                fresh = await self._triton(served, [images[i] for i in lead], lead)
                for i, value in zip(lead, fresh):
                    results[i] = value
                await _each([self.cache.set(keys[i], cache_mod.encode(results[i])) for i in lead])
        finally:
            for i in lead:
                self.flights.finish(keys[i], results[i])
        alone = []
        for i, future in follow:
            results[i] = await future
            if results[i] is None:  # the leader failed: maybe for another image of its own
                alone.append(i)
        if alone:
            for i, value in zip(
                alone, await self._triton(served, [images[i] for i in alone], alone)
            ):
                results[i] = value
        return results, hits

    async def predict(self, request: Request, model: str, version: str, outcome: Outcome):
        s = self.settings
        outcome.model = model
        if model not in s.models:
            raise ApiError(
                404,
                "model_not_found",
                f"model {model!r} is not served here; models: {', '.join(s.models)}",
            )
        if version and not version.isdigit():
            raise ApiError(400, "bad_version", f"version {version[:20]!r} must be a number")
        bodies.check_declared_length(request.headers.get("content-length"), s.max_body_bytes)
        body = await bodies.read_capped(request.stream(), s.max_body_bytes)
        images = await bodies.images_from_body(
            request.headers.get("content-type", ""), body, s.max_images
        )
        # the example id an import gives these bytes: captures and feedback join training data
        digests = [content_id(x) for x in images]
        outcome.images = [{"sha256": d, "bytes": len(x)} for d, x in zip(digests, images)]
        served = await self.backend.served(model, version)
        outcome.version = served.version
        try:
            results, hits = await self._classify(served, images, digests)
        except ApiError as exc:
            if version or exc.code != "model_not_found":
                raise
            served = await self.backend.served(model, "", refresh=True)  # a newer version
            outcome.version = served.version
            results, hits = await self._classify(served, images, digests)
        outcome.cache_hit = all(hits)
        self._capture(outcome.request_id, served, images, digests, results)
        return {
            "model": model,
            "version": served.version,
            "cache_hit": all(hits),
            "predictions": [
                {**r, "cache_hit": h, "sha256": d} for r, h, d in zip(results, hits, digests)
            ],
        }

    def _capture(self, request_id, served, images, digests, results) -> None:
        if self.capturer is None:
            return
        now = datetime.now(timezone.utc)
        for i, (data, digest, result) in enumerate(zip(images, digests, results)):
            if self.capturer.sampled():
                self.capturer.offer(
                    Capture(request_id, i, served.name, served.version, data, digest, result, now)
                )

    async def record_feedback(self, request: Request, outcome: Outcome):
        """Keep one true class for a served image (serving/gateway/feedback.py)."""
        if self.feedback is None:
            raise ApiError(
                404,
                "feedback_disabled",
                "feedback is kept beside the captures: start the gateway with --capture-dir",
            )
        limit = FEEDBACK_MAX_BYTES
        bodies.check_declared_length(request.headers.get("content-length"), limit)
        body = await bodies.read_capped(request.stream(), limit)
        try:
            label = parse_label(json.loads(body or b"null"))
        except ValueError as exc:  # FeedbackError, or JSON that does not parse
            what = str(exc) if isinstance(exc, FeedbackError) else f"not JSON: {exc}"
            raise ApiError(400, "bad_feedback", what[:300]) from None
        await asyncio.to_thread(self.feedback.append, label, outcome.request_id)
        return {"stored": label}

    async def models(self):
        out = []
        for name in self.settings.models:
            try:
                served = await self.backend.served(name)
                out.append(
                    {
                        "name": name,
                        "versions": list(served.versions),
                        "version": served.version,
                        "classes": list(dict(served.info.versions).get(served.version, ()))
                        or list(served.info.class_names),
                        "classes_by_version": {v: list(names) for v, names in served.info.versions},
                    }
                )
            except ApiError as exc:
                out.append({"name": name, "versions": [], "error": exc.message})
        return {"models": out}

    async def readiness(self) -> Response:
        triton = await self.backend.ready()
        cache = await self.cache.ping()
        self.metrics.cache_degraded.set(1 if cache else 0)
        body = {
            "status": "not_ready" if triton else ("degraded" if cache else "ready"),
            "triton": triton or "ready",
            "cache": cache or f"{self.cache.name}: ok",
        }
        return JSONResponse(body, 503 if triton else 200)


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
        },
    }
}


def create_app(settings: GatewayConfig) -> FastAPI:
    metrics = GatewayMetrics()
    gateway = Gateway(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="hoh gateway",
        version="1",
        lifespan=lifespan,
        description="Authenticated image classification in front of Triton.",
    )
    app.state.gateway = gateway

    @app.post("/v1/models/{model}/predict", openapi_extra=_PREDICT_BODY)
    async def predict(request: Request, model: str, version: str = ""):
        """Classify one image (raw body) or several (multipart, one file per image)."""
        return await gateway.handle(
            request, "predict", "predict", lambda o: gateway.predict(request, model, version, o)
        )

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        """The true class of an image the gateway served: {"request_id", "index", "class"}."""
        return await gateway.handle(
            request, "feedback", "feedback", lambda o: gateway.record_feedback(request, o)
        )

    @app.get("/v1/models")
    async def models(request: Request):
        """Exposed models with their ready versions and class names."""
        return await gateway.handle(request, "models", "models:read", lambda o: gateway.models())

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        return await gateway.readiness()

    @app.get("/metrics")
    async def metrics_route(request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def run(_):
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

        return await gateway.handle(request, "metrics", settings.metrics_permission, run)

    return app
