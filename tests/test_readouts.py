"""Score readouts and fusions compared on saved distributions (train/readouts.py; what
``erank-fast eval --save-distributions`` writes is tested with the eval command, test_metrics)."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("scipy.stats")

from erank_fast.evaluation.metrics import evaluate, hybrid  # noqa: E402
from tests.helpers import load_script  # noqa: E402

readouts = load_script("readouts")


def one_hot(s: int) -> list[float]:
    return [1.0 if i == s else 0.0 for i in range(11)]


def test_readouts_of_known_distributions():
    uniform = [1 / 11] * 11
    skewed = [0.5, 0.2, 0.1, 0.05, 0.05, 0.04, 0.03, 0.01, 0.01, 0.005, 0.005]
    for name, readout in readouts.READOUTS.items():
        assert math.isfinite(readout(one_hot(0))), name  # p = 0 elsewhere stays finite
    assert readouts.expected(one_hot(7)) == 7 and readouts.expected(uniform) == pytest.approx(5)
    for t in (0.5, 2.0):  # tempering moves neither a certain score nor a flat distribution
        assert readouts.tempered(t)(one_hot(7)) == pytest.approx(7)
        assert readouts.tempered(t)(uniform) == pytest.approx(5)
    assert readouts.tempered(1.0)(skewed) == pytest.approx(readouts.expected(skewed))
    assert readouts.tempered(0.5)(skewed) < readouts.expected(skewed) < readouts.tempered(2)(skewed)
    assert readouts.READOUTS["argmax s × p(s)"](one_hot(7)) == 7
    assert readouts.log_odds(3)(skewed) == pytest.approx(math.log(0.2 / 0.8))
    assert readouts.READOUTS["−log p(0)"](skewed) == pytest.approx(math.log(2))


def test_rrf_weights_the_two_rankings():
    first, model = {"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 0.1, "b": 0.9, "c": 0.5}

    def order(scores):
        return sorted(scores, key=lambda d: -scores[d])

    assert order(readouts.rrf(first, model, 0.0)) == ["b", "c", "a"]
    assert order(readouts.rrf(first, model, 1.0)) == ["a", "b", "c"]


def test_table_compares_with_the_served_readout(tmp_path, capsys):
    """Two sets and their pool: the served rows are the eval's reranked and hybrid figures (the
    expected score and its z-score fusion), every other row is paired with them."""
    first = {"q1": {"d1": 9.0, "d2": 5.0, "d3": 1.0}, "q2": {"e1": 4.0, "e2": 3.0, "e3": 2.0}}
    dists = {"q1": {"d1": one_hot(1), "d2": one_hot(8), "d3": [0.5] + [0.05] * 10},
             "q2": {"e1": one_hot(3), "e2": [0.2] * 5 + [0.0] * 5 + [0.0], "e3": one_hot(9)}}
    qrels = {"q1": {"d2": 2, "d3": 1}, "q2": {"e1": 1, "e3": 2}}
    values = readouts.per_query_ndcg(first, dists, qrels, 0.2)
    run = {q: {d: readouts.expected(p) for d, p in docs.items()} for q, docs in dists.items()}
    for name, r in (("expected (served)", run), ("expected (served) z", hybrid(first, run, 0.2))):
        assert values[name] == {q: v["ndcg@10"] for q, v in evaluate(r, qrels)[1].items()}

    sets = []
    for i in range(2):
        data, qr, dist = (tmp_path / f"{i}.jsonl", tmp_path / f"{i}.qrels", tmp_path / f"{i}.json")
        data.write_text("".join(json.dumps({"qid": q, "query": q, "candidates": [
            {"docid": d, "text": d, "score": s} for d, s in first[q].items()]}) + "\n"
            for q in first))
        qr.write_text("".join(f"{q} 0 {d} {g}\n" for q in qrels for d, g in qrels[q].items()))
        dist.write_text(json.dumps(dists))
        sets += ["--set", str(data), str(qr), str(dist)]
    assert readouts.main(sets) == 0
    out = capsys.readouterr().out
    assert "pooled (4 queries" in out and out.count("| expected (served) |") == 3
    assert "| −log p(0) |" in out
    with pytest.raises(ValueError, match="no candidates for 1 queries"):
        readouts.load_set(str(tmp_path / "0.jsonl"), str(tmp_path / "0.qrels"),
                          _write(tmp_path / "extra.json", {**dists, "q9": {}}))


def _write(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)
