"""The ERank readout: each scored document's state from its last fed token to its score.

think="off": a document's suffix ends with the answer position and a teacher-forced "1", so the
step that feeds it reads both distributions and the document is done. Thinking modes: the
document writes greedy tokens (``Phase.THINK``) until the ``AnswerDetector`` finds or forces
the answer position; then its last token, the forced answer opening and the "1" are fed in one
step and read as in think="off". Where decode steps replay CUDA graphs, which hold one token
per document, the forced tokens are fed one per step instead (``Phase.FORCE``), then the digits
are read at the answer position (``Phase.ANSWER``), a "1" is fed and P("0" | "1") read
(``Phase.ONE``). Digits, argmax and log-sum-exp come from the vocabulary-streaming score head.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from erank_fast.engine.work import Doc
from erank_fast.ops.score_head import (
    greedy_tokens,
    pack_vocab_blocks,
    pack_vocab_chunks,
    score_head,
)
from erank_fast.scoring import AnswerDetector, Readout, ScoreReadout, ScoreTokens

# Steps of at most this many head rows, some read for a score and the rest greedy, run the
# head once for all (ScoreReader._head). SmolLM2's float32 head on a 2-core Zen 3, ms, in two
# passes / one: 2 rows 22 / 12, 16 rows 27 / 20, 64 rows 49 / 46; 100 rows (4 read) 66 / 68.
MERGED_HEAD_ROWS = 64


class Phase(enum.Enum):
    """Where a decoding document is in the ERank readout."""

    THINK = "think"    # writing its reasoning, one greedy token per step
    FORCE = "force"    # being fed the forced answer opening, one token per step
    ANSWER = "answer"  # fed the last token before the answer position: read the digits next
    ONE = "one"        # fed a teacher-forced "1": read P("0" | "1") next, then done


@dataclass(eq=False)
class ScoredDoc(Doc):
    """A document being scored: its reasoning so far and where it is in the readout."""

    read_span: int = 1          # rows an answer feed reads (``ScoreReadout.read_span``)
    reading: bool = False       # pending is an answer feed: ends at the answer position + "1"
    budget: int | None = None   # reasoning tokens allowed (None: think="off")
    phase: Phase = Phase.THINK
    queue: list[int] = field(default_factory=list)   # tokens still to feed, one per step
    answer: tuple | None = None  # (digit log-probs, argmax) read at the answer position
    forced: tuple[int, ...] = ()

    def rows_read(self) -> int:
        """An answer feed's last ``read_span`` rows, otherwise the last one."""
        return self.read_span if self.reading else 1


