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

import torch

from erank_fast.engine.work import Doc, Phase
from erank_fast.ops.score_head import pack_vocab_chunks, score_head
from erank_fast.scoring import AnswerDetector, Readout, ScoreReadout, ScoreTokens


def rows_read(d: Doc) -> int:
    """How many of a document's last fed tokens its step reads: an answer feed's last
    ``ScoreReadout.READ_ROWS``, otherwise the last one (a decoding or sampled document)."""
    return ScoreReadout.READ_ROWS if d.reading else 1


class ScoreReader:
    def __init__(self, lm_head_weight: torch.Tensor, tokens: ScoreTokens,
                 detector: AnswerDetector, impl: str, pack_weights: bool = False,
                 one_token_steps: bool = False):
        """pack_weights: multiply by a packed copy of the lm_head on CPU (ops.packed_linear).
        one_token_steps: feed every decoding document one token per step (CUDA graphs)."""
        self.weight, self.tokens, self.detector, self.impl = lm_head_weight, tokens, detector, impl
        self.one_token_steps = one_token_steps
        self.rules = ScoreReadout(tokens, detector)
        self.packed = pack_vocab_chunks(lm_head_weight) if pack_weights else None
        self.digit_ids = torch.tensor(tokens.digits, dtype=torch.int64, device=lm_head_weight.device)

    def read(self, docs: list[Doc], lens: list[int], hidden: torch.Tensor
             ) -> list[tuple[Doc, Readout]]:
        """Advance every scored document of a step; returns those whose readout is complete.
        hidden: the rows of the step's documents, lens[b] of document b's last fed tokens."""
        # Rows whose next-token distribution is needed: the last one of a decoding document;
        # the answer position and the position after "1" of a think="off" document.
        rows, owners, end = [], [], 0
        for d, n in zip(docs, lens):
            end += n
            if d.sampler is None:
                rows += self.rules.read_rows(end) if d.reading else [end - 1]
                owners.append(d)
        if not owners:
            return []
        index = torch.tensor(rows, dtype=torch.int64, device=hidden.device)
        _, argmax, lse, digit_logits = score_head(hidden[index], self.weight, self.digit_ids,
                                                  impl=self.impl, packed_chunks=self.packed)
        argmax, logprobs = argmax.tolist(), (digit_logits - lse[:, None]).tolist()
        done, r = [], 0
        for d in owners:
            if d.reading:
                done.append((d, Readout(
                    digit_logprobs=tuple(logprobs[r]), zero_after_one_logprob=logprobs[r + 1][0],
                    argmax_answer=argmax[r], argmax_after_one=argmax[r + 1],
                    generated=tuple(d.generated), forced=d.forced)))
                r += 2
            else:
                result = self._advance(d, argmax[r], logprobs[r])
                if result is not None:
                    done.append((d, result))
                r += 1
        return done

    def _advance(self, d: Doc, token: int, digit_logprobs: list[float]) -> Readout | None:
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
            return Readout(digit_logprobs=answer_logprobs,
                           zero_after_one_logprob=digit_logprobs[0],
                           argmax_answer=answer_argmax, argmax_after_one=token,
                           generated=tuple(d.generated), forced=d.forced)
        # FORCE: feed the next token of the answer's opening; after the last, the answer position
        d.pending = [d.queue.pop(0)]
        if not d.queue:
            d.phase = Phase.ANSWER
        return None
