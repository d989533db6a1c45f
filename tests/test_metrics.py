"""Ranking metrics (trec_eval's definitions), fusion, and the evaluation command."""

from __future__ import annotations

import json
import math

import pytest

from erank_fast import cli
from erank_fast.evaluation.metrics import (
    evaluate,
    hybrid,
    ndcg,
    reciprocal_rank,
    zscores,
)
from erank_fast.evaluation.trec import read_jsonl, read_qrels


def test_ndcg_graded_by_hand():
    scores = {"a": 3.0, "b": 2.0, "c": 1.0}
    judged = {"a": 1, "b": 0, "c": 3, "z": 2}  # z is relevant but not retrieved
    dcg = 1 / math.log2(2) + 0 + 3 / math.log2(4)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg(scores, judged, 10) == pytest.approx(dcg / idcg)
    assert ndcg(scores, judged, 1) == pytest.approx(1 / 3)


def test_ties_break_by_docid_descending_like_trec_eval():
    scores = {"d1": 1.0, "d2": 1.0}
    assert ndcg(scores, {"d1": 1}, 1) == 0.0  # d2 comes first
    assert ndcg(scores, {"d2": 1}, 1) == 1.0


def test_reciprocal_rank_and_unjudged_documents():
    scores = {"a": 5.0, "b": 4.0, "c": 3.0}
    assert reciprocal_rank(scores, {"c": 2}, 10) == pytest.approx(1 / 3)
    assert reciprocal_rank(scores, {"c": 2}, 2) == 0.0
    assert reciprocal_rank(scores, {"x": 1}, 10) == 0.0


def test_queries_without_relevant_documents_are_left_out():
    run = {"q1": {"a": 1.0}, "q2": {"a": 1.0}}
    means, per_query = evaluate(run, {"q1": {"a": 1}, "q2": {"a": 0}})
    assert list(per_query) == ["q1"] and means["ndcg@10"] == 1.0


def test_hybrid_fusion_uses_population_zscores():
    z = zscores({"a": 1.0, "b": 3.0})
    assert z == {"a": -1.0, "b": 1.0}
    assert zscores({"a": 2.0, "b": 2.0}) == {"a": 0.0, "b": 0.0}
    fused = hybrid({"q": {"a": 10.0, "b": 0.0}}, {"q": {"a": 0.0, "b": 1.0}}, alpha=0.2)
    assert fused["q"]["a"] == pytest.approx(0.2 * 1 + 0.8 * -1)


@pytest.mark.parametrize("name,expected", [("dl19-bm25-top100", 0.5058),
                                           ("dl21-bm25-top100", 0.4458),
                                           ("noveleval-bm25-top20", 0.6503)])
def test_bm25_ndcg10_reproduces_the_published_figures(data_dir, name, expected):
    queries = read_jsonl(data_dir / f"{name}.jsonl")
    run = {q.qid: {c.docid: c.score for c in q.candidates} for q in queries}
    means, _ = evaluate(run, read_qrels(data_dir / f"{name}.qrels"))
    assert round(means["ndcg@10"], 4) == expected


def test_agrees_with_ir_measures(data_dir):
    ir_measures = pytest.importorskip("ir_measures")
    queries = read_jsonl(data_dir / "dl19-bm25-top100.jsonl")
    run = {q.qid: {c.docid: c.score for c in q.candidates} for q in queries}
    qrels = read_qrels(data_dir / "dl19-bm25-top100.qrels")
    theirs = ir_measures.calc_aggregate([ir_measures.nDCG @ 10, ir_measures.RR @ 10], qrels, run)
    ours, _ = evaluate(run, qrels)
    assert ours["ndcg@10"] == pytest.approx(theirs[ir_measures.nDCG @ 10], abs=1e-4)
    assert ours["mrr@10"] == pytest.approx(theirs[ir_measures.RR @ 10], abs=1e-4)


