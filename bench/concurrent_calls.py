"""Calls that arrive while others run, as a server sees them: one small call first, then
``--calls`` larger ones from as many threads while it is still running, all through one
``Reranker`` (the engine the HTTP server drives). Reports the wall time until every call is
answered, docs/s, engine steps and the K/V arena's rows at the end, so that scheduling and
memory changes can be compared on the same workload (run it once per checkout, e.g. with
``PYTHONPATH`` pointing at a git worktree of the previous commit).

    python bench/concurrent_calls.py --data ../shared/data/dl19-bm25-top100.jsonl \\
        [--model smollm2-135m-instruct] [--think 64] [--first 8] [--calls 4] [--docs 24] \\
        [--repeats 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import torch


def run_once(rr, rows, first: int, calls: int, docs: int) -> float:
    def call(row, n):
        rr.rerank(row["query"], [c["text"] for c in row["candidates"][:n]])

    started = time.perf_counter()
    threads = [threading.Thread(target=call, args=(rows[0], first))]
    threads[0].start()
    time.sleep(0.3)  # the small call is running when the others arrive
    for row in rows[1:calls + 1]:
        threads.append(threading.Thread(target=call, args=(row, docs)))
        threads[-1].start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def main() -> None:
    from erank_fast import Reranker
    from erank_fast.cpu import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--think", default="64")
    parser.add_argument("--first", type=int, default=8, help="documents of the first call")
    parser.add_argument("--calls", type=int, default=4, help="calls arriving while it runs")
    parser.add_argument("--docs", type=int, default=24, help="documents of each of those")
    parser.add_argument("--repeats", type=int, default=2, help="fresh rerankers, one run each")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # from the sixth query on: other queries than the first ones the peers harness and
    # profile_call.py time, so no call here repeats one of theirs
    rows = [json.loads(line) for line in args.data.open(encoding="utf-8")][5:]
    total = args.first + args.calls * args.docs
    runs = []
    for _ in range(args.repeats):
        rr = Reranker.from_pretrained(args.model, think=args.think,
                                      dtype=getattr(torch, args.dtype))
        rr.rerank("warm-up", ["one", "two"])
        seconds = run_once(rr, rows, args.first, args.calls, args.docs)
        snapshot = rr.inspect()
        runs.append({"seconds": seconds, "docs_per_second": total / seconds,
                     "steps": snapshot.steps_run, "arena_rows": snapshot.kv_arena_rows})
        print(f"{seconds:.1f} s, {total / seconds:.2f} docs/s, {snapshot.steps_run} steps, "
              f"arena {snapshot.kv_arena_rows} rows", flush=True)
        del rr
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_info(), "args": {
            k: str(v) for k, v in vars(args).items()}, "documents": total, "runs": runs},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
