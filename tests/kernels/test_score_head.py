"""kernels/score_head.py: argmax ids exactly, max / LSE / gathered logits within tolerance, and
ties resolved to the smallest id (as torch.argmax)."""

from __future__ import annotations

import pytest
import torch

from erank_fast.ops.score_head import score_head
from erank_fast.reference.score_head import score_head_ref
from tests.kernels.kernel_cases import DEVICE, DTYPES, assert_close, randn


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,vocab,hidden", [(1, 1000, 64), (19, 3001, 96), (40, 517, 128)])
def test_score_head_matches_reference(rows, vocab, hidden, dtype):
    h = randn(rows, hidden, dtype=dtype, seed=rows)
    w = randn(vocab, hidden, dtype=dtype, seed=vocab) * 0.5
    # A clear winner per row, so the argmax is decided by the model, not by rounding.
    targets = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:rows]
    w[targets.to(DEVICE)] = h * 0.5
    ids = torch.tensor([0, 7, vocab - 1, int(targets[0])], device=DEVICE)
    best, arg, lse, gathered = score_head(h, w, ids, impl="triton")
    r_best, r_arg, r_lse, r_gathered = score_head_ref(h.float(), w.float(), ids)
    assert torch.equal(arg.cpu(), r_arg.cpu()), f"argmax differs: {arg.tolist()} vs {r_arg.tolist()}"
    assert torch.equal(arg.cpu(), targets)
    assert_close(best, r_best, dtype, "max logit")
    assert_close(lse, r_lse, dtype, "lse")
    assert_close(gathered, r_gathered, dtype, "gathered logits")


def test_ties_go_to_the_smallest_id():
    h = randn(3, 64, seed=1)
    w = randn(2000, 64, seed=2) * 0.1
    w[1500] = h[0]
    w[70] = h[0]      # same logit as 1500, smaller id, and in another vocabulary split
    w[1999] = h[1]
    w[5] = h[1]
    _, arg, _, _ = score_head(h, w, torch.tensor([0], device=DEVICE), impl="triton")
    assert arg[:2].tolist() == [70, 5]
    assert arg.tolist() == (h @ w.T).argmax(-1).tolist()


def test_no_vocabulary_sized_buffer(monkeypatch):
    """Partial results are [splits, rows]: memory does not grow with the vocabulary."""
    import erank_fast.ops.score_head as op

    sizes = []
    real_empty = torch.empty

    def recording_empty(*shape, **kw):
        t = real_empty(*shape, **kw)
        sizes.append(t.numel())
        return t

    monkeypatch.setattr(op.torch, "empty", recording_empty)
    h, w = randn(4, 64, seed=3), randn(5000, 64, seed=4)
    score_head(h, w, torch.tensor([1], device=DEVICE), impl="triton")
    assert sizes and max(sizes) <= op.TARGET_PROGRAMS * 4