def test_eval_command_writes_results(data_dir, tiny_qwen3, tmp_path, capsys):
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "results.json"
    assert cli.main(["eval", "--model", str(tmp_path / "m"), "--data",
                     str(data_dir / "noveleval-bm25-top20.jsonl"), "--qrels",
                     str(data_dir / "noveleval-bm25-top20.qrels"), "--queries", "3", "--depth", "5",
                     "--out", str(out), "--save-run", str(tmp_path / "run.trec"),
                     "--save-distributions", str(tmp_path / "dist.json")]) == 0
    report = capsys.readouterr().out
    assert "first_stage" in report and "docs/s" in report
    result = json.loads(out.read_text())
    for key in ("first_stage", "reranked", "hybrid"):
        assert 0.0 <= result[key]["ndcg@10"] <= 1.0
    assert result["documents"] == 15 and result["docs_per_second"] > 0
    first_three = read_jsonl(data_dir / "noveleval-bm25-top20.jsonl")[:3]
    assert set(result["per_query"]) <= {q.qid for q in first_three}
    rows = [line.split() for line in (tmp_path / "run.trec").read_text().splitlines()]
    assert len(rows) == 15 and all(r[1] == "Q0" and r[5] == "erank_fast" for r in rows)
    for qid in {r[0] for r in rows}:
        mine = [r for r in rows if r[0] == qid]
        assert [int(r[3]) for r in mine] == list(range(1, len(mine) + 1))
        assert [float(r[4]) for r in mine] == sorted((float(r[4]) for r in mine), reverse=True)
    distributions = json.loads((tmp_path / "dist.json").read_text())
    assert {(q, d) for q, docs in distributions.items() for d in docs} == {
        (r[0], r[2]) for r in rows}
    for docs in distributions.values():  # over the whole vocabulary: little on a random model's
        for p in docs.values():          # digits, never below 0 or above 1 in all
            assert len(p) == 11 and all(x >= 0 for x in p) and 0 < sum(p) <= 1 + 1e-6


def test_eval_command_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": 1}\n')
    qrels = tmp_path / "q.qrels"
    qrels.write_text("1 0 d 1\n")
    assert cli.main(["eval", "--data", str(bad), "--qrels", str(qrels)]) == 2
    assert "not a reranking record" in capsys.readouterr().err



def test_qrels_with_a_bad_grade_names_the_file_and_line(tmp_path):
    from erank_fast.evaluation.trec import read_qrels

    qrels = tmp_path / "q.qrels"
    qrels.write_text("1 0 d1 2\n\n1 0 d2 high\n")
    with pytest.raises(ValueError, match=r"q\.qrels:3: expected 'qid iteration docid grade'"):
        read_qrels(qrels)
    qrels.write_text("1 0 d1\n")
    with pytest.raises(ValueError, match=r"q\.qrels:1: .*3 fields"):
        read_qrels(qrels)


def _beir(tmp_path, corpus: str, queries: str, run: str):
    paths = [tmp_path / name for name in ("corpus.jsonl", "queries.jsonl", "run.trec")]
    for path, text in zip(paths, (corpus, queries, run)):
        path.write_text(text)
    return paths


def test_beir_files_read_as_queries_with_their_first_stage_order(tmp_path):
    from erank_fast.evaluation.trec import read_beir

    files = _beir(tmp_path,
                  '{"_id": "d1", "title": "Tides", "text": "the moon pulls"}\n'
                  '{"_id": "d2", "text": "sea level"}\n',
                  '{"_id": "q1", "text": "what causes tides"}\n',
                  "q1 Q0 d2 2 1.5 bm25\n\nq1 Q0 d1 1 3.0 bm25\nq1 Q0 gone 3 0.5 bm25\n")
    (query,) = read_beir(*files)
    assert query.qid == "q1" and query.text == "what causes tides"
    # best first by the run's score; a document the corpus lacks is skipped
    assert [(c.docid, c.text, c.score) for c in query.candidates] == [
        ("d1", "Tides\nthe moon pulls", 3.0), ("d2", "sea level", 1.5)]
    assert [c.docid for c in read_beir(*files, depth=1)[0].candidates] == ["d1"]


