"""The bfloat16 fast path against the float32 reference, on SmolLM2-135M-Instruct's real
weights and TREC passages (synthetic ones without the shared data). Stated tolerance: its
largest score error is at most twice PyTorch's own bfloat16 error for the same model
(transformers in bfloat16, the reference backend), and its ranking agrees with float32's as well
as PyTorch's bfloat16 ranking does (Spearman within 0.05)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from erank_fast import Reranker
from erank_fast.ops.packed_linear import packing_available

pytestmark = pytest.mark.slow

# Documents of one query: enough for a rank correlation, few enough for a CPU without bf16
# units, where PyTorch's bf16 matrix multiplies run ~5x slower than float32 ones.
_DOCS = 12


def _spearman(a, b) -> float:
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _workload(request):
    from tests.conftest import DATA_DIR

    path = DATA_DIR / "dl19-bm25-top100.jsonl"
    if path.is_file():
        row = json.loads(path.open(encoding="utf-8").readline())
        return row["query"], [c["text"] for c in row["candidates"][:_DOCS]]
    words = "the tide moon sea water rises falls because of gravity and the sun pull".split()
    return "what causes tides", [" ".join(words[i % 13:] + words[: i % 13]) for i in range(_DOCS)]


def test_bf16_error_is_at_most_twice_pytorchs_own(smollm2, smollm2_dir, request):
    model, tok = smollm2
    query, docs = _workload(request)
    kw = dict(think="off", score_mode="expected", max_doc_tokens=128)
    reference = Reranker.from_pretrained(model, tokenizer=tok, backend="reference", **kw)
    torch_bf16 = Reranker.from_pretrained(copy.deepcopy(model).to(torch.bfloat16), tokenizer=tok,
                                          backend="reference", **kw)
    ours = Reranker.from_pretrained(str(smollm2_dir), dtype=torch.bfloat16, **kw)
    if packing_available(torch.zeros(1, dtype=torch.bfloat16)):
        assert ours.backend.packed_layers > 0  # the fast path: packed weights, bf16 attention
    want = reference.score(query, docs)
    theirs, got = torch_bf16.score(query, docs), ours.score(query, docs)
    err_torch = max(abs(a - b) for a, b in zip(theirs, want))
    err_ours = max(abs(a - b) for a, b in zip(got, want))
    print(f"max |score error| vs float32: erank_fast bf16 {err_ours:.4f}, transformers bf16 "
          f"{err_torch:.4f}; Spearman {_spearman(got, want):.3f} vs {_spearman(theirs, want):.3f}")
    assert err_ours <= 2 * err_torch
    assert _spearman(got, want) >= _spearman(theirs, want) - 0.05
