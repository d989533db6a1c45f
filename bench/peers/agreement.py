"""Agreement of two systems' score distributions on the same workload: the expected score
Σ s·p(s) per document (p(10) = p("1")·P("0" | "1"), as erank_fast reads it), then per query
the largest |Δ expected score|, the Spearman correlation of the two rankings and the overlap of
their top 10."""

from __future__ import annotations

import math


def expected_score(doc: dict) -> float:
    p = [math.exp(x) for x in doc["digit_logprobs"]]
    q = math.exp(doc["zero_after_one"])
    dist = [p[0], p[1] * (1.0 - q), *p[2:], p[1] * q]
    return sum(s * x for s, x in enumerate(dist))


def _ranks(values: list[float]) -> list[float]:
    """Average ranks (ties share their mean rank), as Spearman's rho needs."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else 1.0


def top_overlap(a: list[float], b: list[float], k: int = 10) -> float:
    def top(v):
        return set(sorted(range(len(v)), key=lambda i: (-v[i], i))[:k])
    return len(top(a) & top(b)) / min(k, len(a))


def agreement(result: dict, reference: dict) -> dict:
    """result and reference: runner result files of the same workload."""
    deltas, rhos, overlaps = [], [], []
    for q, r in zip(result["queries"], reference["queries"]):
        if q["qid"] != r["qid"] or len(q["docs"]) != len(r["docs"]):
            raise ValueError(f"the results are not of the same workload (query {q['qid']})")
        a = [expected_score(d) for d in q["docs"]]
        b = [expected_score(d) for d in r["docs"]]
        deltas.append(max(abs(x - y) for x, y in zip(a, b)))
        rhos.append(spearman(a, b))
        overlaps.append(top_overlap(a, b))
    return {"max_abs_delta_score": max(deltas), "spearman": sum(rhos) / len(rhos),
            "top10_overlap": sum(overlaps) / len(overlaps)}
