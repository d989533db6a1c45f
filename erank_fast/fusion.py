"""The first stage and the reranker fused: ERank's hybrid ranking.

Within one query, each score list is standardised (z-scores, population standard deviation;
a constant list maps to zeros) and the two are mixed, ``alpha · z(first stage) + (1 − alpha) ·
z(reranker)``. ERank uses alpha 0.2 with BM25 as the first stage; on the sets this project
evaluates, erank-smol's hybrid ranks above its own scores alone on DL19 and NovelEval (README,
"erank-smol on TREC"), and no other weight from 0 to 0.5 beats 0.2 on the held-out sets
(train/RESULTS.md, ``train/hybrid_weight.py``).

Where the retriever's scores are not at hand but its order is (a Cohere-style client sends the
documents best first), that order stands in for them: ``FIRST_STAGE_ORDER`` ("order") in place
of the scores gives the i-th of n documents the score n − i, so its z-score is that of its
position. On the held-out sets it keeps most of the hybrid's gain (README).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

DEFAULT_HYBRID_ALPHA = 0.2
FIRST_STAGE_ORDER = "order"  # in place of first-stage scores: the documents' own order


def zscores(values: Sequence[float]) -> list[float]:
    """Standardised values (population std); constant (or single) values map to 0."""
    if not values:
        return []
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / std if std > 0 else 0.0 for v in values]


def fuse(first_stage: Sequence[float], reranker: Sequence[float],
         alpha: float = DEFAULT_HYBRID_ALPHA) -> list[float]:
    """alpha · z(first_stage) + (1 − alpha) · z(reranker), element by element."""
    if len(first_stage) != len(reranker):
        raise ValueError(f"{len(first_stage)} first-stage scores for {len(reranker)} documents")
    return [alpha * f + (1 - alpha) * r
            for f, r in zip(zscores(first_stage), zscores(reranker))]


def check_alpha(alpha) -> float:
    """``alpha`` as a float if it is a number in [0, 1], else ValueError."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"hybrid_alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def order_scores(documents: int) -> list[float]:
    """First-stage scores from the documents' order, best first: n, n − 1, ..., 1."""
    return [float(documents - i) for i in range(documents)]


def check_first_stage_scores(scores, documents: int) -> list[float]:
    """One finite number per document (higher is more relevant), as floats, or
    ``FIRST_STAGE_ORDER`` for ``order_scores``; else a clear TypeError or ValueError."""
    if isinstance(scores, str) and scores == FIRST_STAGE_ORDER:
        return order_scores(documents)
    if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence):
        raise TypeError(f"first_stage_scores must be a sequence of numbers or "
                        f"{FIRST_STAGE_ORDER!r}, got {type(scores).__name__}")
    if len(scores) != documents:
        raise ValueError(f"first_stage_scores has {len(scores)} values for {documents} documents")
    out = []
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, numbers.Real):
            raise TypeError(f"first_stage_scores[{i}] must be a number, got {type(s).__name__}")
        if not math.isfinite(s):
            raise ValueError(f"first_stage_scores[{i}] is {s!r}; scores must be finite")
        out.append(float(s))
    return out
