"""The gateway's Prometheus metrics, in a registry of its own (one per app: tests run several).

The registry also carries the process collector (`process_cpu_seconds_total`,
`process_resident_memory_bytes`, ...): a registry of its own would otherwise lose them, and the
Grafana dashboard (deploy/grafana/) shows the gateway's CPU and memory beside Triton's.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter(
            "hoh_gateway_requests",
            "Requests by route, model and status.",
            ["route", "model", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "hoh_gateway_request_seconds",
            "Time in the gateway, total.",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.triton_latency = Histogram(
            "hoh_gateway_triton_seconds",
            "Time of the Triton call of a request.",
            ["model"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.cache = Counter(
            "hoh_gateway_cache",
            "Result cache lookups by result (hit, miss, error).",
            ["result"],
            registry=r,
        )
        self.cache_degraded = Gauge(
            "hoh_gateway_cache_degraded", "1 while the cache backend fails.", registry=r
        )
        self.auth_failures = Counter(
            "hoh_gateway_auth_failures", "Refused tokens by reason.", ["reason"], registry=r
        )
        self.rate_limited = Counter(
            "hoh_gateway_rate_limited", "Requests answered 429.", registry=r
        )
        self.in_flight = Gauge("hoh_gateway_in_flight", "Requests being handled.", registry=r)
        self.captures = Counter(
            "hoh_gateway_captures",
            "Traffic captures by result (written, dropped, error).",
            ["result"],
            registry=r,
        )
