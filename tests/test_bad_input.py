"""Bad input gives a clear error or a documented result, and the Reranker keeps working."""

from __future__ import annotations

import pytest

from erank_fast import Reranker


@pytest.fixture(scope="module")
def reranker(tiny_qwen3):
    model, tok = tiny_qwen3
    return Reranker.from_pretrained(model, tokenizer=tok, max_doc_tokens=64, max_query_tokens=16)


def _still_works(reranker):
    results = reranker.rerank("query", ["a document", "another"])
    assert sorted(r.index for r in results) == [0, 1]


def test_no_documents_gives_empty_result(reranker):
    results = reranker.rerank("query", [])
    assert list(results) == [] and results.stats.documents == 0
    assert reranker.score("query", []) == []


def test_empty_strings_are_scored(reranker):
    results = reranker.rerank("", ["", "text"])
    assert len(results) == 2 and all(0.0 <= r.score <= 10.0 for r in results)


@pytest.mark.parametrize("docs,match", [
    (["ok", 3, "ok"], "document 1"),
    (["ok", None], "document 1"),
    ([{"text": 5}], "document 0: .*'text'"),
    ([{"title": "no text"}], "document 0"),
    ("a string, not a list", "list of strings"),
])
def test_non_text_documents_raise_type_error(reranker, docs, match):
    with pytest.raises(TypeError, match=match):
        reranker.rerank("query", docs)
    _still_works(reranker)


def test_non_text_query_and_bad_options(reranker):
    with pytest.raises(TypeError, match="query 0"):
        reranker.rerank(b"bytes", ["doc"])
    with pytest.raises(ValueError, match="top_k"):
        reranker.rerank("q", ["doc"], top_k=-1)
    with pytest.raises(ValueError, match="think"):
        reranker.rerank("q", ["doc"], think=0)
    with pytest.raises(ValueError, match="equal length"):
        reranker.rerank_many(["a", "b"], [["doc"]])
    _still_works(reranker)


@pytest.mark.parametrize("scores,error,match", [
    ([1.0], ValueError, "1 values for 2 documents"),
    ([1.0, float("nan")], ValueError, r"first_stage_scores\[1\] is nan"),
    ([1.0, "2"], TypeError, r"first_stage_scores\[1\] must be a number"),
    ("12", TypeError, "sequence of numbers or 'order'"),
    ("Order", TypeError, "sequence of numbers or 'order'"),
])
def test_bad_first_stage_scores_are_refused(reranker, scores, error, match):
    with pytest.raises(error, match=match):
        reranker.rerank("q", ["doc a", "doc b"], first_stage_scores=scores)
    with pytest.raises(ValueError, match="one list of scores per query"):
        reranker.rerank_many(["a", "b"], [["doc"], ["doc"]], first_stage_scores=[[1.0]])
    _still_works(reranker)


def test_first_stage_scores_sort_by_the_hybrid(reranker):
    """Documented: with the retriever's scores, results are sorted by ERank's hybrid (the same
    fusion the evaluation reports), each keeping the model's own score."""
    from erank_fast.evaluation.metrics import hybrid

    docs = ["vaccines train the immune system", "the stock market", "x", "measles doses"]
    first = [2.0, 7.0, -1.0, 0.5]
    plain = reranker.rerank("how do vaccines work", docs)
    fused = reranker.rerank("how do vaccines work", docs, first_stage_scores=first)
    model = {r.index: r.score for r in plain}
    assert {r.index: r.model_score for r in fused} == model
    assert all(r.model_score == r.score for r in plain)
    want = hybrid({"q": dict(enumerate(first))}, {"q": model}, 0.2)["q"]
    assert [r.index for r in fused] == sorted(want, key=lambda i: (-want[i], i))
    assert [r.score for r in fused] == pytest.approx(sorted(want.values(), reverse=True))
    alone = reranker.rerank("how do vaccines work", docs, first_stage_scores=[1.0] * 4)
    assert [r.index for r in alone] == [r.index for r in plain]  # a flat first stage: no change


