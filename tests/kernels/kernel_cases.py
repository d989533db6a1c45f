"""Inputs and tolerances shared by the kernel tests and benchmarks."""

from __future__ import annotations

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The Triton interpreter's bfloat16 arithmetic is wrong: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
TOLERANCE = {torch.float32: (2e-5, 2e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 2e-2)}


def randn(*shape, dtype=torch.float32, seed=None):
    g = torch.Generator(device="cpu")
    if seed is not None:
        g.manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


def cu(lengths) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=DEVICE)


def assert_close(got, want, dtype, what):
    atol, rtol = TOLERANCE[dtype]
    got, want = got.float(), want.float()
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), f"{what}: -inf pattern differs"
    err = (got[finite] - want[finite]).abs()
    bound = atol + rtol * want[finite].abs()
    worst = (err - bound).argmax() if err.numel() else None
    assert err.numel() == 0 or bool((err <= bound).all()), (
        f"{what} ({dtype}): max error {err.max().item():.3g}; worst got "
        f"{got[finite].flatten()[worst].item():.6g} want {want[finite].flatten()[worst].item():.6g}")


def arena(lengths, hkv, d, dtype, seed, gap=3):
    """K and V arenas [T, Hkv, D] holding ranges of the given lengths at gapped, out-of-order
    starts; rows nobody owns are NaN (never read). Returns (k, v, starts [len(lengths)])."""
    starts, row = [0] * len(lengths), gap
    for i in reversed(range(len(lengths))):
        starts[i] = row
        row += lengths[i] + gap
    k = randn(row, hkv, d, dtype=dtype, seed=seed)
    v = randn(row, hkv, d, dtype=dtype, seed=seed + 1)
    owned = torch.zeros(row, dtype=torch.bool)
    for s, n in zip(starts, lengths):
        owned[s : s + n] = True
    k[~owned.to(DEVICE)] = float("nan")
    v[~owned.to(DEVICE)] = float("nan")
    return k, v, torch.tensor(starts, device=DEVICE)
