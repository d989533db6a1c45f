"""The same workload through vLLM with ERank's reference serving settings (prefix caching on,
temperature 0, logprobs=20), when vLLM is installed; skipped otherwise.

    pytest bench/vllm_baseline.py --benchmark-only
"""

from __future__ import annotations

import importlib.util

import pytest

from bench.bench_rerank import workload
from bench.hardware import DEVICE, bench

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or DEVICE.type != "cuda",
    reason="vLLM is not installed (or no GPU): the vLLM baseline is skipped")


@pytest.mark.parametrize("think", ["off", 64])
def test_vllm_rerank_one_query(benchmark, think, tmp_path):
    from vllm import LLM, SamplingParams

    from bench.bench_rerank import load
    from erank_fast import Reranker

    model, tok = load("qwen3-4b", __import__("torch").bfloat16)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    del model
    rr = Reranker.from_pretrained(str(tmp_path), think=think, backend="reference", device="cpu")
    query, docs = workload()
    prompts = [{"prompt_token_ids": rr.prompt_ids(query, d, think_off=think == "off")}
               for d in docs]
    llm = LLM(model=str(tmp_path), enable_prefix_caching=True, dtype="bfloat16")
    params = SamplingParams(temperature=0, max_tokens=1 if think == "off" else think + 8,
                            logprobs=20)
    benchmark.group = f"rerank qwen3-4b bfloat16 think={think}"
    seconds = bench(benchmark, lambda: llm.generate(prompts, params, use_tqdm=False), rounds=3)
    benchmark.extra_info.update(provider="vllm", docs_per_second=len(docs) / seconds,
                                latency_s=seconds, documents=len(docs))