@pytest.mark.parametrize("corpus, queries, run, message", [
    ('{"_id": "d1", "text": "x"}\nnot json\n', '{"_id": "q1", "text": "q"}\n',
     "q1 Q0 d1 1 1.0 t\n", r"corpus\.jsonl:2: not a BEIR corpus record"),
    ('{"_id": "d1"}\n', '{"_id": "q1", "text": "q"}\n', "q1 Q0 d1 1 1.0 t\n",
     r"corpus\.jsonl:1: not a BEIR corpus record .*'text'"),
    ('{"_id": "d1", "text": "x"}\n', '["q1", "q"]\n', "q1 Q0 d1 1 1.0 t\n",
     r"queries\.jsonl:1: not a BEIR query record"),
    ('{"_id": "d1", "text": "x"}\n', '{"_id": "q1", "text": "q"}\n', "q1 Q0 d1\n",
     r"run\.trec:1: expected 'qid Q0 docid rank score tag' \(3 fields\)"),
    ('{"_id": "d1", "text": "x"}\n', '{"_id": "q1", "text": "q"}\n', "q1 Q0 d1 1 high t\n",
     r"run\.trec:1: expected 'qid Q0 docid rank score tag'"),
    ('{"_id": "d1", "text": "x"}\n', '{"_id": "q1", "text": "q"}\n',
     "q1 Q0 d1 1 1.0 t\nq9 Q0 d1 1 1.0 t\n", r"run\.trec: queries not in .*queries\.jsonl: q9"),
])
def test_malformed_beir_files_are_errors_naming_the_file(tmp_path, corpus, queries, run, message):
    from erank_fast.evaluation.trec import read_beir

    with pytest.raises(ValueError, match=message):
        read_beir(*_beir(tmp_path, corpus, queries, run))


class _FixedReranker:
    """Scores each document by a fixed table, in the shape ``run_evaluation`` reads."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def rerank_many(self, queries, documents_per_query):
        from erank_fast.results import CallStats, RerankResult, RerankResults

        stats = CallStats(seconds=0.1, documents=0, prefill_tokens=7, decode_tokens=0)
        return [RerankResults([RerankResult(i, self.scores[t], None, 1.0, (), 0, None, t)
                               for i, t in enumerate(docs)], stats)
                for docs in documents_per_query]


def test_hybrid_order_row_fuses_the_first_stage_ranking_alone():
    """The eval's "hybrid_order" row is the hybrid with the first stage's ranking (best n ... last
    1, ties in input order), whatever its scores: what first_stage_scores="order" computes."""
    from erank_fast.evaluation.runner import ranking_scores, run_evaluation
    from erank_fast.evaluation.trec import Candidate, Query

    ties = (Candidate("a", "", 9.0), Candidate("b", "", 3.0), Candidate("c", "", 3.0),
            Candidate("d", "", 12.0))
    assert ranking_scores(ties) == {"d": 4.0, "a": 3.0, "b": 2.0, "c": 1.0}
    cands = (Candidate("d", "td", 30.0), Candidate("a", "ta", 9.0), Candidate("b", "tb", 3.0),
             Candidate("c", "tc", 2.5))
    model = {"ta": 0.0, "tb": 0.3, "tc": 0.1, "td": 0.6}
    qrels = {"q": {"a": 1, "c": 2}}
    result = run_evaluation(_FixedReranker(model), [Query("q", "query", cands)], qrels,
                            progress=False)
    by_order = hybrid({"q": {"d": 4.0, "a": 3.0, "b": 2.0, "c": 1.0}},
                      {"q": {"a": 0.0, "b": 0.3, "c": 0.1, "d": 0.6}}, 0.2)
    assert result["hybrid_order"] == evaluate(by_order, qrels)[0]
    assert result["hybrid_order"] != result["hybrid"]  # the scores' gaps are not the ranking's
    assert set(result["per_query"]["q"]) == {"first_stage", "reranked", "hybrid", "hybrid_order"}


def test_trec_run_round_trip_and_bad_lines(tmp_path):
    from erank_fast.evaluation.trec import read_trec_run, write_trec_run

    run = {"q1": {"d1": 0.25, "d2": 3.5, "d3": -1.0}, "q2": {"d9": 7.125}}
    path = tmp_path / "run.trec"
    write_trec_run(run, path)
    assert read_trec_run(path) == run
    path.write_text("q1 Q0 d1 1\n")
    with pytest.raises(ValueError, match=r"run\.trec:1: expected 'qid Q0 docid rank score tag'"):
        read_trec_run(path)
