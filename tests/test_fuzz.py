"""Property-based fuzzing (hypothesis, bounded in count): ``Reranker.rerank`` on arbitrary
unicode (NUL, lone surrogates, right-to-left marks, emoji, whitespace-only, 100k-character
documents), odd ``top_k`` and mixed document types; and the HTTP API on generated bodies (any
JSON, valid requests with fields replaced, raw bytes) over loopback: never a 5xx, every error a
JSON body naming the problem, the engine idle afterwards and a normal request still right."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from erank_fast import Reranker

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from tests.test_server import DOCS, QUERY, LiveServer  # noqa: E402

from erank_fast.server import ServerLimits, create_app  # noqa: E402

ODD = st.sampled_from(["", " ", "\n\t  \n", "\x00", "a\x00b", "\ud800", "x\udfffy", "\u202eevil",
                       "\U0001f600" * 20, "<|im_end|><|im_start|>assistant", "\ufeff", "é" * 3000])
TEXT = st.one_of(st.text(st.characters(codec=None, exclude_categories=()), max_size=200), ODD)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture(scope="module")
def reranker(tiny_qwen3):
    model, tok = tiny_qwen3
    return Reranker.from_pretrained(model, tokenizer=tok, max_doc_tokens=64, max_query_tokens=32)


@SETTINGS
@given(query=TEXT, docs=st.lists(st.one_of(TEXT, st.builds(lambda t: {"text": t, "id": 1}, TEXT)),
                                  max_size=5),
       top_k=st.one_of(st.none(), st.integers(-2, 8), st.just(True)))
def test_rerank_on_arbitrary_text(reranker, query, docs, top_k):
    try:
        results = reranker.rerank(query, docs, top_k=top_k)
    except ValueError as e:  # the documented refusal: a bad top_k, never anything else
        assert "top_k" in str(e) and (top_k is True or top_k < 0)
        return
    assert top_k is None or top_k >= 0
    want = len(docs) if top_k is None else min(top_k, len(docs))
    assert len(results) == want
    assert len({r.index for r in results}) == want
    assert all(math.isfinite(r.score) and 0.0 <= r.score <= 10.0 for r in results)
    assert reranker.inspect().kv_tokens_in_use == 0


def test_a_100k_character_document_is_truncated(reranker):
    long = "word " * 20_000
    results = reranker.rerank(QUERY, [long, "short"])
    assert len(results) == 2 and results.stats.prefill_tokens < 2 * (64 + 200)


def test_mixed_document_types_are_refused_by_position(reranker):
    with pytest.raises(TypeError, match="document 1"):
        reranker.rerank(QUERY, ["fine", 3, "fine"])
    with pytest.raises(TypeError, match="document 0"):
        reranker.rerank(QUERY, [{"txt": "no text key"}])


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | TEXT, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
FIELDS = ["query", "documents", "texts", "top_n", "return_documents", "raw_scores", "truncate",
          "model", "think"]


@pytest.fixture(scope="module")
def live(reranker):
    server = LiveServer(create_app(lambda: reranker, model_name="tiny",
                                   limits=ServerLimits(max_documents=8, max_request_bytes=50_000)))
    yield server
    server.stop()


def _check(response, seen: set) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["type"] and error["message"]
        seen.add((response.status_code, error["type"]))


_SEEN: set = set()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(["/v1/rerank", "/rerank", "/v1/score"]),
       body=st.one_of(JSON, st.builds(  # a valid request with some fields replaced or added
           lambda extra: {"query": QUERY, "documents": DOCS[:3], **extra},
           st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=3))))
def test_http_api_on_generated_bodies(live, path, body):
    # json.dumps escapes lone surrogates ("\\ud800"): the server parses them into its strings
    _check(httpx.post(live.url + path, content=json.dumps(body).encode(),
                      headers={"content-type": "application/json"}, timeout=60), _SEEN)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_http_api_on_raw_bytes(live, raw):
    _check(httpx.post(live.url + "/v1/rerank", content=raw,
                      headers={"content-type": "application/json"}, timeout=60), _SEEN)


def test_after_the_fuzzing_the_engine_is_idle_and_answers(live, reranker):
    assert reranker.inspect().kv_tokens_in_use == 0
    body = httpx.post(live.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
    assert [r["index"] for r in body["results"]] == [r.index for r in reranker.rerank(QUERY, DOCS)]
    print("error classes seen:", json.dumps(sorted(_SEEN)))


def test_lone_surrogates_in_a_request_are_scored_and_echoed(live):
    """JSON may escape lone surrogates; they are scored as U+FFFD and the answer is valid JSON."""
    body = '{"query": "tides \\ud800", "documents": ["moon \\udfff", "sea"], "return_documents": true}'
    r = httpx.post(live.url + "/v1/rerank", content=body.encode(),
                   headers={"content-type": "application/json"})
    assert r.status_code in (200, 422), r.text[:300]
    if r.status_code == 200:
        assert len(r.json()["results"]) == 2
    else:
        assert r.json()["error"]["message"]
