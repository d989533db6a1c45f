"""Score tokens, answer detection, the 0..10 distribution, and rank-score rules.

Both backends produce a ``Readout`` per document (what the model's distribution says at the
answer position and one teacher-forced step after it) and turn it into a result here, so the
rules below are the only place scores are defined.

The 0..10 distribution. Let P(d) be the probability of digit token d at the answer position and
q = P("0" | "1"), read one position later with "1" teacher-forced. Then
    p(0) = P(0),  p(1) = P(1)·(1 − q),  p(10) = P(1)·q,  p(d) = P(d) for d = 2..9.
(A score is one of 0..10, so only "1" can continue into a valid number.) The probabilities need
not sum to 1: the rest is mass on non-digit tokens.

The answer is the greedy one: the argmax token at the answer position if it is a digit, and 10
when that digit is "1" and the argmax after it is "0". When the argmax is not a digit, no score
can be read: ``answer`` is None, ``probability`` 0, and the "erank" rank score is 0.0 (the
document ranks with the least relevant); the "expected" rank score is still Σ s·p(s).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch

from erank_fast.prompt import ANSWER_OPEN, BUDGET_CONTINUATION, THINK_CLOSE

SCORE_MODES = ("erank", "expected")
_ANSWER_RE = re.compile(r"<answer>\s*(\d+)\s*(?:</answer>|$)")

# Tokens decoded from the end of the generated text to detect tags (tags span at most a few).
_TAIL_TOKENS = 12


def parse_answer(text: str) -> int | None:
    """The integer score of a generated output (``...<answer>7</answer>``), or None when there
    is no answer tag with an integer 0..10 (the last answer tag counts)."""
    found = _ANSWER_RE.findall(text)
    if not found:
        return None
    value = int(found[-1])
    return value if 0 <= value <= 10 else None


@dataclass(frozen=True)
class ScoreTokens:
    """Token ids of the digits 0..9 as they follow ``<answer>``."""

    digits: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "ScoreTokens":
        base = tokenizer.encode(ANSWER_OPEN, add_special_tokens=False)
        digits = []
        for d in range(10):
            ids = tokenizer.encode(f"{ANSWER_OPEN}{d}", add_special_tokens=False)
            if ids[: len(base)] != base or len(ids) != len(base) + 1:
                raise ValueError(
                    f"tokenizer does not write the digit {d} after {ANSWER_OPEN!r} as one token "
                    "of its own; erank_fast needs single-digit tokens to read scores"
                )
            digits.append(ids[-1])
        return cls(tuple(digits))

    @property
    def one(self) -> int:
        return self.digits[1]


@dataclass(frozen=True)
class Readout:
    """What a backend reads for one document (log-probabilities from the full vocabulary)."""

    digit_logprobs: tuple[float, ...]  # log P(d) at the answer position, d = 0..9
    zero_after_one_logprob: float      # log P("0" | "1")
    argmax_answer: int                 # greedy token id at the answer position
    argmax_after_one: int              # greedy token id after a teacher-forced "1"
    generated: tuple[int, ...] = ()    # tokens the model wrote itself (reasoning)
    forced: tuple[int, ...] = ()       # tokens appended by forcing before the answer


def readout_from_logits(logits: torch.Tensor, tokens: ScoreTokens, generated=(), forced=()
                        ) -> Readout:
    """The readout from full-vocabulary logits [2, V]: at the answer position and after a
    teacher-forced "1" (how the reference paths read; the engine streams the same numbers
    through its score head without a [batch, vocab] tensor). ``ScoreReadout.from_logits``."""
    return ScoreReadout(tokens).from_logits(logits, generated, forced)


@dataclass(frozen=True)
class DocScore:
    score: float
    answer: int | None
    probability: float
    distribution: tuple[float, ...]  # p(0) .. p(10)


def distribution(readout: Readout) -> tuple[float, ...]:
    """p(0) .. p(10): the digits' probabilities at the answer position (over the whole
    vocabulary), "1"'s split into "1" and "10" by P("0" | "1"). A log-probability computed in
    float32 can round a hair above 0 where the model is certain (P("0" | "1") = 1 + ~1e-5, which
    made p(1) negative); each probability is clipped to 1, so every p(s) lies in [0, 1]."""
    p = torch.tensor(readout.digit_logprobs, dtype=torch.float64).exp().clamp(max=1.0).tolist()
    q = min(float(torch.tensor(readout.zero_after_one_logprob, dtype=torch.float64).exp()), 1.0)
    return (p[0], p[1] * (1.0 - q), *p[2:], p[1] * q)


def expected_score(dist) -> float:
    """Σ s·p(s) over a distribution p(0) .. p(10): the "expected" score mode."""
    return sum(s * p for s, p in enumerate(dist))


def greedy_answer(readout: Readout, tokens: ScoreTokens) -> int | None:
    if readout.argmax_answer not in tokens.digits:
        return None
    d = tokens.digits.index(readout.argmax_answer)
    if d == 1 and readout.argmax_after_one == tokens.digits[0]:
        return 10
    return d


def score_document(readout: Readout, tokens: ScoreTokens, mode: str) -> DocScore:
    """Rank score: "erank" = s × p(s) for the greedy answer s (the paper's); "expected" = Σ s·p(s)."""
    dist = distribution(readout)
    answer = greedy_answer(readout, tokens)
    probability = dist[answer] if answer is not None else 0.0
    if mode == "erank":
        score = answer * probability if answer is not None else 0.0
    elif mode == "expected":
        score = expected_score(dist)
    else:
        raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {mode!r}")
    return DocScore(score=float(score), answer=answer, probability=float(probability),
                    distribution=tuple(float(x) for x in dist))


@dataclass(frozen=True)
class Decision:
    """What to do after a generated token: keep decoding, read the score next, or force text."""

    kind: str  # "continue" | "ready" | "force"
    forced: tuple[int, ...] = ()
    drop_last: bool = False  # the last token was end-of-sequence: it is not fed


class AnswerDetector:
    """Finds the answer position in generated text; shared by both backends so they stop and
    force identically. Tags are found on decoded text, not on fixed token sequences, since
    tokenizers merge across tags (e.g. ``</think><answer>`` → ``</``, ``think``, ``><``, ...).

    After each generated token, in this order:
      1. the text ends with ``<answer>`` → ready (the next position is the answer position);
      2. the token is end-of-sequence → drop it and force ``</think><answer>``;
      3. the text contains ``</think>`` → force ``<answer>``;
      4. the reasoning budget is spent → force ``</think><answer>``;
      5. otherwise continue.
    Forcing appends only the part of the forced text not already at the end of the text (a
    model that wrote ``</think><`` gets ``answer>``)."""

    def __init__(self, tokenizer, eos_ids: set[int] | frozenset[int]):
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self._forced_cache: dict[str, tuple[int, ...]] = {}

    @functools.cached_property
    def max_forced_tokens(self) -> int:
        """The most tokens a forced continuation can take (bounds each document's K/V)."""
        targets = (BUDGET_CONTINUATION, ANSWER_OPEN)
        return max(len(self.tokenizer.encode(t[k:], add_special_tokens=False))
                   for t in targets for k in range(len(t)))

    def _tail_text(self, ids) -> str:
        return self.tokenizer.decode(list(ids[-_TAIL_TOKENS:]), skip_special_tokens=False)

    def _complete(self, text: str, target: str) -> tuple[int, ...]:
        overlap = max((k for k in range(len(target)) if text.endswith(target[:k])), default=0)
        missing = target[overlap:]
        if missing not in self._forced_cache:
            self._forced_cache[missing] = tuple(
                self.tokenizer.encode(missing, add_special_tokens=False))
        return self._forced_cache[missing]

    def decide(self, generated, budget: int) -> Decision:
        """``generated``: the token ids the model wrote so far (at least one); ``budget``: the
        most tokens it may write."""
        if generated[-1] in self.eos_ids:
            # The text before it cannot end with <answer>: that would have been "ready" already.
            text = self._tail_text(generated[:-1])
            return Decision("force", self._complete(text, BUDGET_CONTINUATION), drop_last=True)
        text = self._tail_text(generated)
        if text.endswith(ANSWER_OPEN):
            return Decision("ready")
        if THINK_CLOSE in text:
            return Decision("force", self._complete(text, ANSWER_OPEN))
        if len(generated) >= budget:
            return Decision("force", self._complete(text, BUDGET_CONTINUATION))
        return Decision("continue")


class ScoreReadout:
    """ERank's readout, in one place for the engine, the reference backend, scoring and
    training: a scored prompt ends at the answer position (think="off", or after the reasoning
    and the forced answer opening), a "1" is teacher-forced after it, and two rows are read: the
    digits' distribution at the answer position, and P("0" | "1"), which gives "10"
    (``distribution``). Changing the score format means changing this class (and the
    distribution rules above), nothing else: the engine, the reference backend and training
    take the continuation, the rows read and the reserve from it."""

    def __init__(self, tokens: ScoreTokens, detector: "AnswerDetector | None" = None):
        self.tokens, self.detector = tokens, detector

    @property
    def continuation(self) -> list[int]:
        """What is teacher-forced after the answer position: the "1" of a possible "10"."""
        return [self.tokens.one]

    @property
    def read_span(self) -> int:
        """Rows read at the end of a scored sequence: the answer position, then one row per
        continuation token."""
        return 1 + len(self.continuation)

    def scored_ids(self, prompt_ids, generated=(), forced=()) -> list[int]:
        """The full sequence whose last ``read_span`` positions are read: the prompt, any
        reasoning and forced answer opening, then the continuation."""
        return [*prompt_ids, *generated, *forced, *self.continuation]

    def answer_feed(self, tokens) -> list[int]:
        """One feed that reaches the answer position and reads it: ``tokens`` (a think="off"
        document's suffix, or a reasoning's last token and forced answer opening), then the
        continuation; the feed's last ``read_span`` rows are read (``read_rows``)."""
        return [*tokens, *self.continuation]

    def reserve(self, suffix_len: int, budget: int | None) -> int:
        """The most K/V rows a document can need beyond its shared prefix: its suffix, the
        continuation, and with a reasoning budget the reasoning and the forced opening."""
        if budget is None:
            return suffix_len + len(self.continuation)
        return suffix_len + budget + self.detector.max_forced_tokens + len(self.continuation)

    def read_rows(self, end: int) -> list[int]:
        """Rows to read of an ``answer_feed`` that ends before row ``end``."""
        return list(range(end - self.read_span, end))

    def readout(self, digit_logprobs, argmax, generated=(), forced=()) -> Readout:
        """The Readout from the read rows: each row's digit log-probs and argmax token, in
        order (the answer position, then after the "1")."""
        return Readout(digit_logprobs=tuple(digit_logprobs[0]),
                       zero_after_one_logprob=digit_logprobs[1][0],
                       argmax_answer=argmax[0], argmax_after_one=argmax[1],
                       generated=tuple(generated), forced=tuple(forced))

    def from_logits(self, logits: torch.Tensor, generated=(), forced=()) -> Readout:
        """The readout from the full-vocabulary logits of the last ``read_span`` positions."""
        rows = logits[-self.read_span:].float()
        digits = torch.tensor(self.tokens.digits, device=rows.device)
        logprobs = torch.log_softmax(rows, dim=-1)[:, digits]
        return self.readout(logprobs.tolist(), rows.argmax(dim=-1).tolist(), generated, forced)

    def log_distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """log p(s), s = 0..10, from logits [B, read_span, V] (``distribution``'s rules, in log
        space and differentiable: the training objective's view of the readout)."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        digits = logp[:, 0, list(self.tokens.digits)]
        log_q = logp[:, 1, self.tokens.digits[0]]
        log_not_q = torch.log1p(-log_q.exp().clamp(max=1 - 1e-7))
        one = digits[:, 1]
        return torch.cat([digits[:, :1], (one + log_not_q)[:, None], digits[:, 2:],
                          (one + log_q)[:, None]], dim=1)
