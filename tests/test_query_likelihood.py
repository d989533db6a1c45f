"""Query likelihood (erank_fast.training.query_likelihood, train/query_likelihood.py): batched, left-padded query log-likelihoods equal one-at-a-time
ones, and the command resumes without rescoring finished queries."""

from __future__ import annotations

import json

import pytest
import torch

from erank_fast.training import query_likelihood as qlm


def _direct(model, tok, query: str, passage: str) -> float:
    prompt = tok.encode(qlm.PASSAGE_PROMPT.format(passage=passage), add_special_tokens=False)
    q = tok.encode(" " + query, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + q])).logits[0, len(prompt) - 1:-1].float()
    return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(q)[:, None]).sum())


def test_batched_equals_one_at_a_time(tiny_qwen3):
    model, tok = tiny_qwen3
    passages = ["a short one", "a much longer passage about measles vaccines and their doses",
                "x", "the third passage"]
    got = qlm.query_loglikelihoods(model, tok, "measles vaccine doses", passages, batch_size=3)
    want = [_direct(model, tok, "measles vaccine doses", p) for p in passages]
    assert got == pytest.approx(want, abs=1e-3)
    with pytest.raises(ValueError, match="empty query"):
        qlm.query_loglikelihoods(model, tok, "  ", passages)


def test_command_writes_and_resumes(tiny_qwen3, tmp_path, monkeypatch):
    model, tok = tiny_qwen3
    data = tmp_path / "data.jsonl"
    rows = [{"qid": f"q{i}", "query": f"query {i}",
             "candidates": [{"docid": f"d{j}", "text": f"passage {j}", "score": 1.0, "rank": j}
                            for j in range(3)]} for i in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    out.write_text(json.dumps({"qid": "q0", "docid": "d0", "score": -1.0}) + "\n")  # cut off
    loads = []
    monkeypatch.setattr("erank_fast.training.policy.load_float32_model",
                        lambda name: loads.append(name) or (model, tok))
    script = qlm  # train/query_likelihood.py runs qlm.main
    script.main(["--model", "tiny", "--data", str(data), "--out", str(out)])
    scores = qlm.read_scores(out)
    assert len(scores) == 6 and scores[("q0", "d0")] != -1.0  # the cut-off query was redone
    script.main(["--model", "tiny", "--data", str(data), "--out", str(out)])
    assert loads == ["tiny"] and len(out.read_text().splitlines()) == 7  # nothing rescored
