"""Score distribution, greedy answers, rank-score modes, and answer detection."""

from __future__ import annotations

import math

import pytest

from erank_fast.scoring import (
    AnswerDetector,
    Readout,
    ScoreReadout,
    ScoreTokens,
    distribution,
    score_document,
)

TOKENS = ScoreTokens(digits=tuple(range(100, 110)))  # digit d has id 100 + d


def _readout(probs, q, argmax_answer, argmax_after_one=0):
    return Readout(digit_logprobs=tuple(math.log(p) for p in probs),
                   zero_after_one_logprob=math.log(q), argmax_answer=argmax_answer,
                   argmax_after_one=argmax_after_one)


PROBS = [0.05, 0.3, 0.02, 0.03, 0.04, 0.06, 0.07, 0.08, 0.1, 0.05]


def test_distribution_splits_one_into_one_and_ten():
    dist = distribution(_readout(PROBS, 0.25, 101))
    assert dist[1] == pytest.approx(0.3 * 0.75) and dist[10] == pytest.approx(0.3 * 0.25)
    assert dist[0] == pytest.approx(0.05) and dist[9] == pytest.approx(0.05)
    assert sum(dist) == pytest.approx(sum(PROBS))


def test_distribution_of_a_certain_ten_rounded_above_one_stays_in_range():
    """float32 log-probs of a certain "10" can round above 0 (seen: P("0" | "1") ≈ 1 + 2e-5,
    which gave p(1) = −1.1e-5): every probability is clipped to 1."""
    readout = Readout(digit_logprobs=(math.log(0.01), 3e-6, *(math.log(0.001),) * 8),
                      zero_after_one_logprob=2e-5, argmax_answer=101, argmax_after_one=100)
    dist = distribution(readout)
    assert all(0.0 <= p <= 1.0 for p in dist)
    assert dist[1] == 0.0 and dist[10] == 1.0
    s = score_document(readout, TOKENS, "expected")
    assert s.answer == 10 and s.score == pytest.approx(10 + 0.001 * sum(range(2, 10)))


def test_erank_score_is_answer_times_probability():
    s = score_document(_readout(PROBS, 0.25, 108), TOKENS, "erank")
    assert (s.answer, s.probability, s.score) == (8, pytest.approx(0.1), pytest.approx(0.8))


def test_ten_is_read_when_one_is_followed_by_zero():
    s = score_document(_readout(PROBS, 0.9, 101, argmax_after_one=100), TOKENS, "erank")
    assert s.answer == 10 and s.score == pytest.approx(10 * 0.3 * 0.9)
    s = score_document(_readout(PROBS, 0.1, 101, argmax_after_one=999), TOKENS, "erank")
    assert s.answer == 1 and s.score == pytest.approx(0.3 * 0.9)


def test_unreadable_answer_gets_documented_result():
    s = score_document(_readout(PROBS, 0.25, 7), TOKENS, "erank")
    assert (s.answer, s.probability, s.score) == (None, 0.0, 0.0)
    e = score_document(_readout(PROBS, 0.25, 7), TOKENS, "expected")
    assert e.answer is None
    assert e.score == pytest.approx(sum(s * p for s, p in enumerate(e.distribution))) and e.score > 0


def test_unknown_score_mode():
    with pytest.raises(ValueError, match="score_mode"):
        score_document(_readout(PROBS, 0.25, 101), TOKENS, "mean")


@pytest.fixture(scope="module")
def detector(qwen_tokenizer):
    return AnswerDetector(qwen_tokenizer, {qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")})


def _enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_detector_rules(detector, qwen_tokenizer):
    tok = qwen_tokenizer
    eos = next(iter(detector.eos_ids))
    assert detector.decide(_enc(tok, "<think>hmm"), 100).kind == "continue"
    assert detector.decide(_enc(tok, "<think>ok</think><answer>"), 100).kind == "ready"
    closed = detector.decide(_enc(tok, "<think>ok</think>"), 100)
    assert closed.kind == "force" and tok.decode(closed.forced) == "<answer>"
    partial = detector.decide(_enc(tok, "<think>ok</think><"), 100)
    assert tok.decode(partial.forced) == "answer>"
    budget = detector.decide(_enc(tok, "<think>a b c"), 3)
    assert budget.kind == "force" and tok.decode(budget.forced) == "</think><answer>"
    ended = detector.decide(_enc(tok, "<think>a") + [eos], 100)
    assert ended.kind == "force" and ended.drop_last
    assert tok.decode(ended.forced) == "</think><answer>"


def test_smollm2_tokenizer_merges_tags_and_is_still_detected(smollm2):
    _, tok = smollm2
    det = AnswerDetector(tok, {tok.eos_token_id})
    ids = _enc(tok, "thinking</think><answer>")
    assert tok.convert_ids_to_tokens(ids)[-3:] == ["><", "answer", ">"]
    assert det.decide(ids, 100).kind == "ready"
    assert det.decide(ids[:-3], 100).kind == "continue"  # "...</think" (">" comes merged)
    merged = det.decide(ids[:-2], 100)  # "...</think><": closed, and "<" already written
    assert merged.kind == "force" and tok.decode(merged.forced) == "answer>"
    assert ScoreTokens.from_tokenizer(tok).digits == tuple(_enc(tok, str(d))[0] for d in range(10))


def test_the_readout_reads_what_it_feeds():
    """The default readout: a "1" is teacher-forced and two rows are read."""
    rules = ScoreReadout(TOKENS)
    assert rules.continuation == [101] and rules.read_span == 2
    assert rules.answer_feed([5, 6]) == [5, 6, 101]
    assert rules.read_rows(10) == [8, 9]
    assert rules.scored_ids([1, 2], generated=[3], forced=[4]) == [1, 2, 3, 4, 101]
    assert rules.reserve(4, None) == 5


def test_a_readout_variant_is_a_one_place_change():
    """A different forced continuation is a change to ScoreReadout alone: the feed, the rows
    read, the K/V reserve, the training sequence and the engine's scored documents follow it."""
    import torch

    from erank_fast.engine.readout import ScoreReader

    class TwoTokenContinuation(ScoreReadout):
        @property
        def continuation(self):
            return [self.tokens.one, self.tokens.digits[0]]

    base, variant = ScoreReadout(TOKENS), TwoTokenContinuation(TOKENS)
    assert variant.read_span == base.read_span + 1 == 3
    assert variant.answer_feed([5, 6]) == [5, 6, 101, 100]
    assert variant.read_rows(10) == [7, 8, 9]
    assert variant.reserve(4, None) == base.reserve(4, None) + 1
    assert variant.scored_ids([1, 2], generated=[3]) == [1, 2, 3, 101, 100]
    reader = ScoreReader(torch.zeros(120, 8), TOKENS, detector=None, impl="torch", rules=variant)
    doc = reader.document(group=None, index=0, suffix=[5, 6], budget=None)
    assert doc.pending == [5, 6, 101, 100] and doc.reserve == 4 and doc.rows_read() == 3
