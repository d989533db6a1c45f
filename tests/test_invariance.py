"""Scores do not depend on batch composition, document order, or other queries in the call."""

from __future__ import annotations

import pytest

from erank_fast import Reranker

QUERY = "what causes ocean tides"
DOCS = [
    "Tides are caused by the gravitational pull of the moon and the sun on the oceans.",
    "The moon orbits the Earth roughly every 27 days.",
    "Tides",
    "Bread is made from flour, water, yeast and salt.",
    "Ocean tides rise and fall twice a day in most places because of the moon.",
    "",
    "Spring tides happen when the sun and moon align; neap tides when they are at right angles.",
]
OTHER = ("best way to learn rust", ["The Rust book is free online.", "Tides follow the moon."])


@pytest.fixture(scope="module", params=["off", 6])
def reranker(request, tiny_qwen3):
    model, tok = tiny_qwen3
    # A small batch budget also forces several prefill batches within one call.
    return Reranker.from_pretrained(model, tokenizer=tok, think=request.param,
                                    max_batch_tokens=900)


def _by_index(results):
    return {r.index: r for r in results}


def _close(a, b, what):
    for i in a:
        assert a[i].answer == b[i].answer, f"{what}: doc {i} answer"
        assert a[i].num_generated_tokens == b[i].num_generated_tokens, f"{what}: doc {i} tokens"
        assert abs(a[i].score - b[i].score) <= 1e-5, f"{what}: doc {i} {a[i].score} {b[i].score}"


def test_together_equals_one_by_one(reranker):
    together = _by_index(reranker.rerank(QUERY, DOCS))
    for i, d in enumerate(DOCS):
        alone = reranker.rerank(QUERY, [d])[0]
        _close({i: together[i]}, {i: alone}, "one by one")


def test_permutation_does_not_change_scores(reranker):
    base = _by_index(reranker.rerank(QUERY, DOCS))
    perm = [4, 2, 6, 0, 5, 1, 3]
    permuted = reranker.rerank(QUERY, [DOCS[p] for p in perm])
    _close(base, {perm[r.index]: r for r in permuted}, "permuted")


def test_mixed_with_other_queries(reranker):
    base = _by_index(reranker.rerank(QUERY, DOCS))
    other_alone = _by_index(reranker.rerank(*OTHER))
    many = reranker.rerank_many([OTHER[0], QUERY, OTHER[0]], [OTHER[1], DOCS, []])
    _close(base, _by_index(many[1]), "rerank_many")
    _close(other_alone, _by_index(many[0]), "rerank_many other query")
    assert list(many[2]) == []
