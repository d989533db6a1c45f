"""The server's service layer, free of HTTP: loading the reranker in the background, the
registry of requests in flight (each cancellable), scoring with the limits and metrics, and a
snapshot of the engine for the gauges. Routes (``erank_fast.server``) turn its answers and its
``ServiceError``s into responses."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import anyio

from erank_fast.engine.work import Cancelled
from erank_fast.server.middleware import ServerLimits, ServerMetrics

DISCONNECT_POLL_SECONDS = 0.05
WORKER_THREADS = 256  # requests scored at once; the engine batches them into shared steps


class ServiceError(Exception):
    """A request the service will not or cannot answer: HTTP status, error type, message."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


class RerankService:
    """One shared Reranker behind any number of concurrent requests."""

    def __init__(self, load: Callable[[], object], *, model_name: str, limits: ServerLimits):
        self.model_name, self.limits = model_name, limits
        self.reranker = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._load = load
        self._cancels: set[threading.Event] = set()
        self._limiter = anyio.CapacityLimiter(WORKER_THREADS)
        self.metrics = ServerMetrics(self.snapshot)

    def start(self) -> None:
        """Load the reranker in a thread; ``ready`` is set when it has loaded or failed."""
        threading.Thread(target=self._load_in_background, name="erank-fast-load",
                         daemon=True).start()

    def stop(self) -> None:
        """Cancel every request still in flight (shutdown)."""
        for cancel in list(self._cancels):
            cancel.set()

    def _load_in_background(self) -> None:
        try:
            self.reranker = self._load()
        except BaseException as e:  # reported by /health, never raised into the event loop
            self.error = e
        finally:
            self.ready.set()

    def snapshot(self):
        """The backend's ``inspect()`` once loaded, else None."""
        return self.reranker.inspect() if self.reranker is not None else None

    def model_entry(self) -> dict:
        entry = {"id": self.model_name, "object": "model", "owned_by": "erank_fast"}
        if self.reranker is not None:
            # What it computes on (quantisation included), its prompt layout, and whether
            # requests without scores get the hybrid by order.
            config = self.reranker.config
            entry.update(device=self.reranker.device, dtype=self.reranker.dtype,
                         quantize=config.quantize, template=config.template,
                         hybrid_order=config.hybrid_order)
        return entry

    def loaded(self):
        """The reranker, or the ServiceError saying why there is none yet."""
        if self.error is not None:
            raise ServiceError(500, "load_failed", f"the model failed to load: {self.error}")
        if not self.ready.is_set():
            raise ServiceError(503, "loading", "the model is still loading; retry shortly")
        return self.reranker

    def check_lengths(self, documents: list) -> None:
        """TEI's ``truncate: false``: refuse documents longer than the reranker's limit."""
        reranker = self.loaded()
        limit = reranker.config.max_doc_tokens
        for i, doc in enumerate(documents):
            n = reranker.document_tokens(doc)
            if n > limit:
                raise ServiceError(422, "input_too_long",
                                   f"texts.{i}: {n} tokens, over this server's limit of {limit} "
                                   "(truncate: true cuts it there)")

    async def rerank(self, query: str, documents: list, *, endpoint: str,
                     max_doc_tokens: int | None = None,
                     first_stage_scores: list[float] | str | None = None,
                     is_disconnected: Callable[[], Awaitable[bool]] | None = None):
        """The documents scored (``RerankResults``, best first). A client that disconnects
        (``is_disconnected``), or a caller that is itself cancelled, has its documents
        cancelled in the engine."""
        reranker = self.loaded()
        if len(documents) > self.limits.max_documents:
            raise ServiceError(413, "too_many_documents",
                               f"{len(documents)} documents; this server takes at most "
                               f"{self.limits.max_documents} per request (--max-documents)")
        cancel = threading.Event()
        self._cancels.add(cancel)
        self.metrics.in_flight.inc()
        start = time.perf_counter()

        def work():
            return reranker.rerank(query, documents, cancel=cancel, max_doc_tokens=max_doc_tokens,
                                   first_stage_scores=first_stage_scores)

        async def watch_disconnect():
            while not cancel.is_set():
                if await is_disconnected():
                    cancel.set()
                    return
                await asyncio.sleep(DISCONNECT_POLL_SECONDS)

        watcher = asyncio.ensure_future(watch_disconnect()) if is_disconnected else None
        try:
            results = await anyio.to_thread.run_sync(work, limiter=self._limiter)
        except Cancelled:
            self.metrics.cancelled.inc()
            raise ServiceError(499, "cancelled", "the request was cancelled") from None
        except ValueError as e:  # e.g. a document that can never fit the K/V memory
            raise ServiceError(422, "invalid_request", str(e)) from None
        finally:  # reached on success, on error, and when this task is cancelled
            cancel.set()
            if watcher is not None:
                watcher.cancel()
            self._cancels.discard(cancel)
            self.metrics.in_flight.dec()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        self.metrics.documents.inc(len(documents))
        self.metrics.tokens.labels("prefill").inc(results.stats.prefill_tokens)
        self.metrics.tokens.labels("decode").inc(results.stats.decode_tokens)
        return results
