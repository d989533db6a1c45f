"""erank_fast on a peers workload: exactly the workload's token ids through the engine
(``Reranker.backend.run`` with each query's prefix and suffixes), the same result file as the
peer runners.

    python bench/peers/run_erank_fast.py WORKLOAD.json OUT.json [--dtype auto|float32|bfloat16]
        [--quantize none|int8]
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
    parser.add_argument("--quantize", default="none")
    args = parser.parse_args()

    import torch

    import erank_fast
    from erank_fast import Reranker
    from erank_fast.prompt import QueryPrompts

    w = peer_io.read(args.workload)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    start = time.perf_counter()
    rr = Reranker.from_pretrained(w["model_dir"], dtype=dtype, think=w["think"],
                                  quantize=args.quantize)
    load_s = time.perf_counter() - start
    budget = rr.config.budget(rr.config.think)

    def score(q, n):
        readouts = rr.backend.run([QueryPrompts(q["prefix"], q["suffixes"][:n])], budget)[0][0]
        return [{"digit_logprobs": list(r.digit_logprobs),
                 "zero_after_one": r.zero_after_one_logprob, "generated": len(r.generated)}
                for r in readouts]

    # the warm-up builds what is built on first use (the CPU decode kernel, once per machine)
    warmup_s, results = peer_io.timed_queries(w, score, system="erank_fast")
    peer_io.write(args.out, {
        "system": "erank_fast", "version": erank_fast.__version__,
        "settings": {"dtype": str(rr.backend.dtype).replace("torch.", ""), "think": w["think"],
                     "quantize": args.quantize},
        "load_s": load_s, "warmup_s": warmup_s, "queries": results})


if __name__ == "__main__":
    main()
