"""Decode steps through CUDA graphs: the padded static steps they replay equal the unpadded
engine (on CPU, eagerly: cuda_graphs="padded"); on CUDA, replayed graphs equal both."""

from __future__ import annotations

import copy

import pytest
import torch

from erank_fast import Reranker
from erank_fast.engine import decode_graphs
from erank_fast.engine.decode_graphs import batch_bucket, own_bucket

QUERIES = ["how do vaccines work", "tallest mountain on earth", "what is photosynthesis"]
DOCS = [
    ["Vaccines train the immune system.", "Pasta recipes.", "Antibodies fight infection.",
     "Memory cells remember pathogens.", "A vaccine is a weakened virus."],
    ["Mount Everest is the highest mountain."],
    ["Plants turn light into sugar.", "Chlorophyll is green.", "The moon orbits the earth.",
     "Leaves take in carbon dioxide.", "", "Oxygen is released by plants.", "Photons carry light.",
     "Glucose stores energy.", "Roots absorb water."],
]


def _assert_same(got, want):
    for g_results, w_results in zip(got, want):
        assert [r.index for r in g_results] == [r.index for r in w_results]
        for g, w in zip(g_results, w_results):
            assert (g.answer, g.reasoning) == (w.answer, w.reasoning), f"doc {g.index}"
            assert g.score == pytest.approx(w.score, abs=1e-5)


def test_buckets():
    assert [batch_bucket(n) for n in (1, 3, 25, 100, 512)] == [1, 4, 32, 112, 512]
    assert batch_bucket(513) is None
    assert own_bucket(1) == own_bucket(511) == 511  # one single-pass plan below split-K
    assert (own_bucket(512), own_bucket(600)) == (512, 1024)


@pytest.mark.parametrize("think", [4, "full"])
def test_padded_decode_steps_equal_unpadded(tiny_qwen3, think):
    model, tok = tiny_qwen3
    kw = dict(tokenizer=tok, think=think, max_think_tokens=12)
    plain = Reranker.from_pretrained(model, cuda_graphs="off", **kw)
    padded = Reranker.from_pretrained(model, cuda_graphs="padded", **kw)
    want = plain.rerank_many(QUERIES, DOCS, return_reasoning=True)
    got = padded.rerank_many(QUERIES, DOCS, return_reasoning=True)
    _assert_same(got, want)
    keys = padded.backend.runner.graphs.shapes
    assert any(groups > 1 for _, groups, _ in keys), keys  # several queries in one decode step
    assert any(batch not in (1, 2, 4, 8) for batch, _, _ in keys), keys


def test_steps_above_the_largest_bucket_run_unpadded(tiny_qwen3, monkeypatch):
    monkeypatch.setattr(decode_graphs, "BATCH_BUCKETS", (1, 2, 4))
    model, tok = tiny_qwen3
    plain = Reranker.from_pretrained(model, tokenizer=tok, think=3, cuda_graphs="off")
    padded = Reranker.from_pretrained(model, tokenizer=tok, think=3, cuda_graphs="padded")
    _assert_same([padded.rerank(QUERIES[2], DOCS[2], return_reasoning=True)],
                 [plain.rerank(QUERIES[2], DOCS[2], return_reasoning=True)])
    assert {batch for batch, _, _ in padded.backend.runner.graphs.shapes} <= {1, 2, 4}


def test_padded_sampling_equals_unpadded(tiny_qwen3):
    model, tok = tiny_qwen3
    prompts = [tok.encode("Hello there, how"), tok.encode("A different prompt"), tok.encode("x")]
    kw = dict(n=3, temperature=0.9, top_p=0.95, top_k=50, max_new_tokens=6, seed=5)
    want = Reranker.from_pretrained(model, tokenizer=tok, cuda_graphs="off").sample(prompts, **kw)
    got = Reranker.from_pretrained(model, tokenizer=tok, cuda_graphs="padded").sample(prompts, **kw)
    for g_list, w_list in zip(got, want):
        for g, w in zip(g_list, w_list):
            assert g.completion_ids == w.completion_ids
            assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)


def test_cuda_graphs_on_needs_cuda_and_triton(tiny_qwen3):
    model, tok = tiny_qwen3
    if not next(model.parameters()).is_cuda:
        with pytest.raises(ValueError, match="needs the model on a CUDA device"):
            Reranker.from_pretrained(model, tokenizer=tok, cuda_graphs="on")
    with pytest.raises(ValueError, match="cuda_graphs must be one of"):
        Reranker.from_pretrained(model, tokenizer=tok, cuda_graphs="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_graph_replay_equals_eager(tiny_qwen3, dtype):
    model, tok = tiny_qwen3
    model = copy.deepcopy(model).to(device="cuda", dtype=dtype)
    kw = dict(tokenizer=tok, think=6)
    graphs = Reranker.from_pretrained(model, cuda_graphs="on", **kw)
    padded = Reranker.from_pretrained(model, cuda_graphs="padded", **kw)
    got = graphs.rerank_many(QUERIES, DOCS, return_reasoning=True)
    again = graphs.rerank_many(QUERIES, DOCS, return_reasoning=True)  # replays, no new capture
    want = padded.rerank_many(QUERIES, DOCS, return_reasoning=True)
    assert graphs.backend.runner.graphs.captured > 0
    for results in (got, again):
        for g_results, w_results in zip(results, want):
            assert [(r.index, r.answer, r.reasoning, r.score) for r in g_results] == [
                (r.index, r.answer, r.reasoning, r.score) for r in w_results]
    if dtype == torch.float32:  # the unpadded kernels may split differently: close, not equal
        _assert_same(got, Reranker.from_pretrained(model, cuda_graphs="off", **kw).rerank_many(
            QUERIES, DOCS, return_reasoning=True))
