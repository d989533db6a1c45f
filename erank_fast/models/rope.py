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


def _cos_sin(freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of float32 angles, as float32; on CPU taken in float64 and rounded once, the
    same tables in every process. ATen's float32 cos on CPU gave other last bits in about one
    process in ten (its first call; a 2-core Xeon), and through bfloat16 q and k a model's
    scores then moved by up to 0.14 between runs of one input. Rounded from float64, a last-bit
    difference there reaches a float32 table only at a rounding tie."""
    if freqs.device.type != "cpu":
        return freqs.cos(), freqs.sin()
    wide = freqs.double()
    return wide.cos().float(), wide.sin().float()


class Rotary(nn.Module):
    """RoPE with the checkpoint's inverse frequencies (default, linear, llama3 or yarn)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        with torch.device("cpu"):  # real values, also inside a meta-device build
            inv_freq, self.scaling = config.rope_inv_freq()
            # A process's first cos / sin can take another path than every later call (see
            # _cos_sin): made here, at load, rather than by the first step's tables.
            _cos_sin(torch.linspace(0.0, 8.0, 64))
            # CPU: the tables of positions 0 .. len - 1, made once (float64 cos / sin cost ~25x
            # float32's: 1.6 ms a step at 4096 positions) and grown as later positions come.
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
