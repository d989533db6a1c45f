"""Which implementation an op runs: the Triton kernel or the PyTorch reference."""

from __future__ import annotations

import math
import os

import torch

IMPLS = ("auto", "torch", "triton")
LOG2E = 1.4426950408889634


def use_triton(impl: str, tensor: torch.Tensor) -> bool:
    """"auto": Triton on CUDA, the reference elsewhere; "triton": always (on CPU only through
    the Triton interpreter, TRITON_INTERPRET=1 set before erank_fast.kernels is imported)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return False
    if impl == "auto":
        return tensor.is_cuda and triton_available()
    if not tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "Triton kernels on CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 "
            "before importing erank_fast, or use impl/backend 'torch'")
    if not triton_available():
        raise RuntimeError("Triton is not installed: pip install triton")
    return True


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs are multiplied exactly ("ieee"), never through TF32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def block_d(head_dim: int) -> int:
    return max(16, next_power_of_2(head_dim))


def max_segment(cu_seqlens: torch.Tensor) -> int:
    """Longest segment of a cu_seqlens tensor (one host sync; callers pass it when known)."""
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if cu_seqlens.numel() > 1 else 0


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(x, 1))))
