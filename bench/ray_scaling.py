"""Ray's overhead on this machine: the same queries scored by the in-process Reranker and by
``rerank_batch`` with 1 and 2 actors (the cores split between them), pairs/s and the largest
score difference against the in-process run.

    python bench/ray_scaling.py --data ../shared/data/dl19-bm25-top100.jsonl \\
        ../shared/data/dl21-bm25-top100.jsonl --depth 20 --out bench/results

The in-process baseline calls ``rerank_many`` on the same groups of ``--queries-per-batch``
queries the actors get, so with 1 actor (all cores) its batches, threads and results are the
same and the ratio is Ray's cost alone (actor start-up excluded: it is reported as ``startup``).
Writes ``<date>-ray-scaling-<cpu>.json`` and a PNG. Not a CI benchmark (it needs the ``ray``
extra and minutes of the machine)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from erank_fast import Reranker
from erank_fast.batch.inputs import read_queries
from erank_fast.batch.outputs import read_results
from erank_fast.batch.ray_pool import ActorSpec, rerank_batch
from erank_fast.cpu import cpu_info


def in_process(model: str, queries: list[dict], per_batch: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    reranker = Reranker.from_pretrained(model)
    reranker.rerank_many([queries[0]["query"]], [queries[0]["texts"][:2]])  # warm-up
    scores, start = {}, time.perf_counter()
    for i in range(0, len(queries), per_batch):
        chunk = queries[i:i + per_batch]
        for q, res in zip(chunk, reranker.rerank_many([q["query"] for q in chunk],
                                                      [q["texts"] for q in chunk])):
            for r in res:
                scores[(q["qid"], q["docids"][r.index])] = r.score
    seconds = time.perf_counter() - start
    pairs = sum(len(q["docids"]) for q in queries)
    return {"system": "in-process Reranker", "actors": 0, "threads": threads, "pairs": pairs,
            "seconds": seconds, "pairs_per_second": pairs / seconds, "dtype": reranker.dtype,
            "scores": scores}


def with_ray(model: str, path: Path, actors: int, threads: int, per_batch: int,
             depth: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        stats = rerank_batch(str(path), out, ActorSpec(model, {}, threads=threads),
                             actors=actors, queries_per_batch=per_batch, depth=depth,
                             progress=False)
        wall = time.perf_counter() - start
        scores = {(r["qid"], r["docid"]): r["score"] for r in read_results(out)}
    return {"system": f"Ray Data, {actors} actor(s)", "actors": actors, "threads": threads,
            "pairs": stats["pairs"], "seconds": stats["seconds"],
            "pairs_per_second": stats["pairs_per_second"], "wall_seconds": wall,
            "startup": wall - stats["seconds"], "scores": scores}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="reranking JSONL files")
    p.add_argument("--model", default="erank-smol")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--queries-per-batch", type=int, default=4)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cores = len(os.sched_getaffinity(0))
    queries = [q for f in args.data for q in read_queries(f, args.depth)]
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "queries.jsonl"  # one input: both files' queries
        with open(merged, "w", encoding="utf-8") as f:
            for q in queries:
                cands = [{"docid": d, "text": t} for d, t in zip(q["docids"], q["texts"])]
                f.write(json.dumps({"qid": q["qid"], "query": q["query"],
                                    "candidates": cands}) + "\n")
        runs = [in_process(args.model, queries, args.queries_per_batch, cores)]
        print(f"in-process: {runs[0]['pairs_per_second']:.2f} pairs/s", flush=True)
        for actors in (1, 2):
            runs.append(with_ray(args.model, merged, actors, max(1, cores // actors),
                                 args.queries_per_batch, args.depth))
            print(f"{actors} actor(s): {runs[-1]['pairs_per_second']:.2f} pairs/s", flush=True)
    base, reference = runs[0], runs[0]["scores"]
    for r in runs:
        r["vs_in_process"] = r["pairs_per_second"] / base["pairs_per_second"]
        r["missing_pairs"] = len(set(reference) - set(r["scores"]))
        r["max_abs_score_diff"] = (None if r["missing_pairs"] else
                                   max(abs(r["scores"][k] - v) for k, v in reference.items()))
        r["identical_scores"] = r["max_abs_score_diff"] == 0.0
    for r in runs:
        del r["scores"]
    info = cpu_info()
    result = {"cpu": info, "model": args.model, "depth": args.depth, "queries": len(queries),
              "files": args.data, "runs": runs}
    for r in runs:
        print(f"{r['system']:<24} {r['threads']} thread(s)  {r['pairs_per_second']:6.2f} pairs/s "
              f" x{r['vs_in_process']:.2f}  max |d score| {r['max_abs_score_diff']}"
              + (f"  start-up {r['startup']:.1f} s" if "startup" in r else ""))
    stem = Path(args.out) / f"{datetime.date.today()}-ray-scaling-{info['slug']}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([f"{r['system']}\n{r['threads']} thread(s)" for r in runs],
           [r["pairs_per_second"] for r in runs], color=["grey", "C0", "C1"])
    ax.set_ylabel("pairs/s")
    ax.set_title(f"{args.model}, {len(queries)} queries x top {args.depth}\n{info['model']}, "
                 f"{info['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    print(f"wrote {stem}.json/.png")


if __name__ == "__main__":
    main()
