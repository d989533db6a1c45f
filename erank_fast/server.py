"""``erank-fast serve``: an HTTP rerank server (FastAPI + uvicorn) over one Reranker.

Endpoints:
- ``POST /v1/rerank`` and ``POST /rerank``: the Cohere / Jina shape, ``{model?, query,
  documents: [str | {text, ...}], top_n?, return_documents?, max_tokens_per_doc?}`` →
  ``{id, model, results: [{index, relevance_score, document?, erank: {answer, probability}}],
  usage, meta}``, best first. ``/rerank`` with ``texts`` instead of ``documents`` answers in the
  text-embeddings-inference shape: ``[{index, score, text?}]``.
- ``POST /v1/score``: ``{query, documents}`` → scores in input order.
- ``GET /health`` (200 once the model is loaded, 503 before), ``GET /v1/models``,
  ``GET /metrics`` (Prometheus text).

Every request runs in a worker thread on the shared engine, so documents of concurrent requests
share forward passes. A client that disconnects has its documents cancelled in the engine (their
K/V released at the next step). Errors are JSON ``{"error": {"type", "message"}}``: 422 for
malformed input or a request that can never fit the K/V memory, 413 over ``max_documents`` or
``max_request_bytes``, 401 for a missing or wrong API key (when one is set), 503 while loading.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from erank_fast.engine.work import Cancelled
from erank_fast.prompt import valid_unicode
from erank_fast.server_middleware import Guard, ServerLimits, ServerMetrics
from erank_fast.server_schema import (RerankRequest, ScoreRequest, TEIRerankRequest,
                                      describe_errors, error_response)

DISCONNECT_POLL_SECONDS = 0.05
WORKER_THREADS = 256  # requests scored at once; the engine batches them into shared steps


def create_app(load: Callable[[], object], *, model_name: str,
               limits: ServerLimits = ServerLimits()) -> FastAPI:
    """The FastAPI app. ``load`` builds the Reranker; it runs in a thread at startup, and
    ``/health`` answers 503 until it has returned."""
    state: dict = {"reranker": None, "error": None, "cancels": set()}
    ready = threading.Event()

    def kv_in_use() -> int:
        backend = getattr(state["reranker"], "backend", None)
        return getattr(backend, "kv_tokens_in_use", 0)

    def engine_steps() -> int:
        backend = getattr(state["reranker"], "backend", None)
        return getattr(backend, "steps_run", 0)

    metrics = ServerMetrics(kv_in_use, engine_steps)

    def load_in_background() -> None:
        try:
            state["reranker"] = load()
        except BaseException as e:  # reported by /health, never raised into the event loop
            state["error"] = e
        finally:
            ready.set()

    async def lifespan(app: FastAPI):
        threading.Thread(target=load_in_background, name="erank-fast-load", daemon=True).start()
        yield
        for cancel in list(state["cancels"]):  # shutdown: end what is still in flight
            cancel.set()

    app = FastAPI(title="erank_fast", lifespan=lifespan)
    app.state.erank = state
    app.state.metrics = metrics
    app.state.ready = ready
    limiter = anyio.CapacityLimiter(WORKER_THREADS)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", describe_errors(exc.errors()))

    app.add_middleware(Guard, limits=limits, metrics=metrics)

    @app.get("/health")
    async def health():
        if state["error"] is not None:
            return error_response(500, "load_failed", f"the model failed to load: {state['error']}")
        if not ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models():
        entry = {"id": model_name, "object": "model", "owned_by": "erank_fast"}
        if state["reranker"] is not None:  # what it computes on, once loaded
            entry.update(device=state["reranker"].device, dtype=state["reranker"].dtype)
        return {"object": "list", "data": [entry]}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def read_body(request: Request) -> dict | JSONResponse:
        body = await request.body()  # bounded by the uvicorn limit and the check below
        if len(body) > limits.max_request_bytes:
            return error_response(413, "request_too_large",
                                  f"the body has {len(body)} bytes; this server takes at most "
                                  f"{limits.max_request_bytes} (--max-request-bytes)")
        try:  # JSON may escape lone surrogates: they become U+FFFD, as in every prompt
            payload = json.loads(body, object_hook=_valid_strings)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error_response(422, "invalid_json", f"the body is not JSON: {e}")
        if not isinstance(payload, dict):
            return error_response(422, "invalid_request", "the body must be a JSON object")
        return payload

    async def score(request: Request, endpoint: str, query: str, documents: list,
                    max_doc_tokens: int | None):
        """(results, stats) from the shared reranker, or an error response."""
        if not ready.is_set():
            return error_response(503, "loading", "the model is still loading; retry shortly")
        reranker = state["reranker"]
        if reranker is None:
            return error_response(500, "load_failed", f"the model failed to load: {state['error']}")
        if len(documents) > limits.max_documents:
            return error_response(413, "too_many_documents",
                                  f"{len(documents)} documents; this server takes at most "
                                  f"{limits.max_documents} per request (--max-documents)")
        cancel = threading.Event()
        state["cancels"].add(cancel)
        metrics.in_flight.inc()
        start = time.perf_counter()

        def work():
            return reranker.rerank(query, documents, cancel=cancel, max_doc_tokens=max_doc_tokens)

        async def watch_disconnect():
            while not cancel.is_set():
                if await request.is_disconnected():
                    cancel.set()
                    return
                await asyncio.sleep(DISCONNECT_POLL_SECONDS)

        watcher = asyncio.ensure_future(watch_disconnect())
        try:
            results = await anyio.to_thread.run_sync(work, limiter=limiter)
        except Cancelled:
            metrics.cancelled.inc()
            return error_response(499, "cancelled", "the request was cancelled")
        except ValueError as e:  # e.g. a document that can never fit the K/V memory
            return error_response(422, "invalid_request", str(e))
        finally:
            cancel.set()
            watcher.cancel()
            state["cancels"].discard(cancel)
            metrics.in_flight.dec()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        metrics.documents.inc(len(documents))
        metrics.tokens.labels("prefill").inc(results.stats.prefill_tokens)
        metrics.tokens.labels("decode").inc(results.stats.decode_tokens)
        return results

    def usage(stats) -> dict:
        return {"prompt_tokens": stats.prefill_tokens,
                "total_tokens": stats.prefill_tokens + stats.decode_tokens}

    async def parse(request: Request, shape=None):
        """The body validated as ``shape`` (for /rerank: TEI's when it has "texts" and no
        "documents", else Cohere's), or the error response."""
        payload = await read_body(request)
        if isinstance(payload, Response):
            return payload
        if shape is None:
            tei = "texts" in payload and "documents" not in payload
            shape = TEIRerankRequest if tei else RerankRequest
        try:
            return shape.model_validate(payload)
        except ValidationError as e:
            return error_response(422, "invalid_request", describe_errors(e.errors()))

    async def answer(request: Request, body):
        if isinstance(body, Response):
            return body
        if isinstance(body, TEIRerankRequest):
            results = await score(request, "rerank", body.query, body.texts, None)
            if isinstance(results, Response):
                return results
            return [{"index": r.index, "score": r.score,
                     **({"text": r.document} if body.return_text else {})} for r in results]
        documents = [d if isinstance(d, str) else d.model_dump() for d in body.documents]
        if isinstance(body, ScoreRequest):
            results = await score(request, "score", body.query, documents, None)
            if isinstance(results, Response):
                return results
            scores = [0.0] * len(documents)
            for r in results:
                scores[r.index] = r.score
            return {"id": str(uuid.uuid4()), "model": model_name, "scores": scores,
                    "usage": usage(results.stats)}
        results = await score(request, "rerank", body.query, documents, body.max_tokens_per_doc)
        if isinstance(results, Response):
            return results
        rows = []
        for r in results[: body.top_n] if body.top_n is not None else results:
            row = {"index": r.index, "relevance_score": r.score,
                   "erank": {"answer": r.answer, "probability": r.probability}}
            if body.return_documents:
                row["document"] = r.document if isinstance(r.document, dict) else {"text": r.document}
            rows.append(row)
        s = results.stats
        return {"id": str(uuid.uuid4()), "model": model_name, "results": rows, "usage": usage(s),
                "meta": {"documents": s.documents, "seconds": s.seconds, "engine_steps": s.steps,
                         "decode_tokens": s.decode_tokens}}

    @app.post("/v1/rerank")
    async def rerank_v1(request: Request):
        return await answer(request, await parse(request, RerankRequest))

    @app.post("/rerank")
    async def rerank(request: Request):
        return await answer(request, await parse(request))

    @app.post("/v1/score")
    async def score_v1(request: Request):
        return await answer(request, await parse(request, ScoreRequest))

    return app


def _valid_strings(obj: dict) -> dict:
    """json.loads object hook: every string in the object (keys, values, list items) as valid
    Unicode (``prompt.valid_unicode``), so what is echoed back can always be encoded."""
    def fix(v):
        if isinstance(v, str):
            return valid_unicode(v)
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    return {valid_unicode(k): fix(v) for k, v in obj.items()}


def serve(load: Callable[[], object], *, model_name: str, host: str = "127.0.0.1",
          port: int = 8000, limits: ServerLimits = ServerLimits(),
          graceful_seconds: float = 30.0) -> int:
    """Run the server until SIGINT / SIGTERM: uvicorn stops accepting, lets requests in flight
    finish for ``graceful_seconds``, then the rest are cancelled. Returns 0, or 1 when the
    model failed to load: the server then stops at once instead of serving without a model."""
    import uvicorn

    app = create_app(load, model_name=model_name, limits=limits)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                           timeout_graceful_shutdown=graceful_seconds))

    def stop_if_load_failed() -> None:
        app.state.ready.wait()
        if app.state.erank["error"] is not None:
            error = app.state.erank["error"]
            print(f"erank-fast serve: the model failed to load: {type(error).__name__}: {error}",
                  file=sys.stderr, flush=True)
            server.should_exit = True

    threading.Thread(target=stop_if_load_failed, name="erank-fast-load-watch", daemon=True).start()
    server.run()
    return 1 if app.state.erank["error"] is not None else 0
