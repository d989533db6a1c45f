"""One fix for TRL's GRPO on a CPU: score only the completion tokens.

TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``) computes per-token log-probs over
the vocabulary in fp32. On CUDA it gathers the positions with a label (the completion tokens)
first; on any device without Triton it scores *every* position of the batch and masks the
result afterwards, to keep tile shapes fixed for compilers. For ERank's think-off rollouts that
is ~300 prompt positions for 2 completion tokens: on the CPU the LM head's forward and backward
over all of them took ~30 % of a GRPO step. ``compact_lm_head_everywhere()`` makes the head take
the gathered (compact) path on every device: the same log-probs and gradients (the masked
positions contribute zero either way; tested), computed for the completion rows only. The
vocabulary kernels themselves are untouched (TRL picks Triton or its PyTorch tiles by device
on its own)."""

from __future__ import annotations


def compact_lm_head_everywhere() -> bool:
    """Patch TRL's fused LM head to gather labelled positions on every device. Returns whether
    the patch applied (False for a TRL without that hook: then nothing changes)."""
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        return False
    original = getattr(trl_utils, "_use_triton", None)
    if original is None or getattr(original, "erank_fast_compact", False):
        return original is not None

    def compact_positions(device) -> bool:  # read only to choose gathered vs all positions
        return True

    compact_positions.erank_fast_compact = True
    trl_utils._use_triton = compact_positions
    return True
