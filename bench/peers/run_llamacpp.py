"""llama.cpp (llama-cpp-python) on a peers workload: each query's prefix evaluated once, then
for each document the K/V cut back to the prefix and its suffix evaluated, reading only the last
token's logits (``logits_all`` off: it would compute and store logits for every prompt token);
P("0" | "1") by evaluating one more token, left out of the timing as vLLM's is. think = N:
greedy decoding one token per call up to N tokens or ``</think>``, then the forced answer
opening. Weights: ``q4_1`` (the GGUF file as shipped; llama.cpp's AMX/VNNI paths cover
quantised types), or a copy of it written by run_peers.py (``gguf_copies.py``): ``bf16``,
``f32`` (the de-quantised weights every other system loads) or ``q8_0`` (llama.cpp's 8-bit
blocks).

    bench/peers/.venv-llamacpp/bin/python bench/peers/run_llamacpp.py WORKLOAD OUT --weights q4_1
"""

from __future__ import annotations

import argparse
import os
import time

import peer_io


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload")
    parser.add_argument("out")
    parser.add_argument("--weights", choices=["q4_1", "bf16", "f32", "q8_0"], default="q4_1")
    args = parser.parse_args()

    import llama_cpp
    import numpy as np

    w = peer_io.read(args.workload)
    tok = w["tokens"]
    threads = len(os.sched_getaffinity(0))
    settings = dict(n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads,
                    logits_all=False)
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=w["gguf"][args.weights], verbose=False, seed=0, **settings)
    settings.update(weights=args.weights, zero_after_one_timed=False)
    load_s = time.perf_counter() - start
    vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,)).astype(np.float64)

    def log_softmax(logits, ids):
        m = logits.max()
        lse = m + np.log(np.exp(logits - m).sum())
        return [float(logits[i] - lse) for i in ids]

    zero_after_one_s = [0.0]

    def excluded() -> float:
        """P("0" after "1") is left out of the timing, as for vLLM (its one more token per
        document runs inside the timed call here: the K/V is cut back for the next document)."""
        seconds, zero_after_one_s[0] = zero_after_one_s[0], 0.0
        return seconds

    def score_doc(n_prefix: int, suffix: list[int]):
        llm.n_tokens = n_prefix  # eval() drops the K/V past n_tokens
        llm.eval(suffix)
        logits, generated = last_logits(), []
        if w["think"] != "off":
            text, closed = "", False
            while len(generated) < int(w["think"]):
                t = int(logits.argmax())
                if t in tok["eos"]:
                    break
                generated.append(t)
                text += llm.detokenize([t]).decode("utf-8", errors="ignore")
                llm.eval([t])
                logits = last_logits()
                if "</think>" in text:
                    closed = True
                    break
            llm.eval(peer_io.forced_after(text, tok["think_close_answer"], tok["answer_open"],
                                          closed))
            logits = last_logits()
        digits = log_softmax(logits, tok["digits"])
        start = time.perf_counter()
        llm.eval([tok["one"]])
        zero = log_softmax(last_logits(), [tok["digits"][0]])[0]
        zero_after_one_s[0] += time.perf_counter() - start
        return {"digit_logprobs": digits, "zero_after_one": zero, "generated": len(generated)}

    def score(q, n):
        llm.reset()
        llm.eval(q["prefix"])
        n_prefix = llm.n_tokens
        return [score_doc(n_prefix, s) for s in q["suffixes"][:n]]

    warmup_s, results = peer_io.timed_queries(w, score, system=f"llama.cpp {args.weights}",
                                              warmup_docs=4, excluded=excluded)
    peer_io.write(args.out, {"system": f"llamacpp_{args.weights}", "version":
                             llama_cpp.__version__, "settings": settings, "load_s": load_s,
                             "warmup_s": warmup_s, "queries": results})


if __name__ == "__main__":
    main()
