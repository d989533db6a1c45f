"""Evaluate a reranker on first-stage candidates: nDCG@1/5/10 and MRR@10 for the first stage,
the reranker, and their hybrid fusion (with the first stage's scores, and with its ranking
alone), with throughput."""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from erank_fast.evaluation.metrics import evaluate, hybrid
from erank_fast.evaluation.trec import Query
from erank_fast.fusion import check_alpha, order_scores

QUERIES_PER_CALL = 4  # queries reranked together: their documents share engine steps


def run_evaluation(reranker, queries: list[Query], qrels: dict[str, dict[str, int]], *,
                   hybrid_alpha: float = 0.2, progress: bool = True) -> dict:
    """Rerank every query's candidates and score the four rankings against ``qrels``.

    Returns {"first_stage": {metric: mean}, "reranked": {...}, "hybrid": {...},
    "hybrid_order": {...}, "docs_per_second", "seconds", "documents", "prefill_tokens",
    "decode_tokens", "queries_evaluated", "per_query": {qid: {"first_stage": {...}, ...}},
    "run": {qid: {docid: reranker score}},
    "distributions": {qid: {docid: [p(0), ..., p(10)]}}}. "hybrid" fuses the first stage's scores,
    "hybrid_order" its ranking alone (what a service gets from ``first_stage_scores="order"``
    when the documents come in that ranking)."""
    check_alpha(hybrid_alpha)
    first_stage = {q.qid: {c.docid: c.score for c in q.candidates} for q in queries}
    first_stage_order = {q.qid: ranking_scores(q.candidates) for q in queries}
    reranked: dict[str, dict[str, float]] = {}
    distributions: dict[str, dict[str, list[float]]] = {}
    seconds, prefill, decode, documents = 0.0, 0, 0, 0
    bar = tqdm(total=sum(len(q.candidates) for q in queries), unit="doc", desc="reranking",
               disable=not progress)
    for i in range(0, len(queries), QUERIES_PER_CALL):
        chunk = [q for q in queries[i : i + QUERIES_PER_CALL] if q.candidates]
        start = time.perf_counter()
        results = reranker.rerank_many([q.text for q in chunk],
                                       [[c.text for c in q.candidates] for q in chunk])
        seconds += time.perf_counter() - start
        for q, res in zip(chunk, results):
            reranked[q.qid] = {q.candidates[r.index].docid: r.score for r in res}
            distributions[q.qid] = {q.candidates[r.index].docid: list(r.distribution)
                                    for r in res}
        if results:
            prefill += results[0].stats.prefill_tokens
            decode += results[0].stats.decode_tokens
        n = sum(len(q.candidates) for q in chunk)
        documents += n
        bar.update(n)
    bar.close()
    fused = hybrid(first_stage, reranked, hybrid_alpha)
    fused_order = hybrid(first_stage_order, reranked, hybrid_alpha)
    out, per_query = {}, {}
    for name, run in (("first_stage", first_stage), ("reranked", reranked), ("hybrid", fused),
                      ("hybrid_order", fused_order)):
        means, values = evaluate({q: run[q] for q in reranked}, qrels)
        out[name] = means
        for qid, v in values.items():
            per_query.setdefault(qid, {})[name] = v
    out.update(docs_per_second=documents / seconds if seconds else 0.0, seconds=seconds,
               documents=documents, prefill_tokens=prefill, decode_tokens=decode,
               queries_evaluated=len(per_query), hybrid_alpha=hybrid_alpha, per_query=per_query,
               run=reranked, distributions=distributions)
    return out


def ranking_scores(candidates) -> dict[str, float]:
    """The first stage's ranking as ``order_scores`` (best n, last 1), ties in input order."""
    ranking = sorted(candidates, key=lambda c: -c.score)  # stable: ties keep their order
    return dict(zip((c.docid for c in ranking), order_scores(len(ranking))))


def format_report(result: dict) -> str:
    names = list(result["reranked"])
    lines = [f"{'':<12}" + "".join(f"{n:>10}" for n in names)]
    for row in ("first_stage", "reranked", "hybrid", "hybrid_order"):
        lines.append(f"{row:<12}" + "".join(f"{result[row][n]:>10.4f}" for n in names))
    lines.append(f"{result['documents']} documents, {result['queries_evaluated']} queries with "
                 f"relevant documents, {result['seconds']:.1f} s ({result['docs_per_second']:.1f} "
                 f"docs/s), {result['prefill_tokens']} prefill + {result['decode_tokens']} decode "
                 f"tokens; hybrid alpha {result['hybrid_alpha']}")
    return "\n".join(lines)
