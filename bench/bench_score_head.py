"""Score head: erank_fast's vocabulary-streaming head (max, argmax, LSE, 10 digit logits), as a
Triton kernel (CUDA) and as its PyTorch path, against the generic read (full lm_head logits +
log_softmax + gather + argmax). Peak memory is recorded on CUDA."""

from __future__ import annotations

import pytest
import torch

from bench.hardware import DEVICE, bench, roofline_info
from erank_fast.ops.score_head import score_head
from tests.kernels.kernel_cases import BENCH, full_logits_head, randn

B = BENCH


@pytest.mark.parametrize("provider", ["triton", "torch", "full_logits"])
@pytest.mark.parametrize("rows", B["rows"])
def test_score_head(benchmark, rows, provider):
    if provider == "triton" and DEVICE.type != "cuda":
        pytest.skip("Triton kernels are timed on CUDA only (the CPU interpreter checks them)")
    hidden = randn(rows, B["hidden"], dtype=B["dtype"], seed=0)
    weight = randn(B["vocab"], B["hidden"], dtype=B["dtype"], seed=1) * 0.02
    ids = torch.arange(15, 25, device=DEVICE)
    fn = {"triton": lambda: score_head(hidden, weight, ids, impl="triton"),
          "torch": lambda: score_head(hidden, weight, ids, impl="torch"),
          "full_logits": lambda: full_logits_head(hidden, weight, ids)}[provider]
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    benchmark.group = f"score-head B={rows} V={B['vocab']}"
    seconds = bench(benchmark, fn)
    itemsize = torch.finfo(B["dtype"]).bits // 8
    flops = 2 * rows * B["vocab"] * B["hidden"]
    bytes_moved = itemsize * (B["vocab"] * B["hidden"] + rows * B["hidden"])
    benchmark.extra_info.update(roofline_info(seconds, flops, bytes_moved))
    benchmark.extra_info.update(provider=provider, batch=rows, vocab=B["vocab"],
                                dtype=str(B["dtype"]))
    if DEVICE.type == "cuda":
        benchmark.extra_info["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
