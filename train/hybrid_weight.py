"""The first stage's weight in the hybrid, measured: nDCG@10 of alpha · z(first stage) +
(1 − alpha) · z(reranker) for several alphas, each paired query by query with the default.

    erank-fast eval --model erank-smol --data ../shared/data/dl21-bm25-top100.jsonl \\
        --skip-queries 43 --qrels ../shared/data/dl21-bm25-top100.qrels --save-run dl21h.trec
    python train/hybrid_weight.py --data ../shared/data/dl21-bm25-top100.jsonl \\
        --skip-queries 43 --qrels ../shared/data/dl21-bm25-top100.qrels --run dl21h.trec

The reranker's scores come from the run file ``eval --save-run`` wrote, the first stage's from
the data (``--order``: its ranking alone, as ``first_stage_scores="order"``). Each alpha is
compared with ``--baseline`` (ERank's 0.2, the library's default) by the paired tests of
``erank_fast.evaluation.significance``.
"""

from __future__ import annotations

import argparse

from erank_fast.evaluation.metrics import evaluate, hybrid
from erank_fast.evaluation.runner import ranking_scores
from erank_fast.evaluation.significance import compare
from erank_fast.evaluation.trec import read_jsonl, read_qrels, read_trec_run
from erank_fast.fusion import DEFAULT_HYBRID_ALPHA, check_alpha


def sweep(queries, qrels, reranker_run: dict, alphas, baseline: float, order: bool = False,
          metric: str = "ndcg@10") -> list[tuple[float, float, object]]:
    """[(alpha, mean metric, PairedComparison against ``baseline``)], one per alpha."""
    first = {q.qid: (ranking_scores(q.candidates) if order else
                     {c.docid: c.score for c in q.candidates}) for q in queries}
    missing = sorted(q for q in first if q not in reranker_run)
    if missing:
        raise ValueError(f"the run has no scores for {len(missing)} of the queries "
                         f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
    run = {q: reranker_run[q] for q in first}

    def per_query(alpha: float) -> dict[str, float]:
        _, values = evaluate(hybrid(first, run, alpha), qrels)
        return {q: v[metric] for q, v in values.items()}

    base = per_query(baseline)
    out = []
    for alpha in alphas:
        values = per_query(alpha)
        out.append((alpha, sum(values.values()) / len(values), compare(base, values)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="reranking JSONL (the first stage's scores)")
    p.add_argument("--qrels", required=True)
    p.add_argument("--run", required=True, help="the reranker's scores (eval --save-run)")
    p.add_argument("--skip-queries", type=int, default=0)
    p.add_argument("--alphas", default="0,0.1,0.2,0.3,0.4,0.5")
    p.add_argument("--baseline", type=float, default=DEFAULT_HYBRID_ALPHA)
    p.add_argument("--order", action="store_true", help="fuse the first stage's order alone")
    args = p.parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",")]
    for alpha in [*alphas, args.baseline]:
        check_alpha(alpha)
    queries = read_jsonl(args.data)[args.skip_queries:]
    rows = sweep(queries, read_qrels(args.qrels), read_trec_run(args.run), alphas,
                 args.baseline, order=args.order)
    print(f"| alpha | nDCG@10 | − alpha {args.baseline} [95 % CI] | p (t) | p (randomisation) |")
    print("|---|---|---|---|---|")
    for alpha, mean, c in rows:
        print(f"| {alpha:g} | {mean:.4f} | {c.difference:+.4f} [{c.ci_low:+.4f}, "
              f"{c.ci_high:+.4f}] | {c.p_value:.4f} | {c.p_randomisation:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
