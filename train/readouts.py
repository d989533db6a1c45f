"""Score readouts and fusions, compared: nDCG@10 of the rankings read from each document's score
probabilities p(0..10) in other ways than the served one (the expected score Σ s·p(s)), alone and
fused with the first stage, each paired query by query with what is served.

    erank-fast eval --model erank-smol --data ../shared/data/dl21-bm25-top100.jsonl \\
        --skip-queries 43 --qrels ../shared/data/dl21-bm25-top100.qrels \\
        --save-distributions dl21h.json
    python train/readouts.py --set ../shared/data/dl21-bm25-top100.jsonl \\
        ../shared/data/dl21-bm25-top100.qrels dl21h.json [--set DATA QRELS DISTRIBUTIONS ...]

p(s) are the probabilities of the score tokens over the whole vocabulary, as the engine reads
them (a trained reranker puts nearly all its mass there). The first stage's scores come from the
data, for the queries the distributions hold. Alone, each readout is compared with the expected
score; fused, with the served hybrid (alpha · z(first stage) + (1 − alpha) · z(expected
score)). "rrf" is reciprocal-rank fusion with the same weights (k = 60). With several sets, a
last table pools their queries.
"""

from __future__ import annotations

import argparse
import json
import math

from erank_fast.evaluation.metrics import evaluate, hybrid
from erank_fast.evaluation.significance import compare
from erank_fast.evaluation.trec import read_jsonl, read_qrels
from erank_fast.fusion import DEFAULT_HYBRID_ALPHA, check_alpha
from erank_fast.scoring import expected_score as expected

RRF_K = 60
TINY = 1e-300  # keeps log() finite where a probability underflowed to 0


def tempered(t: float):
    """The expected score under p(s)^(1/t), renormalised: t < 1 sharpens, t > 1 flattens."""
    def readout(p) -> float:
        w = [x ** (1.0 / t) for x in p]
        return expected(w) / sum(w)
    return readout


def log_odds(k: int):
    """log P(score ≥ k) − log P(score < k)."""
    return lambda p: math.log(max(sum(p[k:]), TINY)) - math.log(max(sum(p[:k]), TINY))


READOUTS = {
    "expected (served)": expected,
    "argmax s × p(s)": lambda p: max(range(len(p)), key=p.__getitem__) * max(p),
    "tempered t=0.5": tempered(0.5),
    "tempered t=2": tempered(2.0),
    "E[s²]": lambda p: sum(s * s * x for s, x in enumerate(p)),
    "−log p(0)": lambda p: -math.log(max(p[0], TINY)),
    "log-odds s ≥ 3": log_odds(3),
    "log-odds s ≥ 5": log_odds(5),
}


def rrf(first: dict[str, float], model: dict[str, float], alpha: float) -> dict[str, float]:
    """alpha / (k + rank in first) + (1 − alpha) / (k + rank in model), ranks from 0; tied
    scores keep the documents' input order (the first stage's), which matters for readouts with
    many ties such as s × p(s)."""
    def ranks(scores):
        return {d: i for i, d in enumerate(sorted(scores, key=lambda d: -scores[d]))}
    rf, rm = ranks(first), ranks(model)
    return {d: alpha / (RRF_K + rf[d]) + (1 - alpha) / (RRF_K + rm[d]) for d in model}


def per_query_ndcg(first, distributions, qrels, alpha: float) -> dict[str, dict[str, float]]:
    """{"readout", "readout z", "readout rrf": {qid: nDCG@10}} for every readout."""
    out = {}
    for name, readout in READOUTS.items():
        run = {q: {d: readout(p) for d, p in docs.items()} for q, docs in distributions.items()}
        fused_z = hybrid(first, run, alpha)
        fused_rrf = {q: rrf(first[q], run[q], alpha) for q in run}
        for suffix, r in (("", run), (" z", fused_z), (" rrf", fused_rrf)):
            _, values = evaluate(r, qrels)
            out[name + suffix] = {q: v["ndcg@10"] for q, v in values.items()}
    return out


def load_set(data: str, qrels_path: str, distributions_path: str):
    """The first stage's scores, the distributions and the qrels of one set."""
    with open(distributions_path, encoding="utf-8") as f:
        distributions = json.load(f)
    queries = {q.qid: q for q in read_jsonl(data)}
    missing = sorted(q for q in distributions if q not in queries)
    if missing:
        raise ValueError(f"{data} has no candidates for {len(missing)} queries of "
                         f"{distributions_path} ({', '.join(missing[:5])})")
    first = {q: {c.docid: c.score for c in queries[q].candidates} for q in distributions}
    return first, distributions, read_qrels(qrels_path)


def table(values: dict[str, dict[str, float]]) -> str:
    served = next(iter(READOUTS))
    lines = ["| readout | alone | − served [95 % CI], p | z hybrid | − served hybrid, p "
             "| rrf hybrid | − served hybrid, p |", "|---" * 7 + "|"]
    for name in READOUTS:
        cells = [name]
        for suffix, base in (("", served), (" z", served + " z"), (" rrf", served + " z")):
            v = values[name + suffix]
            c = compare(values[base], v)
            cells.append(f"{sum(v.values()) / len(v):.4f}")
            interval = f" [{c.ci_low:+.4f}, {c.ci_high:+.4f}]" if suffix == "" else ""
            cells.append(f"{c.difference:+.4f}{interval}, {c.p_value:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", nargs=3, action="append", required=True,
                   metavar=("DATA", "QRELS", "DISTRIBUTIONS"),
                   help="reranking JSONL, its qrels, and eval --save-distributions' file")
    p.add_argument("--alpha", type=float, default=DEFAULT_HYBRID_ALPHA)
    args = p.parse_args(argv)
    check_alpha(args.alpha)
    pooled: dict[str, dict[str, float]] = {}
    for i, (data, qrels, dist) in enumerate(args.set):
        values = per_query_ndcg(*load_set(data, qrels, dist), args.alpha)
        print(f"\n{dist} ({len(next(iter(values.values())))} queries, nDCG@10)\n")
        print(table(values))
        for name, v in values.items():
            pooled.setdefault(name, {}).update({f"{i}:{q}": x for q, x in v.items()})
    if len(args.set) > 1:
        print(f"\npooled ({len(next(iter(pooled.values())))} queries, nDCG@10)\n")
        print(table(pooled))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
