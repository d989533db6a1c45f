"""The engine with backend="triton" (kernels; interpreter on CPU) gives the same answers,
generated tokens and rankings as backend="torch" on a tiny Qwen3."""

from __future__ import annotations

import pytest

from erank_fast import Reranker

QUERY = "what causes ocean tides"
DOCS = ["Tides are caused by the moon's gravity.", "Bread needs yeast.", "",
        "Spring tides happen when the sun and moon align."]


@pytest.mark.parametrize("think", ["off", 2])
def test_triton_backend_equals_torch_backend(tiny_qwen3, think):
    model, tok = tiny_qwen3
    fast = Reranker.from_pretrained(model, tokenizer=tok, backend="triton", think=think)
    torch_rr = Reranker.from_pretrained(model, tokenizer=tok, backend="torch", think=think)
    got = fast.rerank(QUERY, DOCS, return_reasoning=True)
    want = torch_rr.rerank(QUERY, DOCS, return_reasoning=True)
    assert [r.index for r in got] == [r.index for r in want]
    for g, w in zip(got, want):
        assert (g.answer, g.reasoning) == (w.answer, w.reasoning), f"doc {g.index}"
        assert abs(g.score - w.score) <= 1e-5, f"doc {g.index}: {g.score} vs {w.score}"
