"""Rotary position embedding (RoPE): the checkpoint's inverse frequencies, the cos / sin tables
of a forward pass's positions, and their application to q and k (the C++ kernel on CPU,
transformers' arithmetic elsewhere)."""

from __future__ import annotations

import torch
from torch import nn

from erank_fast.models.decoder_config import DecoderConfig
from erank_fast.ops.rotary import rotary_kernel


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# Elements per cos / sin call on CPU: under ATen's parallel grain (32,768), so one thread
# computes each call whatever the thread count, and a multiple of every vector width, so every
# element takes the vectorized (SLEEF) path and none the scalar tail.
COS_SIN_CHUNK = 16384


def _cos_sin(freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of float32 angles, as float32: on CPU ATen's vectorized float32 cos / sin,
    the arithmetic of transformers' tables (the reference's, bit for bit for the rows of a
    document), taken in chunks of ``COS_SIN_CHUNK`` elements so that no element's bits depend
    on how the call is split between threads. A process's first call can give other last bits
    (about one process in ten on a 2-core Xeon; through bfloat16 q and k the scores then moved
    by up to 0.14): ``Rotary`` makes that call at load."""
    if freqs.device.type != "cpu":
        return freqs.cos(), freqs.sin()
    flat = freqs.contiguous().view(-1)
    cos, sin = torch.empty_like(flat), torch.empty_like(flat)
    for start in range(0, flat.numel(), COS_SIN_CHUNK):
        part = flat[start:start + COS_SIN_CHUNK]
        torch.cos(part, out=cos[start:start + COS_SIN_CHUNK])
        torch.sin(part, out=sin[start:start + COS_SIN_CHUNK])
    return cos.view(freqs.shape), sin.view(freqs.shape)


class Rotary(nn.Module):
    """RoPE with the checkpoint's inverse frequencies (default, linear, llama3 or yarn)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        with torch.device("cpu"):  # real values, also inside a meta-device build
            inv_freq, self.scaling = config.rope_inv_freq()
            # A process's first cos / sin can give other bits than every later call (see
            # _cos_sin): made here, at load, rather than by the first step's tables.
            _cos_sin(torch.linspace(0.0, 8.0, COS_SIN_CHUNK))
            # CPU: the tables of positions 0 .. len - 1, made once and grown as later
            # positions come.
            self._cpu_tables = (torch.empty(0, inv_freq.numel()),) * 2
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def half_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos and sin [N, head_dim // 2] of the positions (scaling applied)."""
        if positions.device.type != "cpu":
            return self._tables(positions)
        cos, sin = self._cpu_tables
        if positions.numel() and int(positions.max()) >= cos.shape[0]:
            n = int(positions.max()) + 1
            rows = max(1024, 1 << (n - 1).bit_length())  # a power of two: few regrowths
            cos, sin = self._cpu_tables = self._tables(torch.arange(rows, device="cpu"))
        return cos[positions], sin[positions]

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos and sin [N, 1, head_dim] in ``dtype``, for ``apply``."""
        cos, sin = self.half_tables(positions)
        return (torch.cat((cos, cos), dim=-1).to(dtype)[:, None, :],
                torch.cat((sin, sin), dim=-1).to(dtype)[:, None, :])

    def _tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq.to(positions.device)[None, :]
        cos, sin = _cos_sin(freqs)
        return cos.mul_(self.scaling), sin.mul_(self.scaling)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return x * cos + _rotate_half(x) * sin


class Rotation:
    """The rotation of one forward pass's positions, applied to each layer's q and k: on CPU
    the C++ kernel rotates them in place in float32 (one rounding); elsewhere transformers'
    arithmetic in the model's dtype."""

    def __init__(self, rotary: Rotary, positions: torch.Tensor, dtype: torch.dtype):
        self.kernel = rotary_kernel(positions.device, dtype)
        if self.kernel is not None:
            self.cos, self.sin = rotary.half_tables(positions)
        else:
            self.cos, self.sin = rotary.cos_sin(positions, dtype)

    def __call__(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kernel is not None:
            self.kernel(q, k, self.cos, self.sin)
            return q, k
        return Rotary.apply(q, self.cos, self.sin), Rotary.apply(k, self.cos, self.sin)
