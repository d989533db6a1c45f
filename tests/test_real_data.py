"""End to end on real TREC DL19 data with SmolLM2-135M-Instruct's real weights."""

from __future__ import annotations

import json
import math

from erank_fast import Reranker


def _queries(path, n, depth):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            out.append((q["query"], [c["text"] for c in q["candidates"][:depth]]))
            if len(out) == n:
                break
    return out


def test_dl19_queries_get_finite_scores_in_range(data_dir, smollm2):
    model, tok = smollm2
    queries = _queries(data_dir / "dl19-bm25-top100.jsonl", n=3, depth=6)
    for mode, depth in (("expected", 6), ("erank", 2)):
        queries = [(q, d[:depth]) for q, d in queries]
        rr = Reranker.from_pretrained(model, tokenizer=tok, score_mode=mode)
        many = rr.rerank_many([q for q, _ in queries], [d for _, d in queries])
        for (query, docs), results in zip(queries, many):
            assert sorted(r.index for r in results) == list(range(len(docs)))
            for r in results:
                assert math.isfinite(r.score) and 0.0 <= r.score <= 10.0, (query, r)
                assert len(r.distribution) == 11 and 0.0 <= sum(r.distribution) <= 1.0 + 1e-6
                assert r.answer is None or 0 <= r.answer <= 10
            assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
        assert many[0].stats.prefill_tokens > 0
