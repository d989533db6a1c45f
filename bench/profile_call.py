"""Where erank_fast's time goes: one rerank call under torch.profiler, its operators grouped by
kind of work (matrix multiplies, attention, element-wise, copies and casts, the rest: Python,
scheduling, the tokenizer), the achieved FLOP/s of the matrix multiplies and of the whole call,
and this machine's GEMM peak measured in the same run at the model's shapes.

    python bench/profile_call.py --data ../shared/data/dl19-bm25-top100.jsonl --dtype bfloat16 \
        [--model erank-smol] [--think off|N] [--docs 100] [--quantize int8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

KINDS = {
    # the linear layers and the score head (packed, int8 or not); attention's matmuls are
    # batched
    "matmul (linear layers)": ("mm", "addmm", "linear", "_linear_pointwise",
                               "qlinear_pointwise"),  # + epilogues
    # decoder_layer_ / decoder_layer_packed_ (a layer in one C++ call): their own time is the
    # attention and the RMSNorm, RoPE and K/V-write kernels called inside them (the linear
    # layers and ATen's element-wise ops they call are counted as such)
    "attention": ("bmm", "baddbmm", "matmul", "scaled_dot_product", "flash_attention",
                  "decode_attention", "shared_prefix_attention", "logsumexp", "softmax",
                  "_softmax", "decoder_layer"),
    "copies and casts": ("copy_", "_to_copy", "to", "index", "index_select", "index_put",
                         "_index_put_impl_", "cat", "stack", "clone", "contiguous", "gather",
                         "fill_", "zero_", "empty", "masked_fill"),
    "element-wise": ("mul", "add", "sub", "div", "silu", "pow", "rsqrt", "rms_norm",
                     "_fused_rms_norm", "neg", "exp", "where", "maximum", "le", "lt", "ge",
                     "bitwise", "sum", "mean", "max", "argmax", "amax", "embedding", "cos",
                     "sin", "log", "logaddexp", "nan_to_num", "rotary_",
                     # quantize="int8": the row kernels around the int8 GEMMs
                     "rms_norm_quantize", "silu_mul_quantize", "quantize_rows", "scale_rows_",
                     "scaled_add_"),
}


def kind_of(name: str) -> str:
    op = name.split("::")[-1].rstrip("_") if "::" in name else name
    for kind, ops in KINDS.items():
        if any(op == o.rstrip("_") or (len(o) > 4 and o in name) for o in ops):
            return kind
    return "other ops"


def gemm_peak(hidden: int, intermediate: int, dtype: torch.dtype, tokens: int = 2048,
              quantize: str = "none") -> float:
    """FLOP/s of the model's largest projection at this many tokens, best of 5 (same process);
    quantize="int8": the int8 GEMM alone (activations quantised once, outside the timing), as
    the profile's matmul kind counts it."""
    x = torch.randn(tokens, hidden).to(dtype)
    w = torch.randn(intermediate, hidden).to(dtype)
    from erank_fast.ops.packed_linear import (
        pack_weight,
        packed_matmul,
        packing_available,
    )

    if quantize == "int8":
        from erank_fast.ops.int8_linear import Int8Linear, quantize_rows

        linear = torch.nn.Linear(hidden, intermediate, bias=False, dtype=dtype)
        linear.weight = torch.nn.Parameter(w)
        layer, rows = Int8Linear(linear), quantize_rows(x)

        def f():
            return layer.unscaled(rows)
    elif packing_available(w):  # as the engine multiplies
        packed = pack_weight(w)

        def f():
            return packed_matmul(x, packed)
    else:
        def f():
            return torch.nn.functional.linear(x, w)
    f()
    best = min(_timed(f) for _ in range(5))
    return 2 * tokens * hidden * intermediate / best


def _timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def main() -> None:
    from torch.profiler import ProfilerActivity, profile

    from erank_fast import Reranker
    from erank_fast.cpu import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default="erank-smol")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--think", default="off")
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quantize", default="none", choices=["none", "int8"])
    parser.add_argument("--top", type=int, default=0, help="also list the N costliest operators")
    args = parser.parse_args()
    row = json.loads(args.data.open(encoding="utf-8").readline())
    docs = [c["text"] for c in row["candidates"][: args.docs]]
    rr = Reranker.from_pretrained(args.model, think=args.think, quantize=args.quantize,
                                  dtype=getattr(torch, args.dtype) if args.dtype else None)
    rr.rerank(row["query"], docs[:8])  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        results = rr.rerank(row["query"], docs)
        seconds = time.perf_counter() - start
    by_kind: dict[str, float] = {}
    for event in prof.key_averages():
        by_kind[kind_of(event.key)] = by_kind.get(kind_of(event.key), 0.0) + \
            event.self_cpu_time_total / 1e6
    profiled = sum(by_kind.values())
    by_kind["python and scheduling"] = max(0.0, seconds - profiled)
    config = rr.backend.decoder.config
    h, f, d = config.hidden_size, config.intermediate_size, config.head_dim
    params = config.num_layers * (h * d * (2 * config.num_heads + 2 * config.num_kv_heads)
                                  + 3 * h * f)  # q, o, k, v and the MLP: non-embedding weights
    stats = results.stats
    tokens = stats.prefill_tokens + stats.decode_tokens
    flops = 2 * params * tokens
    dtype = getattr(torch, rr.dtype)
    peak = gemm_peak(config.hidden_size, config.intermediate_size, dtype, quantize=args.quantize)
    report = {
        "cpu": cpu_info(), "model": args.model, "dtype": rr.dtype, "think": args.think,
        "quantize": args.quantize,
        "documents": len(docs), "seconds": seconds, "docs_per_s": len(docs) / seconds,
        "tokens_computed": tokens, "steps": stats.steps,
        "seconds_by_kind": {k: round(v, 3) for k, v in sorted(by_kind.items(),
                                                              key=lambda kv: -kv[1])},
        "matmul_tflops": flops / by_kind.get("matmul (linear layers)", float("nan")) / 1e12,
        "call_tflops": flops / seconds / 1e12, "gemm_peak_tflops": peak / 1e12,
        "roofline_s": flops / peak, "roofline_fraction": flops / peak / seconds,
    }
    print(f"{args.model} {rr.dtype} think={args.think}, {len(docs)} documents, "
          f"{report['cpu']['model']} ({report['cpu']['cores']} cores): {seconds:.2f} s, "
          f"{report['docs_per_s']:.2f} docs/s, {tokens} tokens, {stats.steps} steps")
    for kind, s in report["seconds_by_kind"].items():
        print(f"  {kind:22s} {s:7.2f} s  {100 * s / seconds:5.1f} %")
    print(f"  matmuls {report['matmul_tflops']:.3f} TFLOP/s, whole call "
          f"{report['call_tflops']:.3f}; GEMM peak here {report['gemm_peak_tflops']:.3f} "
          f"(linear-layer FLOPs {flops / 1e12:.2f} T, roofline {report['roofline_s']:.2f} s, "
          f"{100 * report['roofline_fraction']:.0f} % of it)")
    if args.top:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
