"""The files between the peers driver and the peer runners (no erank_fast import: runners live
in their peers' own virtual environments).

Workload (written by ``run_peers.py``; ``gguf``: the shipped file and the copies the llama.cpp
systems of the run read, ``gguf_copies.KINDS``)::

    {"think": "off" | N, "model_dir": ..., "gguf": {"q4_1": path, "f32": path, ...},
     "tokens": {"digits": [10 ids], "one": id, "answer_open": [...], "think_close_answer": [...],
                "eos": [...]},
     "queries": [{"qid": ..., "prefix": [...], "suffixes": [[...], ...]}]}

prefix + suffixes[i] is document i's full prompt; with think "off" it ends at the answer
position. Results (written by each runner)::

    {"system": ..., "version": ..., "settings": {...}, "load_s": ..., "warmup_s": ...,
     "queries": [{"qid": ..., "seconds": ..., "docs": [
         {"digit_logprobs": [10 floats], "zero_after_one": float, "generated": int}]}]}

``seconds`` covers only the scoring of that query's documents (the model loaded and warm).
"""

from __future__ import annotations

import json
import math
import time


def read(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def log_softmax_at(logits, ids: list[int]) -> list[float]:
    """log-softmax of a full-vocabulary logit row (a sequence of floats / numpy array) at ids."""
    m = max(logits)
    lse = m + math.log(sum(math.exp(x - m) for x in logits))
    return [float(logits[i]) - lse for i in ids]


def forced_after(text: str, think_close_answer: list[int], answer_open: list[int],
                 stopped_at_close: bool) -> list[int]:
    """The answer's forced opening after a reasoning: ``<answer>`` when the model closed its
    reasoning itself, else ``</think><answer>`` (budget spent or end of sequence)."""
    return list(answer_open if stopped_at_close or "</think>" in text else think_close_answer)


def timed_queries(workload: dict, score, *, system: str, warmup_docs: int = 8,
                  before=None, after=None, excluded=None) -> tuple[float, list[dict]]:
    """Warm up on the first query's first documents, then score each query timed.

    score(query, n) -> the per-document result dicts of the query's first n documents (all
    when n is None). before(query): untimed, before each timed call (e.g. a cache reset);
    after(query, docs) -> docs: untimed, after it (e.g. a read the timing leaves out);
    excluded() -> the seconds since its last call spent inside the timed call on such a read,
    when it cannot be moved out of the call (subtracted from the call's time).
    Returns (warm-up seconds, the "queries" list of a result file)."""
    start = time.perf_counter()
    score(workload["queries"][0], warmup_docs)
    warmup_s = time.perf_counter() - start
    results = []
    for q in workload["queries"]:
        if before is not None:
            before(q)
        if excluded is not None:
            excluded()
        start = time.perf_counter()
        docs = score(q, None)
        seconds = time.perf_counter() - start
        if excluded is not None:
            seconds -= excluded()
        if after is not None:
            docs = after(q, docs)
        results.append({"qid": q["qid"], "seconds": seconds, "docs": docs})
        print(f"{system} {q['qid']}: {len(docs) / seconds:.2f} docs/s", flush=True)
    return warmup_s, results
