"""backend="torch" (erank_fast engine) equals backend="reference" (transformers, per document):
identical generated tokens and answers, scores within 1e-5 in float32, identical ranking."""

from __future__ import annotations

import pytest
import torch

from erank_fast import Reranker
from tests.helpers import make_tiny_model

QUERY = "how do vaccines train the immune system"
DOCS = [
    "Vaccines expose the immune system to a weakened pathogen so it forms memory cells.",
    "The Eiffel Tower was completed in 1889.",
    "",
    "Memory B cells created after vaccination respond faster to the same virus.",
    "Un café à Paris ☕ — naïve résumé, 日本語.",
    "Vaccines expose the immune system to antigens.",
]


def _pair(model, tokenizer, **kw):
    fast = Reranker.from_pretrained(model, tokenizer=tokenizer, backend="torch", **kw)
    ref = Reranker.from_pretrained(model, tokenizer=tokenizer, backend="reference", **kw)
    return fast, ref


def _assert_same(fast, ref, query=QUERY, docs=DOCS):
    got = fast.rerank(query, docs, return_reasoning=True)
    want = ref.rerank(query, docs, return_reasoning=True)
    assert [r.index for r in got] == [r.index for r in want], "rankings differ"
    for g, w in zip(got, want):
        assert g.reasoning == w.reasoning, f"doc {g.index}: generated tokens differ"
        assert g.num_generated_tokens == w.num_generated_tokens
        assert g.answer == w.answer, f"doc {g.index}: answer {g.answer} != {w.answer}"
        assert abs(g.score - w.score) <= 1e-5, f"doc {g.index}: score {g.score} vs {w.score}"
        diff = max(abs(a - b) for a, b in zip(g.distribution, w.distribution))
        assert diff <= 1e-5, f"doc {g.index}: distribution differs by {diff}"
    return got


@pytest.mark.parametrize("think", ["off", 8, "full"])
def test_tiny_qwen3_torch_equals_reference(tiny_qwen3, think):
    model, tok = tiny_qwen3
    fast, ref = _pair(model, tok, think=think, max_think_tokens=20)
    got = _assert_same(fast, ref)
    assert all(r.answer is not None for r in got), "boosted digits: every answer is readable"
    assert len({round(r.score, 7) for r in got}) == len(DOCS), "scores should differ"
    expected_tokens = {"off": 0, 8: 8, "full": 20}[think]
    assert all(r.num_generated_tokens <= expected_tokens for r in got)


def test_closing_tag_written_by_the_model_is_followed(qwen_tokenizer):
    """A model that likes </think> closes its reasoning itself; both backends force <answer>."""
    model = make_tiny_model("qwen3", len(qwen_tokenizer), seed=3, tie_word_embeddings=False)
    close = qwen_tokenizer.convert_tokens_to_ids("</think>")
    with torch.no_grad():
        model.lm_head.weight[close] *= 12
    fast, ref = _pair(model, qwen_tokenizer, think="full", max_think_tokens=40)
    got = _assert_same(fast, ref)
    assert any(r.num_generated_tokens < 40 and r.reasoning.endswith("</think>") for r in got)


def test_doc_last_template_torch_equals_reference(tiny_qwen3):
    model, tok = tiny_qwen3
    fast, ref = _pair(model, tok, think=6, template="doc-last")
    got = _assert_same(fast, ref)
    erank = Reranker.from_pretrained(model, tokenizer=tok, think=6).rerank(QUERY, DOCS)
    assert [r.score for r in got] != [r.score for r in erank]  # another prompt, other scores
    assert fast.config.template == "doc-last"


def test_qwen2_and_llama_families_torch_equals_reference(qwen_tokenizer):
    for family in ("qwen2", "llama"):
        model = make_tiny_model(family, len(qwen_tokenizer), seed=5)
        fast, ref = _pair(model, qwen_tokenizer, think=4, score_mode="expected")
        _assert_same(fast, ref, docs=DOCS[:3])


@pytest.mark.parametrize("think", ["off", 8, "full"])
def test_smollm2_torch_equals_reference(smollm2, think):
    model, tok = smollm2
    fast, ref = _pair(model, tok, think=think, score_mode="expected", max_think_tokens=24)
    _assert_same(fast, ref, docs=DOCS[:4])
