"""The engine with backend="triton" (kernels; interpreter on CPU) gives the same answers,
generated tokens and rankings as backend="torch" on a tiny Qwen3."""

from __future__ import annotations

import copy

import pytest

from erank_fast import Reranker
from tests.kernels.kernel_cases import DEVICE

QUERY = "what causes ocean tides"
DOCS = ["Tides are caused by the moon's gravity.", "Bread needs yeast.", "",
        "Spring tides happen when the sun and moon align."]


@pytest.fixture(scope="module")
def tiny_qwen3_on_device(tiny_qwen3):
    model, tok = tiny_qwen3
    return (copy.deepcopy(model).to(DEVICE) if DEVICE.type == "cuda" else model), tok


@pytest.mark.parametrize("think", ["off", 2])
def test_triton_backend_equals_torch_backend(tiny_qwen3_on_device, think):
    model, tok = tiny_qwen3_on_device
    fast = Reranker.from_pretrained(model, tokenizer=tok, backend="triton", think=think)
    torch_rr = Reranker.from_pretrained(model, tokenizer=tok, backend="torch", think=think)
    got = fast.rerank(QUERY, DOCS, return_reasoning=True)
    want = torch_rr.rerank(QUERY, DOCS, return_reasoning=True)
    assert [r.index for r in got] == [r.index for r in want]
    for g, w in zip(got, want):
        assert (g.answer, g.reasoning) == (w.answer, w.reasoning), f"doc {g.index}"
        assert abs(g.score - w.score) <= 1e-5, f"doc {g.index}: {g.score} vs {w.score}"


def test_padded_decode_steps_through_the_kernels(tiny_qwen3_on_device):
    # The layout CUDA graphs replay: padding documents in the last group on the scratch row,
    # an empty padding group, launch bounds from the buckets (5 documents -> 8, 3 groups -> 4).
    model, tok = tiny_qwen3_on_device
    queries = [QUERY, "bread", "moon phases"]
    docs = [DOCS[:2], DOCS[1:3], DOCS[3:]]
    fast = Reranker.from_pretrained(model, tokenizer=tok, backend="triton", think=2,
                                    cuda_graphs="padded")
    torch_rr = Reranker.from_pretrained(model, tokenizer=tok, backend="torch", think=2)
    got = fast.rerank_many(queries, docs, return_reasoning=True)
    want = torch_rr.rerank_many(queries, docs, return_reasoning=True)
    assert (8, 4, 511) in fast.backend.runner.graphs.shapes
    for g_results, w_results in zip(got, want):
        assert [r.index for r in g_results] == [r.index for r in w_results]
        for g, w in zip(g_results, w_results):
            assert (g.answer, g.reasoning) == (w.answer, w.reasoning)
            assert abs(g.score - w.score) <= 1e-5
