"""`hoh gateway`: the one public endpoint in front of Triton (docs/GATEWAY.md).

Triton has no authentication and its ports stay on loopback or inside the cluster; this ASGI
service adds what a public edge needs (TLS 1.3, OIDC bearer tokens, per-subject rate limits, a
result cache, a hash-chained audit log, Prometheus metrics, sampled traffic capture) and nothing
that changes the model's answers. Each concern is a small module with pure logic tested without
a server; `app.py` only wires them to HTTP.
"""
