"""Dense teacher scores from a sentence-transformers model (erank_fast.training.teachers,
train/teacher_scores.py): every candidate of every query and pseudo-query is scored, the
bi-encoder path equals scoring one query at a time, and all-MiniLM-L6-v2 ranks a relevant
passage first."""

from __future__ import annotations

import json

import pytest

from erank_fast.evaluation.trec import Candidate, Query
from erank_fast.training import teachers
from erank_fast.training.teachers import DenseTeacher, pseudo_qid

pytest.importorskip("sentence_transformers")

PASSAGES = ["The measles vaccine is given in two doses, at 12 months and at 4 years.",
            "The stock market closed higher on Friday after strong earnings reports.",
            "Tides are caused by the gravitational pull of the moon and the sun."]


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory):
    package = pytest.importorskip("all_minilm_l6_v2")
    return package.extract_model(str(tmp_path_factory.mktemp("teachers")))


def _queries():
    return [Query("q1", "when is the measles vaccine given",
                  tuple(Candidate(f"d{i}", t, 0.0) for i, t in enumerate(PASSAGES))),
            Query("q2", "what causes tides",
                  tuple(Candidate(f"d{i}", t, 0.0) for i, t in enumerate(reversed(PASSAGES))))]


def test_bi_encoder_scores_every_pair_and_ranks_the_relevant_first(minilm_dir):
    teacher = DenseTeacher(minilm_dir, progress=False)
    assert teacher.bi_encoder
    pseudo = [{"qid": "q1", "docid": "d2", "query": "why does the sea rise and fall"},
              {"qid": "nope", "docid": "d0", "query": "left out: no such query"}]
    rows = list(teacher.score_queries(_queries(), pseudo))
    assert len(rows) == 9
    by_query = {}
    for r in rows:
        by_query.setdefault(r["qid"], {})[r["docid"]] = r["score"]
    assert set(by_query) == {"q1", "q2", pseudo_qid(pseudo[0])}
    assert max(by_query["q1"], key=by_query["q1"].get) == "d0"
    assert max(by_query["q2"], key=by_query["q2"].get) == "d0"  # the tides passage, reversed
    assert max(by_query["q1:pq:d2"], key=by_query["q1:pq:d2"].get) == "d2"
    # Encoding every text once gives what scoring each query alone gives.
    for q in _queries():
        alone = teacher.score(q.text, [c.text for c in q.candidates])
        assert [by_query[q.qid][c.docid] for c in q.candidates] == pytest.approx(alone, abs=1e-5)


def test_command_writes_jsonl_and_refuses_to_overwrite(minilm_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({
        "qid": q.qid, "query": q.text,
        "candidates": [{"docid": c.docid, "text": c.text, "score": 0.0} for c in q.candidates]})
        + "\n" for q in _queries()))
    out = tmp_path / "teacher.jsonl"
    script = teachers  # train/teacher_scores.py runs teachers.main
    script.main(["--teacher", str(minilm_dir), "--data", str(data), "--max_queries", "1",
                 "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["qid"], r["docid"]) for r in rows] == [("q1", "d0"), ("q1", "d1"), ("q1", "d2")]
    assert not (tmp_path / "teacher.jsonl.partial").exists()
    with pytest.raises(SystemExit):
        script.main(["--teacher", str(minilm_dir), "--data", str(data), "--out", str(out)])


def test_not_a_model_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a sentence-transformers model directory"):
        DenseTeacher(tmp_path)
