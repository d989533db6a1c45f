"""kernels/suffix_attention.py (own causal part + prefix merge, and the split-K decode path)
against the fp32 reference."""

from __future__ import annotations

import pytest
import torch

from erank_fast.ops import suffix_attention as op
from erank_fast.reference.prefix_attention import prefix_attention_ref
from erank_fast.reference.suffix_attention import suffix_attention_ref
from tests.kernels.kernel_cases import DEVICE, DTYPES, arena, assert_close, cu, randn

CASES = [
    # (own tokens before the step, new tokens, prefix length, Hq, Hkv, D) per document
    ([0, 0, 0], [5, 1, 23], 17, 4, 4, 64),      # prefill, ragged, a length-1 suffix
    ([0], [40], 0, 8, 1, 128),                  # one document, empty prefix, GQA 8
    ([3, 40, 0, 7], [1, 1, 1, 1], 127, 8, 2, 64),  # decode, GQA 4
    ([12, 0], [2, 3], 128, 4, 1, 64),           # mixed
]


def _inputs(own, new, prefix_len, hq, hkv, d, dtype, seed):
    k, v, own_base = arena([o + n for o, n in zip(own, new)], hkv, d, dtype, seed)
    q = randn(sum(new), hq, d, dtype=dtype, seed=seed + 2)
    k_pre = randn(prefix_len, hkv, d, dtype=dtype, seed=seed + 3)
    v_pre = randn(prefix_len, hkv, d, dtype=dtype, seed=seed + 4)
    pre_out, pre_lse = prefix_attention_ref(
        q, k_pre, v_pre, cu([sum(new)]), torch.tensor([0], device=DEVICE),
        torch.tensor([prefix_len], device=DEVICE), d**-0.5)
    return q, k, v, own_base, torch.tensor(own, device=DEVICE), cu(new), pre_out, pre_lse


def _check(inputs, d, dtype, **bounds):
    out = op.suffix_attention(*inputs, d**-0.5, impl="triton", **bounds)
    q, k, v, own_base, own, q_cu, pre_out, pre_lse = inputs
    ref = suffix_attention_ref(q.float(), k.float(), v.float(), own_base, own, q_cu,
                               pre_out.float(), pre_lse, d**-0.5)
    assert out.dtype == dtype
    assert_close(out, ref, dtype, "merged output")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_suffix_attention_matches_reference(case, dtype):
    own, new, prefix_len, hq, hkv, d = CASES[case]
    _check(_inputs(own, new, prefix_len, hq, hkv, d, dtype, seed=10 * case), d, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_k_decode_matches_reference(dtype, monkeypatch):
    monkeypatch.setattr(op, "SPLIT_MIN_KEYS", 64)  # small contexts take the split path too
    own, new = [150, 0, 70], [1, 1, 1]
    _check(_inputs(own, new, 33, 8, 2, 64, dtype, seed=7), 64, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_split_k_decode_with_a_rounded_up_bound(dtype, monkeypatch):
    # CUDA graphs launch with the own-context bound of their bucket (a power of two at or above
    # the longest): splits past a document's own keys are empty and merge as the identity.
    monkeypatch.setattr(op, "SPLIT_MIN_KEYS", 64)
    own, new = [150, 0, 70, 5], [1, 1, 1, 1]
    _check(_inputs(own, new, 33, 8, 2, 64, dtype, seed=9), 64, dtype, max_q_tokens=1,
           max_own_len=1024)
