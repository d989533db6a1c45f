"""erank_fast.training.pseudo_queries, train/pseudo_queries.py and the pseudo-query groups of the listwise objective: generated
questions are cleaned and filtered, the command writes only usable ones, groups hold the source
passage as the one relevant document with same-topic and other-topic negatives, the teacher's
consistency filter keeps the questions it matches to their own passage, and
``--lora_layers_from`` adapts only the upper decoder layers."""

from __future__ import annotations

import itertools
import json

import pytest

pytest.importorskip("datasets")


from erank_fast.evaluation.trec import Candidate, Query
from erank_fast.prompt import PromptBuilder
from erank_fast.scoring import ScoreTokens
from erank_fast.training import listwise
from erank_fast.training import pseudo_queries as pq
from erank_fast.training.policy import lora_targets


def test_clean_question_keeps_the_first_line_up_to_its_question_mark():
    assert pq.clean_question(" What is a nephron? It filters blood.\nQuestion: x") == \
        "What is a nephron?"
    assert pq.clean_question("How are vaccines stored\nmore") == "How are vaccines stored"
    assert pq.clean_question("\n\n") == ""


@pytest.mark.parametrize("question, usable", [
    ("What does a measles vaccine contain?", True),
    ("What is the main idea of the passage?", False),          # nothing from the passage
    ("What is the answer to the question: What is the answer to the question:", False),
    ("Why?", False),                                             # too short
])
def test_usable_questions(question, usable):
    passage = "The measles vaccine contains a live, weakened virus and is given in two doses."
    assert pq.usable(question, passage) is usable


def _queries():
    return [Query(f"q{i}", f"query {i}",
                  tuple(Candidate(f"q{i}d{j}", f"topic {i} passage {j}", 0.0) for j in range(6)))
            for i in range(3)]


def test_pseudo_query_groups(tiny_qwen3):
    _, tok = tiny_qwen3
    builder, tokens = PromptBuilder(tok), ScoreTokens.from_tokenizer(tok)
    pseudo = [{"qid": "q0", "docid": "q0d2", "query": "what about topic 0"},
              {"qid": "q1", "docid": "q1d0", "query": "what about topic 1"},
              {"qid": "held-out", "docid": "x", "query": "not a training query"}]
    rows = listwise.pseudo_query_examples(pseudo, _queries(), builder, tokens, docs_per_query=6,
                                          first_group=7, seed=0)
    assert [r["group"] for r in rows] == [7] * 6 + [8] * 6   # the unknown query is left out
    first = rows[:6]
    assert [r["grade"] for r in first] == [2, 0, 0, 0, 0, 0]
    assert first[0]["input_ids"] == (builder.prompt_ids("what about topic 0", "topic 0 passage 2",
                                                        think_off=True) + [tokens.one])
    texts = [tok.decode(r["input_ids"]) for r in first[1:]]
    same = [t for t in texts if "topic 0 passage" in t]
    assert len(same) == 2 and not any("topic 0 passage 2" in t for t in same)
    assert all("topic 0 passage" in t or "topic 1 passage" in t or "topic 2 passage" in t
               for t in texts)
    alone = listwise.pseudo_query_examples(pseudo[:1], _queries()[:1], builder, tokens,
                                           docs_per_query=6, first_group=0)
    assert [r["grade"] for r in alone] == [2, 0, 0, 0, 0, 0]  # one query: its own negatives
    assert not listwise.pseudo_query_examples(pseudo[:1], _queries()[:1], builder, tokens,
                                              docs_per_query=7, first_group=0)
    with pytest.raises(ValueError, match="not a candidate"):
        listwise.pseudo_query_examples([{"qid": "q0", "docid": "q1d0", "query": "x"}],
                                       _queries(), builder, tokens, docs_per_query=6,
                                       first_group=0)


def test_command_writes_usable_questions(tiny_qwen3, tmp_path, monkeypatch):
    model, tok = tiny_qwen3
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({
        "qid": q.qid, "query": q.text,
        "candidates": [{"docid": c.docid, "text": c.text, "score": 0.0} for c in q.candidates]})
        + "\n" for q in _queries()))
    answers = itertools.cycle(["What is topic 0 about?", "The answer", "What does passage 3 say?"])
    script = pq  # train/pseudo_queries.py runs pq.main
    monkeypatch.setattr("erank_fast.training.policy.load_float32_model", lambda name: (model, tok))
    monkeypatch.setattr(script, "generate_questions",
                        lambda m, t, passages, **kw: [next(answers) for _ in passages])
    out = tmp_path / "pseudo.jsonl"
    script.main(["--data", str(data), "--out", str(out), "--max_queries", "2", "--per-query", "3"])
    rows = pq.read_pseudo_queries(out)
    assert {r["qid"] for r in rows} <= {"q0", "q1"}
    assert all(pq.usable(r["query"], next(c.text for q in _queries() for c in q.candidates
                                          if c.docid == r["docid"])) for r in rows)
    assert 0 < len(rows) < 6
    with pytest.raises(SystemExit):            # an existing output is never overwritten
        script.main(["--data", str(data), "--out", str(out)])
    more = tmp_path / "more.jsonl"             # a second draw skips the passages already used
    script.main(["--data", str(data), "--out", str(more), "--max_queries", "2",
                 "--per_query", "6", "--exclude", str(out)])
    before = {(r["qid"], r["docid"]) for r in rows}
    after = {(r["qid"], r["docid"]) for r in pq.read_pseudo_queries(more)}
    assert after and not before & after


