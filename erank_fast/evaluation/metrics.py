"""Ranking metrics as trec_eval computes them, and the first-stage / reranker score fusion.

A run is {qid: {docid: score}}; qrels are {qid: {docid: grade}}. Documents are ranked by score,
descending, ties broken by docid descending (trec_eval's order). Unjudged documents have grade 0.
Means are over the queries of the run that have at least one relevant (grade > 0) document.
"""

from __future__ import annotations

import math

from erank_fast import fusion

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]


def ranked(scores: dict[str, float]) -> list[str]:
    return [d for d, _ in sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def ndcg(scores: dict[str, float], judged: dict[str, int], k: int) -> float:
    """nDCG@k with linear gains and log2 discount (trec_eval's ndcg_cut)."""
    gains = [max(judged.get(d, 0), 0) for d in ranked(scores)[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((max(g, 0) for g in judged.values()), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def reciprocal_rank(scores: dict[str, float], judged: dict[str, int], k: int) -> float:
    for i, d in enumerate(ranked(scores)[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


METRICS = {
    "ndcg@1": lambda s, j: ndcg(s, j, 1),
    "ndcg@5": lambda s, j: ndcg(s, j, 5),
    "ndcg@10": lambda s, j: ndcg(s, j, 10),
    "mrr@10": lambda s, j: reciprocal_rank(s, j, 10),
}


def evaluate(run: Run, qrels: Qrels) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean of each metric, per-query values) over queries with a relevant document."""
    per_query = {}
    for qid, scores in run.items():
        judged = qrels.get(qid, {})
        if any(g > 0 for g in judged.values()):
            per_query[qid] = {name: f(scores, judged) for name, f in METRICS.items()}
    means = {name: (sum(q[name] for q in per_query.values()) / len(per_query) if per_query else 0.0)
             for name in METRICS}
    return means, per_query


def zscores(scores: dict[str, float]) -> dict[str, float]:
    """Standardise within one query (``erank_fast.fusion.zscores``)."""
    return dict(zip(scores, fusion.zscores(list(scores.values()))))


def hybrid(first_stage: Run, rerank: Run, alpha: float = fusion.DEFAULT_HYBRID_ALPHA) -> Run:
    """alpha · z(first stage) + (1 − alpha) · z(rerank), per query (``erank_fast.fusion``)."""
    fused = {}
    for qid, scores in rerank.items():
        first = first_stage[qid]
        fused[qid] = dict(zip(scores, fusion.fuse([first[d] for d in scores],
                                                  list(scores.values()), alpha)))
    return fused
