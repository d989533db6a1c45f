"""The server's Prometheus metrics and its ASGI guard (API key, body size, counts by status)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from erank_fast.server.schema import error_response


@dataclass(frozen=True)
class ServerLimits:
    max_documents: int = 1000
    max_request_bytes: int = 8 * 2**20
    api_key: str | None = None


class ServerMetrics:
    """Prometheus metrics of one server (its own registry, so servers never share counters)."""

    def __init__(self, snapshot: Callable[[], object]):
        """``snapshot``: the backend's ``inspect()`` (None before the model is loaded); the
        engine gauges read it, NaN where it has no figure (before loading; K/V rows on a
        backend without a K/V arena)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("erank_fast_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.documents = Counter("erank_fast_documents", "documents scored", registry=r)
        self.tokens = Counter("erank_fast_tokens", "tokens computed by the model", ["kind"],
                              registry=r)
        self.cancelled = Counter("erank_fast_cancelled_requests",
                                 "requests cancelled because the client went away", registry=r)
        self.in_flight = Gauge("erank_fast_requests_in_flight",
                               "requests being scored (the engine's queue)", registry=r)
        self.latency = Histogram("erank_fast_request_seconds", "rerank/score request latency",
                                 ["endpoint"], registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

        def gauge(name: str, help_text: str, field: str) -> None:
            def read() -> float:
                value = getattr(snapshot(), field, None)
                return float("nan") if value is None else float(value)

            Gauge(name, help_text, registry=r).set_function(read)

        gauge("erank_fast_kv_tokens_in_use", "K/V arena rows held by requests", "kv_tokens_in_use")
        gauge("erank_fast_kv_tokens_total", "K/V arena rows the memory budget allows",
              "kv_tokens_total")
        gauge("erank_fast_engine_steps", "forward passes the engine has run", "steps_run")
        gauge("erank_fast_documents_waiting", "documents queued for admission",
              "documents_waiting")
        gauge("erank_fast_documents_active", "documents being computed", "documents_active")


OPEN_PATHS = ("/health", "/metrics", "/docs", "/openapi.json")


class Guard:
    """ASGI middleware: the API key, the declared body size, and request counts by status.
    (A plain ASGI wrapper: it leaves the receive channel alone, so handlers still see a client
    disconnecting.)"""

    def __init__(self, app, limits: ServerLimits, metrics: ServerMetrics):
        self.app, self.limits, self.metrics = app, limits, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = None
        if self.limits.api_key is not None and not path.startswith(OPEN_PATHS):
            given = headers.get("authorization", "").encode("utf-8", "surrogateescape")
            # constant time: how long the comparison takes says nothing about the key
            if not hmac.compare_digest(given, f"Bearer {self.limits.api_key}".encode()):
                refusal = error_response(401, "unauthorized", "missing or wrong API key "
                                         "(send 'Authorization: Bearer <key>')")
        length = headers.get("content-length", "")
        if refusal is None and length.isdigit() and int(length) > self.limits.max_request_bytes:
            refusal = error_response(413, "request_too_large",
                                     f"the body has {length} bytes; this server takes at most "
                                     f"{self.limits.max_request_bytes} (--max-request-bytes)")
        if refusal is not None:
            self.metrics.requests.labels(path, str(refusal.status_code)).inc()
            return await refusal(scope, receive, send)
        status = {}

        async def send_counting(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, send_counting)
        if not path.startswith(OPEN_PATHS):
            self.metrics.requests.labels(path, str(status.get("code", 500))).inc()
