"""The HTTP API's request shapes (pydantic) and its JSON errors: ``{"error": {"type",
"message"}}``, the message naming every invalid field."""

from __future__ import annotations

from typing import Annotated

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, WrapValidator, field_validator

from erank_fast.fusion import FIRST_STAGE_ORDER


class DocumentObject(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class _QueryRequest(BaseModel):
    """A non-blank query; unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")
    query: str

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is empty")
        return value


def _scores_or_order(value, handler):
    """``FIRST_STAGE_ORDER`` as it is; anything else validated as the list of scores (so its
    errors name the list's items, not the alternatives of a union)."""
    if isinstance(value, str):
        if value == FIRST_STAGE_ORDER:
            return value
        raise ValueError(f"a list of numbers or {FIRST_STAGE_ORDER!r}, got {value!r}")
    return handler(value)


class _DocumentsRequest(_QueryRequest):
    """``first_stage_scores`` (an erank_fast extension): the retriever's score of each document,
    in order, or ``"order"`` (the documents are in the retriever's order, best first); the
    ranking is then the hybrid of both (``erank_fast.fusion``). Their count is checked by the
    Reranker (a 422 like any invalid request)."""

    model: str | None = None
    documents: list[str | DocumentObject] = Field(min_length=1)
    first_stage_scores: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]] | None,
                                  WrapValidator(_scores_or_order)] = None  # or "order"


class ScoreRequest(_DocumentsRequest):
    pass


class RerankRequest(_DocumentsRequest):
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    max_tokens_per_doc: int | None = Field(default=None, ge=1)


class TEIRerankRequest(_QueryRequest):
    texts: list[str] = Field(min_length=1)
    return_text: bool = False
    raw_scores: bool = False
    truncate: bool = True


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


def describe_errors(errors) -> str:
    """Validation errors as one line naming each field, e.g. "documents.1: Input should be a
    valid string"."""
    parts = []
    for e in errors:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)
