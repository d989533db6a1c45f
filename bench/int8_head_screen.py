"""Would an int8 screen of the vocabulary head keep reasoning tokens exact? Measured on the rows
a real thinking call feeds the greedy head.

A reasoning step needs only the argmax of hidden @ lm_head.T. With ``quantize="int8"`` the head
stays float32 (as vLLM's W8A8 keeps it): 49152 × 576 float32 for SmolLM2, 113 MB a step. An
exact screen would compute int8 logits (the rows quantised per row as ``Int8Linear`` does, the
head per vocabulary row), bound each logit's error rigorously,

    |x·w − x̃·w̃| ≤ ‖x − x̃‖₂ ‖w‖₂ + ‖x̃‖₂ ‖w − w̃‖₂     (Cauchy-Schwarz, each row's own errors)

keep the tokens whose upper bound reaches the best lower bound, and recompute only those in
float32. This script reranks one query's documents with thinking on, keeps every row the greedy
head sees, and prints how many candidates that bound leaves (and that it keeps the float32
argmax on every row), how often a plain int8 argmax agrees with the float32 one, and both
heads' times at one step's rows.

    python bench/int8_head_screen.py --data ../shared/data/dl19-bm25-top100.jsonl \
        --model PATH [--think 64] [--docs 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn


def captured_rows(model: str, data: Path, think: str, docs: int):
    """(the hidden rows of every greedy head call of one int8 rerank call, the float32 head's
    argmax of each, the lm_head weight)."""
    import erank_fast.engine.readout as readout
    from erank_fast import Reranker

    row = json.loads(data.open(encoding="utf-8").readline())
    texts = [c["text"] for c in row["candidates"][:docs]]
    rr = Reranker.from_pretrained(model, think=think, quantize="int8", dtype=torch.float32)
    calls, original = [], readout.greedy_tokens

    def spy(hidden, weight, **kwargs):
        best = original(hidden, weight, **kwargs)
        calls.append((hidden.detach().float().clone(), best.clone(), weight))
        return best

    readout.greedy_tokens = spy
    try:
        rr.rerank(row["query"], texts)
    finally:
        readout.greedy_tokens = original
    if not calls:
        raise SystemExit("no reasoning steps: use --think with a budget (e.g. 64)")
    return [c[0] for c in calls], [c[1] for c in calls], calls[0][2].float()


def milliseconds(fn, repeats: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    from erank_fast.cpu import cpu_info
    from erank_fast.ops.int8_linear import Int8Linear, quantize_rows, quantize_weight_rows
    from erank_fast.ops.score_head import greedy_tokens, pack_vocab_chunks

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--think", default="64")
    parser.add_argument("--docs", type=int, default=100)
    args = parser.parse_args()

    rows, argmax, weight = captured_rows(args.model, args.data, args.think, args.docs)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight
    head = Int8Linear(linear)
    w_q, w_scale = quantize_weight_rows(weight, head.levels)  # the head's rounding, unpacked
    w_error = (weight - w_q.float() * w_scale[:, None]).norm(dim=1)
    w_norm = weight.norm(dim=1)

    candidates, unions, agree, kept = [], [], 0, 0
    for hidden, best in zip(rows, argmax):
        x = quantize_rows(hidden)
        x_tilde = x.dequantized()
        logits = head(x)
        bound = ((hidden - x_tilde).norm(dim=1)[:, None] * w_norm
                 + x_tilde.norm(dim=1)[:, None] * w_error) * 1.01 + 1e-4  # + float32 rounding
        keep = (logits + bound) >= (logits - bound).max(dim=1, keepdim=True).values
        candidates += keep.sum(dim=1).tolist()
        unions.append(int(keep.any(dim=0).sum()))
        agree += int((logits.argmax(dim=1) == best).sum())
        kept += int(keep[torch.arange(len(best)), best].sum())  # the bound's own check
    count = torch.tensor(candidates, dtype=torch.float32)
    step = max(rows, key=lambda r: r.shape[0] if r.shape[0] <= 44 else 0)
    chunks = pack_vocab_chunks(weight)
    print(f"{cpu_info()['model']}: {len(rows)} reasoning steps, {len(candidates)} rows, "
          f"vocabulary {weight.shape[0]}")
    print(f"candidates a row keeps: median {count.median():.0f}, p90 {count.quantile(0.9):.0f}, "
          f"max {count.max():.0f}; a step's union: median "
          f"{torch.tensor(unions, dtype=torch.float32).median():.0f}, max {max(unions)}")
    print(f"the float32 argmax among the candidates on {kept} of {len(candidates)} rows "
          f"(a rigorous bound keeps it on all); plain int8 argmax = float32 argmax on "
          f"{agree / len(candidates):.1%} of rows")
    print(f"at {step.shape[0]} rows: float32 greedy head "
          f"{milliseconds(lambda: greedy_tokens(step, weight, packed_chunks=chunks)):.1f} ms, "
          f"int8 logits {milliseconds(lambda: head(step)):.1f} ms")


if __name__ == "__main__":
    main()
