"""``erank-fast serve``: an HTTP rerank server (FastAPI + uvicorn) over one Reranker.

Endpoints:
- ``POST /v1/rerank`` and ``POST /rerank``: the Cohere / Jina shape, ``{model?, query,
  documents: [str | {text, ...}], top_n?, return_documents?, max_tokens_per_doc?,
  first_stage_scores?}`` → ``{id, model, results: [{index, relevance_score, document?, erank:
  {answer, probability, model_score}}], usage, meta}``, best first. ``first_stage_scores`` (an
  erank_fast extension, also on ``/v1/score``): the retriever's score of each document, or
  ``"order"`` when the documents come in the retriever's order, best first; the relevance score
  is then the hybrid of both (``erank_fast.fusion``), ``model_score`` the model's own. A server
  started with ``--hybrid-order`` does that for every request without them (TEI's too).
  ``/rerank`` with ``texts`` instead of ``documents`` answers in the text-embeddings-inference
  shape: ``[{index, score, text?}]``.
- ``POST /v1/score``: ``{query, documents}`` → scores in input order.
- ``GET /health`` (200 once the model is loaded, 503 before), ``GET /v1/models``,
  ``GET /metrics`` (Prometheus text).

Every request runs in a worker thread on the shared engine, so documents of concurrent requests
share forward passes. A client that disconnects has its documents cancelled in the engine (their
K/V released at the next step). Errors are JSON ``{"error": {"type", "message"}}``: 422 for
malformed input or a request that can never fit the K/V memory, 413 over ``max_documents`` or
``max_request_bytes``, 401 for a missing or wrong API key (when one is set), 503 while loading.
TEI's ``truncate: false`` refuses (422) a text over the reranker's ``max_doc_tokens`` instead of
cutting it; ``raw_scores: true`` is refused (422): the score is the ERank rank score.

Layout of ``erank_fast.server``: ``service`` (loading, requests in flight, scoring, the engine
snapshot), ``formats`` (one response formatter per API shape), ``schema`` (request shapes,
errors), ``middleware`` (metrics, API key, size guard), ``replicas`` (the same app on Ray
Serve); the routes here are thin.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from erank_fast.prompt import valid_unicode
from erank_fast.server import formats
from erank_fast.server.middleware import Guard, ServerLimits
from erank_fast.server.schema import (
    RerankRequest,
    ScoreRequest,
    TEIRerankRequest,
    describe_errors,
    error_response,
)
from erank_fast.server.service import RerankService, ServiceError


def create_app(load: Callable[[], object], *, model_name: str,
               limits: ServerLimits = ServerLimits()) -> FastAPI:
    """The FastAPI app. ``load`` builds the Reranker; it runs in a thread at startup, and
    ``/health`` answers 503 until it has returned."""
    service = RerankService(load, model_name=model_name, limits=limits)

    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()  # shutdown: end what is still in flight

    app = FastAPI(title="erank_fast", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(Guard, limits=limits, metrics=service.metrics)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid_request", describe_errors(exc.errors()))

    @app.exception_handler(ServiceError)
    async def _refused(request: Request, exc: ServiceError):
        return error_response(exc.status, exc.kind, exc.message)

    @app.get("/health")
    async def health():
        try:
            service.loaded()
        except ServiceError as e:
            if e.status == 503:
                return JSONResponse({"status": "loading"}, status_code=503)
            raise
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [service.model_entry()]}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/rerank")
    async def rerank_v1(request: Request):
        return await cohere(request, await parse(request, RerankRequest, limits))

    @app.post("/rerank")
    async def rerank(request: Request):
        body = await parse(request, None, limits)
        if isinstance(body, TEIRerankRequest):
            if body.raw_scores:
                raise ServiceError(422, "unsupported", "raw_scores: erank_fast returns the ERank "
                                   "rank score only (no pre-activation logits exist)")
            if not body.truncate:
                service.check_lengths(body.texts)
            results = await service.rerank(body.query, body.texts, endpoint="rerank",
                                           is_disconnected=request.is_disconnected)
            return formats.tei(results, return_text=body.return_text)
        return await cohere(request, body)

    @app.post("/v1/score")
    async def score_v1(request: Request):
        body = await parse(request, ScoreRequest, limits)
        results = await service.rerank(body.query, documents(body), endpoint="score",
                                       first_stage_scores=body.first_stage_scores,
                                       is_disconnected=request.is_disconnected)
        return formats.scores(results, model_name=model_name)

    async def cohere(request: Request, body: RerankRequest):
        results = await service.rerank(body.query, documents(body), endpoint="rerank",
                                       max_doc_tokens=body.max_tokens_per_doc,
                                       first_stage_scores=body.first_stage_scores,
                                       is_disconnected=request.is_disconnected)
        return formats.cohere(results, model_name=model_name, top_n=body.top_n,
                                     return_documents=body.return_documents)

    return app


def documents(body) -> list:
    return [d if isinstance(d, str) else d.model_dump() for d in body.documents]


async def parse(request: Request, shape, limits: ServerLimits):
    """The body validated as ``shape`` (None, for /rerank: TEI's when it has "texts" and no
    "documents", else Cohere's); a ServiceError otherwise."""
    body = await request.body()  # bounded by the uvicorn limit and the check below
    if len(body) > limits.max_request_bytes:
        raise ServiceError(413, "request_too_large",
                           f"the body has {len(body)} bytes; this server takes at most "
                           f"{limits.max_request_bytes} (--max-request-bytes)")
    try:  # JSON may escape lone surrogates: they become U+FFFD, as in every prompt
        payload = json.loads(body, object_hook=_valid_strings)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ServiceError(422, "invalid_json", f"the body is not JSON: {e}") from None
    if not isinstance(payload, dict):
        raise ServiceError(422, "invalid_request", "the body must be a JSON object")
    if shape is None:
        tei = "texts" in payload and "documents" not in payload
        shape = TEIRerankRequest if tei else RerankRequest
    try:
        return shape.model_validate(payload)
    except ValidationError as e:
        raise ServiceError(422, "invalid_request", describe_errors(e.errors())) from None


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

    service = app.state.service

    def stop_if_load_failed() -> None:
        service.ready.wait()
        if service.error is not None:
            error = service.error
            print(f"erank-fast serve: the model failed to load: {type(error).__name__}: {error}",
                  file=sys.stderr, flush=True)
            server.should_exit = True

    threading.Thread(target=stop_if_load_failed, name="erank-fast-load-watch", daemon=True).start()
    server.run()
    return 1 if service.error is not None else 0
