"""Engine decode steps at a large batch: one query, many documents reasoning in lock-step.

One decode step's time is the difference between two reasoning budgets divided by the extra
steps (the prefill and the forced answer are the same in both runs). It is compared with the
memory floor of a step: the weights (with the lm_head the score head streams), the prefix K/V
once, and every document's own K/V. CUDA: Qwen3-4B shapes, bf16, 256 documents of 256 tokens,
decode steps replayed from CUDA graphs and eager; CPU: a small Qwen3, eager.
"""

from __future__ import annotations

import random
import time

import pytest
import torch

from bench.bench_rerank import setup
from bench.hardware import DEVICE, bench, device_name, peaks, sync
from erank_fast import Reranker
from tests.kernels.kernel_cases import SMOKE

if SMOKE:
    MODEL, DOCS, DOC_TOKENS, BUDGETS = ("qwen3-small", torch.float32), 4, 16, (1, 2)
    GRAPHS = ["off"]
elif DEVICE.type == "cuda":
    MODEL, DOCS, DOC_TOKENS, BUDGETS = ("qwen3-4b", torch.bfloat16), 256, 256, (16, 48)
    GRAPHS = ["on", "off"]
else:
    MODEL, DOCS, DOC_TOKENS, BUDGETS = ("qwen3-small", torch.float32), 32, 128, (2, 6)
    GRAPHS = ["off"]
QUERY = "how long is the life cycle of a flea"


def documents() -> list[str]:
    rng = random.Random(1)
    words = "the of and to in is that for it as was with be by on not he this are or his".split()
    return [" ".join(rng.choice(words) for _ in range(DOC_TOKENS)) for _ in range(DOCS)]


def step_bytes(model, prefix: int, own: float) -> float:
    """Bytes one decode step must read: parameters (the embedding rows only as the lm_head,
    once), the prefix K/V once, and the own K/V of every document."""
    c = model.config
    itemsize = next(model.parameters()).element_size()
    kv_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * itemsize
    params = sum(p.numel() for p in model.parameters())
    return params * itemsize + kv_per_token * (prefix + DOCS * own)


def _seconds(rr, docs, rounds: int = 3) -> tuple[float, object]:
    times, results = [], None
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        results = rr.rerank(QUERY, docs)
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], results


@pytest.mark.parametrize("graphs", GRAPHS)
def test_decode_step(benchmark, graphs):
    model, tok, _ = setup(*MODEL)
    docs = documents()
    short, long = (Reranker.from_pretrained(model, tokenizer=tok, think=t, cuda_graphs=graphs,
                                            max_doc_tokens=DOC_TOKENS) for t in BUDGETS)
    short.rerank(QUERY, docs)  # warm-up: kernels compiled, graphs captured
    t_short, short_results = _seconds(short, docs, rounds=1 if SMOKE else 3)
    box = {}

    def fn():
        box["results"] = long.rerank(QUERY, docs)

    benchmark.group = f"decode step {MODEL[0]} batch {DOCS}"
    t_long = bench(benchmark, fn, rounds=3, warmup=1)
    extra = BUDGETS[1] - BUDGETS[0]
    step = (t_long - t_short) / extra
    decoded = box["results"].stats.decode_tokens - short_results.stats.decode_tokens
    prompts = long.segment(QUERY, docs)
    prefix = len(prompts.prefix)
    own = sum(map(len, prompts.suffixes)) / DOCS + sum(BUDGETS) / 2  # mean over the extra steps
    info = {"provider": f"erank_fast graphs {graphs}", "device": device_name(),
            "step_ms": step * 1e3, "batch": DOCS, "lockstep": decoded == DOCS * extra,
            "decode_tokens_extra": decoded, "own_context": own}
    bytes_moved = step_bytes(model, prefix, own)
    _, peak_bw = peaks()
    info["gbps"] = bytes_moved / step / 1e9
    if peak_bw:
        info["roofline_floor_s"] = bytes_moved / peak_bw
        info["roofline_fraction"] = info["roofline_floor_s"] / step
    benchmark.extra_info.update(info)
