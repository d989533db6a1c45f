"""Rotary position embedding of q and k in place on CPU, through erank_fast's C++ kernel
(``ops/csrc/rotary.cpp``): one pass over both, float32 arithmetic, one rounding to the model's
dtype (transformers' bfloat16 arithmetic rounds cos, sin, both products and their sum). Equal to
``Rotary.apply`` in float32 (tests/test_torch_ops.py)."""

from __future__ import annotations

import torch

from erank_fast.ops.cpu_extension import cpu_kernels

DTYPES = (torch.float32, torch.bfloat16)


def rotary_kernel(device: torch.device, dtype: torch.dtype):
    """``rotary_(q, k, cos, sin)`` (q [N, Hq, D] and k [N, Hkv, D] rotated in place by float32
    cos/sin [N, D/2]) where the C++ kernel runs for this device and dtype, else None."""
    if device.type != "cpu" or dtype not in DTYPES:
        return None
    kernels = cpu_kernels()
    return kernels.rotary_ if kernels is not None else None
