"""erank_fast.training.listwise: the listwise objective reads exactly what inference reads, its
loss on hand-computed examples, and whole-query batches."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("datasets")

from erank_fast import Reranker  # noqa: E402
from erank_fast.evaluation.trec import Candidate, Query  # noqa: E402
from erank_fast.prompt import PromptBuilder  # noqa: E402
from erank_fast.scoring import ScoreTokens  # noqa: E402
from erank_fast.training import listwise  # noqa: E402

DOCS = ["Vaccines train the immune system to recognise a virus.",
        "The stock market closed higher today.",
        "x",
        "Measles vaccination is given in two doses, usually at 12 months and at 4 years."]


def _rows(tokenizer, query: str, docs: list[str]):
    tokens = ScoreTokens.from_tokenizer(tokenizer)
    builder = PromptBuilder(tokenizer)
    qrels = {"q": {f"d{i}": g for i, g in enumerate([2, 0, 0, 3])}}
    q = Query("q", query, tuple(Candidate(f"d{i}", t, 0.0) for i, t in enumerate(docs)))
    rows = listwise.listwise_examples([q], qrels, builder, tokens, docs_per_query=len(docs),
                                      positives=len(docs))
    return rows, tokens


def test_expected_score_equals_the_rerankers(tiny_qwen3):
    """Training optimises the score inference reports: the expected score from one left-padded
    training batch equals Reranker(think="off", score_mode="expected") on the same weights."""
    model, tok = tiny_qwen3
    query = "how do vaccines work"
    rows, tokens = _rows(tok, query, DOCS)
    assert len(rows) == len(DOCS) and len({len(r["input_ids"]) for r in rows}) > 1
    batch = listwise.LeftPaddingCollator(tok.pad_token_id)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], logits_to_keep=2).logits
    log_dist = listwise.score_distribution(logits, tokens)
    expected = (log_dist.exp() * listwise.SCORE_VALUES).sum(1)
    reranker = Reranker.from_pretrained(model, tokenizer=tok, think="off", score_mode="expected",
                                        backend="torch")
    builder = PromptBuilder(tok)
    score_of = {tuple(builder.prompt_ids(query, d, think_off=True) + [tokens.one]): s
                for d, s in zip(DOCS, reranker.score(query, DOCS))}
    want = [score_of[tuple(r["input_ids"])] for r in rows]
    torch.testing.assert_close(expected, torch.tensor(want), atol=1e-4, rtol=1e-4)


def test_score_distribution_rules():
    """p(1) = P(1)(1 − q), p(10) = P(1)·q, digits 2..9 as read, in log space."""
    tokens = ScoreTokens(digits=tuple(range(10)))
    logits = torch.full((1, 2, 12), -1e4)
    logits[0, 0, :3] = torch.log(torch.tensor([0.2, 0.5, 0.3]))
    logits[0, 1, 0], logits[0, 1, 11] = math.log(0.4), math.log(0.6)
    dist = listwise.score_distribution(logits, tokens).exp()[0]
    want = torch.zeros(11)
    want[0], want[1], want[2], want[10] = 0.2, 0.5 * 0.6, 0.3, 0.5 * 0.4
    torch.testing.assert_close(dist, want, atol=1e-6, rtol=0)


def _log_dist(expected: list[float]) -> torch.Tensor:
    """Distributions putting all mass on two neighbouring scores, with the given means."""
    rows = []
    for e in expected:
        lo = int(e)
        p = torch.full((11,), 1e-12)
        p[lo] += 1 - (e - lo)
        if lo < 10:
            p[lo + 1] += e - lo
        rows.append(p / p.sum())
    return torch.stack(rows).log()


def test_listwise_loss_by_hand():
    expected = [6.0, 2.0, 3.0, 9.0]
    grades = torch.tensor([2, 0, 1, 3])
    groups = torch.tensor([0, 0, 1, 1])  # pairs only within a group: (0 > 1) and (3 > 2)
    loss, parts = listwise.listwise_loss(_log_dist(expected), grades, groups, pointwise_weight=0.0)
    sp = lambda x: math.log1p(math.exp(-x))  # noqa: E731
    want = (2 * sp(6.0 - 2.0) + 2 * sp(9.0 - 3.0)) / 4
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert parts["pairwise"] == pytest.approx(want, rel=1e-5)
    # The pointwise term: cross-entropy of the grade-derived score (0→0, 1→4, 2→7, 3→10).
    log_dist = _log_dist([7.0, 0.0, 4.0, 10.0])
    _, parts = listwise.listwise_loss(log_dist, grades, groups, pointwise_weight=1.0)
    assert parts["pointwise"] == pytest.approx(0.0, abs=1e-6)
    # A group whose documents share one grade contributes nothing and does not divide by zero.
    loss, _ = listwise.listwise_loss(_log_dist([1.0, 8.0]), torch.tensor([0, 0]),
                                     torch.tensor([5, 5]), pointwise_weight=0.0)
    assert loss.item() == 0.0


def test_loss_gradient_orders_within_a_query():
    """One gradient step on the expected scores moves the relevant document up."""
    logits = torch.zeros(2, 11, requires_grad=True)
    log_dist = torch.log_softmax(logits, 1)
    loss, _ = listwise.listwise_loss(log_dist, torch.tensor([1, 0]), torch.tensor([0, 0]), 0.0)
    loss.backward()
    values = listwise.SCORE_VALUES
    assert (logits.grad[0] * values).sum() < 0 < (logits.grad[1] * values).sum()


def test_query_group_sampler_keeps_queries_whole():
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    sampler = listwise.QueryGroupSampler(groups, seed=1)
    first, second = list(sampler), list(sampler)
    for order in (first, second):
        assert sorted(order) == list(range(12))
        chunks = [order[i:i + 3] for i in range(0, 12, 3)]
        assert all(len({groups[i] for i in c}) == 1 for c in chunks)
    assert first != second  # a new group order each epoch


def test_examples_skip_queries_without_pairs(qwen_tokenizer):
    tokens = ScoreTokens.from_tokenizer(qwen_tokenizer)
    builder = PromptBuilder(qwen_tokenizer)
    docs = [Candidate(f"d{i}", f"text {i}", 0.0) for i in range(4)]
    queries = [Query("all-irrelevant", "q one", docs), Query("mixed", "q two", docs),
               Query("short", "q three", docs[:2])]
    qrels = {"mixed": {"d1": 2}, "short": {"d0": 1}}
    rows = listwise.listwise_examples(queries, qrels, builder, tokens, docs_per_query=4,
                                      positives=2, rounds=2)
    assert len(rows) == 8 and {r["group"] for r in rows} == {0, 1}
    assert sorted(r["grade"] for r in rows[:4]) == [0, 0, 0, 2]
    assert all(r["input_ids"][-1] == tokens.one for r in rows)


def test_trainer_needs_one_query_per_batch(tiny_qwen3, tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    model, tok = tiny_qwen3
    rows, tokens = _rows(tok, "q", DOCS)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                             report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="per_device_train_batch_size == docs_per_query"):
        listwise.ListwiseTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                 data_collator=listwise.LeftPaddingCollator(0),
                                 score_tokens=tokens, pointwise_weight=0.2, docs_per_query=4)


def test_teacher_differences_add_to_pair_weights():
    expected = [6.0, 2.0, 5.0]
    grades = torch.tensor([1, 0, 0])
    groups = torch.tensor([0, 0, 0])
    teacher = torch.tensor([0.5, -1.0, 1.5])
    loss, _ = listwise.listwise_loss(_log_dist(expected), grades, groups, 0.0, teacher, 2.0)
    sp = lambda x: math.log1p(math.exp(-x))  # noqa: E731
    # (i above j): grade difference + 2 × teacher difference, where positive.
    w01, w02, w21, w20 = 1 + 2 * 1.5, 1, 2 * 2.5, 2 * 1.0
    want = (w01 * sp(6 - 2) + w02 * sp(6 - 5) + w21 * sp(5 - 2) + w20 * sp(5 - 6)) / (
        w01 + w02 + w21 + w20)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_teacher_scores_are_normalised_per_query_and_must_cover_it(qwen_tokenizer):
    tokens = ScoreTokens.from_tokenizer(qwen_tokenizer)
    builder = PromptBuilder(qwen_tokenizer)
    docs = tuple(Candidate(f"d{i}", f"text {i}", 0.0) for i in range(4))
    q = Query("q", "a query", docs)
    teacher = {("q", f"d{i}"): s for i, s in enumerate([-10.0, -20.0, -30.0, -40.0])}
    rows = listwise.listwise_examples([q], {"q": {"d2": 1}}, builder, tokens, docs_per_query=4,
                                      positives=1, teacher=teacher)
    # z over all four candidates (population std), whichever documents were sampled.
    assert sorted(r["teacher"] for r in rows) == pytest.approx(
        [-1.3416408, -0.4472136, 0.4472136, 1.3416408])
    del teacher[("q", "d3")]
    with pytest.raises(ValueError, match="miss 1 of the 4 candidates of query q"):
        listwise.listwise_examples([q], {"q": {"d2": 1}}, builder, tokens, docs_per_query=4,
                                   positives=1, teacher=teacher)


def test_kl_teacher_term_by_hand():
    """"kl": teacher_weight × KL(softmax(t / T) ‖ softmax(E)) per group, averaged over groups."""
    expected = [6.0, 2.0, 5.0, 1.0, 3.0]
    grades = torch.tensor([0, 0, 0, 0, 0])  # no grade pairs: the teacher term alone
    groups = torch.tensor([0, 0, 0, 1, 1])
    teacher = torch.tensor([0.5, -1.0, 1.5, 0.0, 1.0])
    loss, parts = listwise.listwise_loss(_log_dist(expected), grades, groups, 0.0, teacher, 2.0,
                                         teacher_loss="kl", teacher_temperature=0.5)

    def kl(t, e):
        p = torch.softmax(torch.tensor(t) / 0.5, 0)
        q = torch.softmax(torch.tensor(e), 0)
        return float((p * (p / q).log()).sum())

    want = (kl([0.5, -1.0, 1.5], [6.0, 2.0, 5.0]) + kl([0.0, 1.0], [1.0, 3.0])) / 2
    assert parts["kl"] == pytest.approx(want, rel=1e-5)
    assert loss.item() == pytest.approx(2.0 * want, rel=1e-5)
    # The student matching the teacher's softmax exactly (E = t / T + c) gives no KL.
    _, parts = listwise.listwise_loss(_log_dist([3.0, 0.0, 5.0]), torch.tensor([0, 0, 0]),
                                      torch.tensor([0, 0, 0]), 0.0,
                                      torch.tensor([0.5, -1.0, 1.5]), 1.0, teacher_loss="kl",
                                      teacher_temperature=0.5)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="teacher_loss"):
        listwise.listwise_loss(_log_dist(expected), grades, groups, 0.0, teacher, 1.0,
                               teacher_loss="mse")


def test_kl_gradient_moves_the_student_towards_the_teacher():
    log_dist = _log_dist([5.0, 5.0]).requires_grad_(True)
    loss, _ = listwise.listwise_loss(log_dist, torch.tensor([0, 0]), torch.tensor([0, 0]), 0.0,
                                     torch.tensor([1.0, -1.0]), 1.0, teacher_loss="kl")
    loss.backward()
    up = log_dist.grad @ listwise.SCORE_VALUES  # d loss / d(mass on high scores), roughly
    assert up[0] < 0 < up[1]  # raise the teacher's favourite, lower the other


def test_margin_mse_teacher_term_by_hand():
    """"margin_mse": teacher_weight × mean over each group's pairs of
    ((E_i − E_j) − (t_i − t_j) / T)², pairs pooled over the batch's groups."""
    expected = [6.0, 2.0, 5.0, 1.0, 3.0]
    teacher = [0.5, -1.0, 1.5, 0.0, 1.0]
    groups = torch.tensor([0, 0, 0, 1, 1])
    loss, parts = listwise.listwise_loss(_log_dist(expected), torch.tensor([0] * 5), groups, 0.0,
                                         torch.tensor(teacher), 2.0, teacher_loss="margin_mse",
                                         teacher_temperature=0.5)
    pairs = [(0, 1), (0, 2), (1, 2), (3, 4)]
    want = sum(((expected[i] - expected[j]) - (teacher[i] - teacher[j]) / 0.5) ** 2
               for i, j in pairs) / len(pairs)
    assert parts["margin_mse"] == pytest.approx(want, rel=1e-5)
    assert loss.item() == pytest.approx(2.0 * want, rel=1e-5)
    # Margins equal to the teacher's (E = t / T + c) cost nothing, whatever the offset.
    _, parts = listwise.listwise_loss(_log_dist([4.0, 1.0, 6.0]), torch.tensor([0, 0, 0]),
                                      torch.tensor([0, 0, 0]), 0.0,
                                      torch.tensor([0.5, -1.0, 1.5]), 1.0,
                                      teacher_loss="margin_mse", teacher_temperature=0.5)
    assert parts["margin_mse"] == pytest.approx(0.0, abs=1e-3)
    # One document per group: no pair, no term.
    _, parts = listwise.listwise_loss(_log_dist([4.0, 1.0]), torch.tensor([0, 0]),
                                      torch.tensor([0, 1]), 0.0, torch.tensor([1.0, -1.0]), 1.0,
                                      teacher_loss="margin_mse")
    assert parts["margin_mse"] == 0.0