def test_first_stage_order_stands_in_for_the_scores(tiny_qwen3, reranker):
    """Documented: first_stage_scores="order" takes the documents' order as the retriever's
    ranking, best first (n, n − 1, ..., 1 as its scores); hybrid_order=True makes that the
    default of calls without scores; explicit scores still win."""
    from erank_fast.fusion import order_scores

    docs = ["the stock market", "vaccines train the immune system", "x", "measles doses"]
    assert order_scores(4) == [4.0, 3.0, 2.0, 1.0] and order_scores(0) == []
    by_order = reranker.rerank("how do vaccines work", docs, first_stage_scores="order")
    explicit = reranker.rerank("how do vaccines work", docs, first_stage_scores=[4, 3, 2, 1])
    assert [(r.index, r.score, r.model_score) for r in by_order] == \
        [(r.index, r.score, r.model_score) for r in explicit]
    plain = reranker.rerank("how do vaccines work", docs)
    assert [r.score for r in by_order] != [r.score for r in plain]  # the order does count

    model, tok = tiny_qwen3
    ordered = Reranker.from_pretrained(model, tokenizer=tok, max_doc_tokens=64,
                                       max_query_tokens=16, hybrid_order=True)
    default = ordered.rerank("how do vaccines work", docs)
    assert [(r.index, r.score) for r in default] == [(r.index, r.score) for r in by_order]
    first = [0.0, 9.0, 0.0, 0.0]
    assert [r.score for r in ordered.rerank("how do vaccines work", docs,
                                            first_stage_scores=first)] == \
        [r.score for r in reranker.rerank("how do vaccines work", docs, first_stage_scores=first)]
    many = reranker.rerank_many(["how do vaccines work", "markets"], [docs, docs[:2]],
                                first_stage_scores="order")
    mixed = reranker.rerank_many(["how do vaccines work", "markets"], [docs, docs[:2]],
                                 first_stage_scores=["order", [2.0, 1.0]])
    assert [[(r.index, r.score) for r in res] for res in many] == \
        [[(r.index, r.score) for r in res] for res in mixed]


def test_dict_documents_keep_their_keys(reranker):
    docs = [{"text": "alpha", "docid": "d1"}, {"text": "beta", "docid": "d2"}]
    results = reranker.rerank("q", docs, top_k=1)
    assert len(results) == 1 and results[0].document is docs[results[0].index]


def test_overlong_texts_are_truncated(reranker):
    """Documented: query and document are cut to max_query_tokens / max_doc_tokens tokens."""
    long_doc = "lorem ipsum " * 5000
    results = reranker.rerank("q " * 1000, [long_doc, long_doc[:64]])
    prompts = reranker.segment("q " * 1000, [long_doc], think_off=True)
    assert len(prompts.full(0)) < 64 + 16 + 200  # template + truncated query and document
    assert len(results) == 2


def test_unknown_model_path_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no model at"):
        Reranker.from_pretrained("/no/such/checkpoint")
    with pytest.raises(FileNotFoundError, match="no model at"):
        Reranker.from_pretrained("./missing.gguf")


def test_bad_settings_are_refused(tiny_qwen3):
    model, tok = tiny_qwen3
    for kwargs, match in [({"think": "sometimes"}, "think"), ({"score_mode": "mean"}, "score_mode"),
                          ({"backend": "vllm"}, "backend"), ({"max_batch_tokens": 0}, "max_batch"),
                          ({"dtype": "fp8"}, "dtype must be"), ({"dtype": 3}, "dtype must be"),
                          ({"hybrid_alpha": 1.5}, "hybrid_alpha"),
                          ({"hybrid_alpha": "0.2"}, "hybrid_alpha"),
                          ({"hybrid_order": "yes"}, "hybrid_order")]:
        with pytest.raises(ValueError, match=match):
            Reranker.from_pretrained(model, tokenizer=tok, **kwargs)
    with pytest.raises(ValueError, match="tokenizer"):
        Reranker.from_pretrained(model)
    with pytest.raises(TypeError, match="model must be"):
        Reranker.from_pretrained(42)


def test_concurrent_calls_give_sequential_results(reranker):
    from concurrent.futures import ThreadPoolExecutor

    queries = [f"query number {i}" for i in range(8)]
    docs = ["first document", "second one", "third text here"]
    sequential = [reranker.score(q, docs) for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda q: reranker.score(q, docs), queries))
    # Concurrent calls are batched together: equal up to float rounding.
    assert concurrent == [pytest.approx(s, abs=1e-6) for s in sequential]


def test_dtype_may_be_named(tiny_qwen3):
    """dtype takes a torch dtype or its name; "auto" is the default choice."""
    model, tok = tiny_qwen3
    for dtype in ("float32", "torch.float32", "auto", None):
        reranker = Reranker.from_pretrained(model, tokenizer=tok, dtype=dtype)
        assert len(reranker.rerank("q", ["a", "b"])) == 2
