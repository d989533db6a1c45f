"""erank_fast on a peers workload: exactly the workload's token ids through the engine
(``Reranker.backend.run`` with each query's prefix and suffixes), the same result file as the
peer runners.

    python bench/peers/run_erank_fast.py WORKLOAD.json OUT.json [--dtype auto|float32|bfloat16]
"""

from __future__ import annotations

import argparse
import time

import peer_io


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload")
    parser.add_argument("out")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    import torch

    import erank_fast
    from erank_fast import Reranker
    from erank_fast.prompt import QueryPrompts

    w = peer_io.read(args.workload)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    start = time.perf_counter()
    rr = Reranker.from_pretrained(w["model_dir"], dtype=dtype, think=w["think"])
    load_s = time.perf_counter() - start
    budget = rr.config.budget(rr.config.think)

    def score(q, n=None):
        suffixes = q["suffixes"][:n]
        return rr.backend.run([QueryPrompts(q["prefix"], suffixes)], budget)[0][0]

    start = time.perf_counter()
    score(w["queries"][0], 8)  # warm-up (compiled code, if any, is built here)
    warmup_s = time.perf_counter() - start
    results = []
    for q in w["queries"]:
        start = time.perf_counter()
        readouts = score(q)
        seconds = time.perf_counter() - start
        results.append({"qid": q["qid"], "seconds": seconds, "docs": [
            {"digit_logprobs": list(r.digit_logprobs), "zero_after_one": r.zero_after_one_logprob,
             "generated": len(r.generated)} for r in readouts]})
        print(f"erank_fast {q['qid']}: {len(readouts) / seconds:.2f} docs/s", flush=True)
    peer_io.write(args.out, {
        "system": "erank_fast", "version": erank_fast.__version__,
        "settings": {"dtype": str(rr.backend.dtype).replace("torch.", ""), "think": w["think"]},
        "load_s": load_s, "warmup_s": warmup_s, "queries": results})


if __name__ == "__main__":
    main()