class ScoreReader:
    def __init__(self, lm_head_weight: torch.Tensor, tokens: ScoreTokens,
                 detector: AnswerDetector, impl: str, pack_weights: bool = False,
                 one_token_steps: bool = False, rules: ScoreReadout | None = None):
        """pack_weights: multiply by a packed copy of the lm_head on CPU (ops.packed_linear).
        one_token_steps: feed every decoding document one token per step (CUDA graphs).
        rules: the readout (default ``ScoreReadout(tokens, detector)``)."""
        self.weight, self.tokens, self.detector, self.impl = lm_head_weight, tokens, detector, impl
        self.one_token_steps = one_token_steps
        self.rules = rules or ScoreReadout(tokens, detector)
        # bfloat16 on a CPU with oneDNN's bfloat16 brgemm: one C++ pass over the lm_head in
        # small-batch blocks gives every row's argmax, and the read rows' log-sum-exp, from
        # float32 sums of the bfloat16 products (ops/csrc/vocab_head.cpp; at 1-100 rows of
        # SmolLM2 2-4x the chunked path below, and the float32 copy it needs is not made).
        self.blocks = pack_vocab_blocks(lm_head_weight) if pack_weights else None
        self.packed = (pack_vocab_chunks(lm_head_weight)
                       if pack_weights and self.blocks is None else None)
        # Elsewhere a bfloat16/float16 GEMM on CPU rounds its output: logits of ~20 rounded to
        # bfloat16 move by up to 0.06, a score by ~0.1 (measured: mean |Δ| 0.11 on erank-smol,
        # DL19). The rows whose distribution is read take a float32 copy of the lm_head
        # instead (the thinking rows, whose argmax is all that is used, keep the model's
        # dtype). Memory: the lm_head again in float32 (113 MB for SmolLM2, 1.6 GB for
        # Qwen3-4B). CUDA's score head accumulates and keeps float32 already.
        self.exact = None
        if (lm_head_weight.device.type == "cpu" and lm_head_weight.dtype != torch.float32
                and self.blocks is None):
            weight32 = lm_head_weight.float()
            self.exact = (weight32, pack_vocab_chunks(weight32) if pack_weights else None)
        self.digit_ids = torch.tensor(tokens.digits, dtype=torch.int64, device=lm_head_weight.device)

    def document(self, group, index: int, suffix: list[int], budget: int | None) -> ScoredDoc:
        """A document to score: think="off" feeds its suffix as an answer feed (read at once),
        a thinking one feeds its suffix and starts writing its reasoning."""
        rules = self.rules
        return ScoredDoc(group=group, index=index,
                         pending=rules.answer_feed(suffix) if budget is None else list(suffix),
                         reserve=rules.reserve(len(suffix), budget), read_span=rules.read_span,
                         reading=budget is None, budget=budget)

    def read(self, docs: list[Doc], lens: list[int], hidden: torch.Tensor
             ) -> list[tuple[ScoredDoc, Readout]]:
        """Advance every scored document of a step; returns those whose readout is complete.
        hidden: the rows of the step's documents, lens[b] of document b's last fed tokens."""
        # Rows whose next-token distribution is needed: the last one of a decoding document;
        # the answer position and the position after "1" of a think="off" document.
        rows, exact, owners, end = [], [], [], 0
        for d, n in zip(docs, lens):
            end += n
            if isinstance(d, ScoredDoc):
                read = self.rules.read_rows(end) if d.reading else [end - 1]
                rows += read
                exact += [d.reading or d.phase is not Phase.THINK] * len(read)
                owners.append(d)
        if not owners:
            return []
        argmax, logprobs = self._head(hidden, rows, exact)
        done, r = [], 0
        for d in owners:
            if d.reading:
                span = d.read_span
                done.append((d, self.rules.readout(logprobs[r:r + span], argmax[r:r + span],
                                                   d.generated, d.forced)))
                r += span
            else:
                result = self._advance(d, argmax[r], logprobs[r])
                if result is not None:
                    done.append((d, result))
                r += 1
        return done

    def _head(self, hidden: torch.Tensor, rows: list[int], exact: list[bool]
              ) -> tuple[list[int], list[list[float]]]:
        """Argmax and digit log-probs of the distribution after each of ``rows``. Rows marked
        ``exact`` (read for a score) go through the float32 head where there is one; the others
        are reasoning steps, whose greedy token is all that is used: their argmax alone, in the
        model's dtype, and no digit log-probs."""
        argmax, logprobs = [0] * len(rows), [[]] * len(rows)

        def rows_of(picked: list[int], dtype: torch.dtype) -> torch.Tensor:
            index = torch.tensor([rows[i] for i in picked], dtype=torch.int64,
                                 device=hidden.device)
            return hidden[index].to(dtype)

        greedy = [i for i, e in enumerate(exact) if not e]
        if greedy and self.exact is None and len(greedy) < len(rows) <= MERGED_HEAD_ROWS:
            # Both kinds of rows multiply by the same weights: one pass over the vocabulary.
            # A few-row step reads the whole lm_head (113 MB for SmolLM2 in float32) once
            # instead of twice; the greedy rows' log-sum-exp, computed and not used, costs
            # less than that read at these row counts.
            greedy = []
            exact = [True] * len(rows)
        if greedy:
            best = greedy_tokens(rows_of(greedy, self.weight.dtype), self.weight,
                                 impl=self.impl, packed_chunks=self.packed, blocks=self.blocks)
            for i, a in zip(greedy, best.tolist()):
                argmax[i] = a
        read = [i for i, e in enumerate(exact) if e]
        if read:
            weight, packed = self.exact or (self.weight, self.packed)
            _, best, lse, digit_logits = score_head(rows_of(read, weight.dtype), weight,
                                                    self.digit_ids, impl=self.impl,
                                                    packed_chunks=packed, blocks=self.blocks)
            for i, a, lp in zip(read, best.tolist(), (digit_logits - lse[:, None]).tolist()):
                argmax[i], logprobs[i] = a, lp
        return argmax, logprobs

    def _advance(self, d: ScoredDoc, token: int, digit_logprobs: list[float]) -> Readout | None:
        """One decode row: the argmax token and the digits' log-probs of the distribution after
        the document's last fed token. Sets the next token to feed, or returns the readout."""
        if d.phase is Phase.THINK:
            d.generated.append(token)
            decision = self.detector.decide(d.generated, d.budget)
            if decision.kind == "continue":
                d.pending = [token]
                return None
            if decision.drop_last:
                d.generated.pop()
            d.forced = decision.forced
            d.queue = ([] if decision.drop_last else [token]) + list(decision.forced)
            if not self.one_token_steps:  # the opening and the "1" in one step, then read
                d.pending, d.reading = self.rules.answer_feed(d.queue), True
                return None
            d.phase = Phase.FORCE
        elif d.phase is Phase.ANSWER:
            d.answer = (tuple(digit_logprobs), token)
            d.pending, d.phase = list(self.rules.continuation), Phase.ONE
            return None
        elif d.phase is Phase.ONE:
            answer_logprobs, answer_argmax = d.answer
            return self.rules.readout([answer_logprobs, digit_logprobs], [answer_argmax, token],
                                      d.generated, d.forced)
        # FORCE: feed the next token of the answer's opening; after the last, the answer position
        d.pending = [d.queue.pop(0)]
        if not d.queue:
            d.phase = Phase.ANSWER
        return None
