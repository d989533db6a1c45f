"""erank-smol, the packaged default reranker (and erank-smol-fast), end to end on real data
(CPU, its default dtype).

Its ranking quality is recorded in train/RESULTS.md and the README, not asserted here: these
tests check that it ships, loads offline and runs the evaluation within the CI budget."""

from __future__ import annotations

import json

import pytest

from erank_fast import cli
from erank_fast.evaluation.metrics import evaluate
from erank_fast.evaluation.trec import read_jsonl, read_qrels
from erank_fast.models.packaged import packaged_reranker


def test_erank_smol_ships_in_the_package():
    smol = packaged_reranker("erank-smol")
    assert smol.base == "smollm2-135m-instruct" and smol.settings["score_mode"] == "expected"
    weights = smol.adapter / "adapter_model.safetensors"
    assert 0 < weights.stat().st_size < 8 * 2**20  # a few MB


def test_erank_smol_fast_ships_with_the_doc_last_layout(smollm2_dir):
    """erank-smol-fast brings its prompt layout: everything before the document is one prefix,
    so each document's own tokens are its text and the end of the turn."""
    from erank_fast import Reranker

    fast = packaged_reranker("erank-smol-fast")
    assert fast.base == "smollm2-135m-instruct" and fast.settings["template"] == "doc-last"
    assert 0 < (fast.adapter / "adapter_model.safetensors").stat().st_size < 8 * 2**20
    rr = Reranker.from_pretrained("erank-smol-fast")
    assert rr.config.template == "doc-last" and rr.config.max_doc_tokens == 256
    doc = "Vaccines train the immune system to recognise a pathogen."
    prompts = rr.segment("how do vaccines work", [doc, "Bread needs yeast."], think_off=True)
    own = len(rr.tokenizer.encode(doc, add_special_tokens=False))
    assert len(prompts.suffixes[0]) - own <= 24  # SmolLM2: 19 (114 in ERank's layout)
    results = rr.rerank("how do vaccines work", [doc, "Bread needs yeast."])
    assert results[0].index == 0


def test_demo_ranks_the_relevant_documents_first(smollm2_dir, capsys):
    assert cli.main(["demo", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    assert len(rows) == len(cli.DEMO_DOCUMENTS)
    on_topic = {i for i, d in enumerate(cli.DEMO_DOCUMENTS)
                if any(w in d.lower() for w in ("vaccin", "immun"))}
    top = {r["index"] for r in rows[: len(on_topic)]}
    assert len(top & on_topic) >= len(on_topic) - 1, rows


def test_eval_dl19_five_queries_at_the_cpus_dtype(smollm2_dir, data_dir, tmp_path, capsys):
    """The dtype the CPU check picks (bfloat16 where it is fast, float32 on a CPU without
    bf16 kernels), as a user's `erank-fast eval` runs; each query's BM25 top 20 (`--depth`)."""
    out = tmp_path / "dl19-5.json"
    assert cli.main(["eval", "--model", "erank-smol",
                     "--data", str(data_dir / "dl19-bm25-top100.jsonl"),
                     "--qrels", str(data_dir / "dl19-bm25-top100.qrels"),
                     "--queries", "5", "--depth", "20", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["queries_evaluated"] == 5 and result["documents"] == 100
    queries = read_jsonl(data_dir / "dl19-bm25-top100.jsonl", depth=20)[:5]
    bm25, _ = evaluate({q.qid: {c.docid: c.score for c in q.candidates} for q in queries},
                       read_qrels(data_dir / "dl19-bm25-top100.qrels"))
    assert result["first_stage"] == pytest.approx(bm25, abs=1e-12)
    for key in ("reranked", "hybrid"):
        assert all(0.0 <= v <= 1.0 for v in result[key].values())
    assert set(result["per_query"]) == {q.qid for q in queries}
    assert result["prefill_tokens"] > 0 and result["decode_tokens"] == 0  # think="off"
    assert "ndcg@10" in capsys.readouterr().out
