"""Score head: erank_fast's vocabulary-streaming head (max, argmax, LSE, 10 digit logits)
against the generic path (full lm_head logits + log_softmax + gather + argmax) and the chunked
PyTorch reference. Peak memory is recorded on CUDA."""

from __future__ import annotations

import pytest
import torch

from erank_fast.ops.score_head import score_head
from erank_fast.reference.score_head import score_head_ref
from hardware import DEVICE, bench, roofline_info

if DEVICE.type == "cuda":
    DTYPE, HIDDEN, VOCAB, BATCHES = torch.bfloat16, 2560, 151936, [1, 64, 256]
else:
    DTYPE, HIDDEN, VOCAB, BATCHES = torch.float32, 576, 49152, [16, 64]

DIGITS = torch.arange(15, 25)


def full_logits(hidden, weight, ids):
    logits = hidden @ weight.T
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(1, ids[None].expand(hidden.shape[0], -1)), logits.argmax(-1)


@pytest.mark.parametrize("provider", ["erank_fast", "full_logits", "reference"])
@pytest.mark.parametrize("batch", BATCHES)
def test_score_head(benchmark, batch, provider):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, HIDDEN, generator=g).to(DEVICE, DTYPE)
    weight = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.02).to(DEVICE, DTYPE)
    ids = DIGITS.to(DEVICE)
    fn = {"erank_fast": lambda: score_head(hidden, weight, ids),
          "full_logits": lambda: full_logits(hidden, weight, ids),
          "reference": lambda: score_head_ref(hidden, weight, ids)}[provider]
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    benchmark.group = f"score-head B={batch} V={VOCAB}"
    seconds = bench(benchmark, fn)
    itemsize = torch.finfo(DTYPE).bits // 8
    flops = 2 * batch * VOCAB * HIDDEN
    bytes_moved = itemsize * (VOCAB * HIDDEN + batch * HIDDEN)
    benchmark.extra_info.update(roofline_info(seconds, flops, bytes_moved))
    benchmark.extra_info.update(provider=provider, batch=batch, vocab=VOCAB, dtype=str(DTYPE))
    if DEVICE.type == "cuda":
        benchmark.extra_info["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
