"""Result types returned by the Reranker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RerankResult:
    """One document's result.

    index: position in the input list. score: the rank score the results are sorted by
    (higher is more relevant): the model's, or, when the call passed first-stage scores, the
    hybrid of both (``erank_fast.fusion``). model_score: the model's own rank score.
    answer: the model's integer score 0..10, or None when none could be read (see
    erank_fast.scoring). probability: p(answer). distribution: p(0) .. p(10).
    num_generated_tokens: reasoning tokens the model wrote (0 with think="off").
    reasoning: the reasoning text when asked for, else None. document: the input as given.
    """

    index: int
    score: float
    answer: int | None
    probability: float
    distribution: tuple[float, ...]
    num_generated_tokens: int
    reasoning: str | None
    document: Any
    model_score: float | None = None


@dataclass(frozen=True)
class CallStats:
    """Per call: wall time, documents scored, tokens computed by the model, the forward
    passes that served the call (shared with concurrent calls batched into the same steps),
    and the dtype the model computes in ("bfloat16", "float32", ...)."""

    seconds: float
    documents: int
    prefill_tokens: int
    decode_tokens: int
    steps: int = 0
    dtype: str = ""

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds > 0 else 0.0


class RerankResults(list):
    """A list of RerankResult (sorted by score, best first) with the call's ``stats``."""

    def __init__(self, results=(), stats: CallStats | None = None):
        super().__init__(results)
        self.stats = stats