def test_margin_mse_gradient_widens_a_margin_the_teacher_wants_wider():
    log_dist = _log_dist([5.0, 5.0]).requires_grad_(True)
    loss, _ = listwise.listwise_loss(log_dist, torch.tensor([0, 0]), torch.tensor([0, 0]), 0.0,
                                     torch.tensor([1.0, -1.0]), 1.0, teacher_loss="margin_mse")
    loss.backward()
    up = log_dist.grad @ listwise.SCORE_VALUES
    assert up[0] < 0 < up[1]


def test_pseudo_query_groups_with_a_teacher_stay_on_topic(qwen_tokenizer):
    """With teacher scores, a pseudo-query's negatives all come from its source query, each
    carrying the teacher's z-score for the pseudo-query."""
    from erank_fast.training.teachers import pseudo_qid

    tokens = ScoreTokens.from_tokenizer(qwen_tokenizer)
    builder = PromptBuilder(qwen_tokenizer)
    queries = [Query(f"q{k}", f"query {k}", tuple(Candidate(f"q{k}d{i}", f"text {k} {i}", 0.0)
                                                  for i in range(6))) for k in range(2)]
    pseudo = [{"qid": "q0", "docid": "q0d2", "query": "what is text 0 2?"}]
    teacher = {(pseudo_qid(pseudo[0]), c.docid): float(i)
               for i, c in enumerate(queries[0].candidates)}
    rows = listwise.pseudo_query_examples(pseudo, queries, builder, tokens, docs_per_query=4,
                                          first_group=7, teacher=teacher)
    assert len(rows) == 4 and {r["group"] for r in rows} == {7}
    assert rows[0]["grade"] == 2 and all(r["grade"] == 0 for r in rows[1:])
    texts = [qwen_tokenizer.decode(r["input_ids"]) for r in rows]
    assert all("text 0 " in t and "text 1 " not in t for t in texts)
    z = {i: (i - 2.5) / math.sqrt(35 / 12) for i in range(6)}  # population z of 0..5
    assert rows[0]["teacher"] == pytest.approx(z[2])
    assert sorted(r["teacher"] for r in rows[1:]) == pytest.approx(
        sorted(z[i] for i in range(6) if i != 2 and any(f"text 0 {i}" in t for t in texts[1:])))