def test_consistency_filter_keeps_questions_the_teacher_matches_to_their_passage():
    """A pseudo-query stays when the teacher ranks its source passage within the first k of the
    source query's candidates (ties in its favour); unknown real queries are left out, and a
    source outside its query's candidates is an error."""
    from erank_fast.training.teachers import pseudo_qid

    queries = _queries()
    pseudo = [{"qid": "q0", "docid": "q0d5", "query": "matched"},     # teacher's first
              {"qid": "q0", "docid": "q0d1", "query": "tied"},        # level with the first
              {"qid": "q1", "docid": "q1d0", "query": "unmatched"},   # teacher's last
              {"qid": "q9", "docid": "q9d0", "query": "no query"}]
    teacher = {}
    for p in pseudo[:3]:
        for j, c in enumerate(next(q for q in queries if q.qid == p["qid"]).candidates):
            teacher[(pseudo_qid(p), c.docid)] = float(j)
    teacher[(pseudo_qid(pseudo[1]), "q0d1")] = 5.0  # ties q0d5, the top score
    kept = listwise.consistent_pseudo_queries(pseudo, queries, teacher, 1)
    assert [p["query"] for p in kept] == ["matched", "tied"]
    assert [p["query"] for p in listwise.consistent_pseudo_queries(pseudo, queries, teacher, 6)] \
        == ["matched", "tied", "unmatched"]
    with pytest.raises(ValueError, match="top_k"):
        listwise.consistent_pseudo_queries(pseudo, queries, teacher, 0)
    stray = [{"qid": "q0", "docid": "q1d0", "query": "x"}]
    teacher.update({(pseudo_qid(stray[0]), c.docid): 0.0 for c in queries[0].candidates})
    with pytest.raises(ValueError, match="not a candidate"):
        listwise.consistent_pseudo_queries(stray, queries, teacher, 1)


def test_generate_questions_runs_on_a_model(tiny_qwen3):
    model, tok = tiny_qwen3
    questions = pq.generate_questions(model, tok, ["a passage", "another, longer passage"],
                                      max_new_tokens=4, batch_size=2)
    assert len(questions) == 2 and all(isinstance(q, str) and "\n" not in q for q in questions)


@pytest.mark.parametrize("flags, message", [
    (["--pseudo_queries", "p.jsonl"], "needs --objective listwise"),
    (["--objective", "listwise", "--lora_layers_from", "1", "--use_lora", "false"],
     "needs --use_lora true"),
    (["--adapter", "a"], "needs --train_adapter true"),
    (["--train_adapter", "true"], "needs --adapter DIR"),
    (["--adapter", "a", "--train_adapter", "true", "--lora_layers_from", "1"],
     "drop --lora_layers_from"),
    (["--objective", "listwise", "--pseudo_queries", "p.jsonl", "--pseudo_query_top_k", "3"],
     "needs --pseudo_queries and --teacher_scores"),
    (["--objective", "listwise", "--pseudo_query_top_k", "-1"], "must be >= 0"),
])
def test_sft_refuses_flags_that_would_be_ignored(flags, message, tmp_path):
    from trl import SFTConfig, TrlParser

    from erank_fast.training.arguments import SFTScriptArguments, check_sft_arguments

    args, _ = TrlParser((SFTScriptArguments, SFTConfig)).parse_args_and_config(
        ["--output_dir", str(tmp_path), "--bf16", "false", *flags])
    with pytest.raises(ValueError, match=message):
        check_sft_arguments(args)


def test_lora_layers_from(tiny_qwen3):
    model, _ = tiny_qwen3
    n = len(model.model.layers)
    assert lora_targets(model, 0) == {"target_modules": "all-linear"}
    upper = lora_targets(model, n - 1)
    assert upper["layers_to_transform"] == [n - 1] and "q_proj" in upper["target_modules"]
    assert "lm_head" not in upper["target_modules"]
    with pytest.raises(ValueError, match="lora_layers_from"):
        lora_targets(model, n)
