"""kernels/prefix_attention.py against the fp32 reference (interpreter on CPU, CUDA on GPU)."""

from __future__ import annotations

import pytest
import torch

from erank_fast.ops.prefix_attention import prefix_attention
from erank_fast.reference.prefix_attention import prefix_attention_ref
from tests.kernels.kernel_cases import DEVICE, DTYPES, arena, assert_close, cu, randn

CASES = [
    # (prefix lengths per group, new tokens per group, Hq, Hkv, D)
    ([17], [5], 4, 4, 64),            # GQA group 1
    ([1, 127], [3, 16], 8, 2, 64),    # GQA 4, two groups
    ([128, 0], [9, 4], 8, 1, 128),    # GQA 8, empty prefix
    ([40, 33, 5], [1, 40, 1], 4, 1, 64),  # many one-token documents in one group
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_prefix_attention_matches_reference(case, dtype):
    prefix_lens, q_lens, hq, hkv, d = CASES[case]
    q = randn(sum(q_lens), hq, d, dtype=dtype, seed=case)
    k, v, starts = arena(prefix_lens, hkv, d, dtype, seed=100 + case)
    lens = torch.tensor(prefix_lens, device=DEVICE)
    q_cu = cu(q_lens)
    out, lse = prefix_attention(q, k, v, q_cu, starts, lens, d**-0.5, impl="triton")
    ref_out, ref_lse = prefix_attention_ref(q.float(), k.float(), v.float(), q_cu, starts, lens,
                                            d**-0.5)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, ref_out, dtype, "output")
    assert_close(lse, ref_lse, dtype, "lse")
