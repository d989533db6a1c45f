"""Pseudo-queries for training passages (``erank_fast.training.pseudo_queries``).

    python train/pseudo_queries.py --data ../shared/data/dl21-bm25-top100.jsonl \\
        --max_queries 43 --per_query 10 --out runs/dl21-pseudo.jsonl

Passages are drawn from each query's candidates with a seeded generator; decoding is greedy;
questions that fail the filter (``usable``) are dropped. Output: JSONL ``{"qid", "docid",
"query"}``; an existing ``--out`` is refused.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from erank_fast.training.arguments import ScriptParser
from erank_fast.training.pseudo_queries import generate_questions, usable


def main(argv=None) -> None:
    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", required=True, help="reranking JSONL (qid, query, candidates)")
    parser.add_argument("--out", required=True, help="JSONL of {qid, docid, query}")
    parser.add_argument("--max_queries", type=int, default=None,
                        help="use the first N queries only (keep held-out queries out)")
    parser.add_argument("--per_query", type=int, default=10, help="passages per real query")
    parser.add_argument("--max_passage_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.per_query < 1:
        parser.error("--per_query must be at least 1")
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; choose another --out or remove it")

    from tqdm.auto import tqdm

    from erank_fast.datasets import read_jsonl
    from erank_fast.training.policy import load_float32_model

    queries = read_jsonl(args.data)[: args.max_queries]
    rng = random.Random(args.seed)
    picks = [(q.qid, c) for q in queries
             for c in rng.sample(q.candidates, min(args.per_query, len(q.candidates)))]
    model, tokenizer = load_float32_model(args.model)
    model.eval()
    kept = 0
    with open(args.out, "w", encoding="utf-8") as out:
        bar = tqdm(total=len(picks), desc="pseudo-queries", unit="passage")
        for start in range(0, len(picks), args.batch_size):
            chunk = picks[start:start + args.batch_size]
            questions = generate_questions(model, tokenizer, [c.text for _, c in chunk],
                                           max_passage_tokens=args.max_passage_tokens,
                                           batch_size=args.batch_size)
            for (qid, c), question in zip(chunk, questions):
                if usable(question, c.text):
                    out.write(json.dumps({"qid": qid, "docid": c.docid, "query": question}) + "\n")
                    kept += 1
            out.flush()
            bar.update(len(chunk))
        bar.close()
    print(f"{kept} of {len(picks)} passages gave a usable question -> {args.out}")


if __name__ == "__main__":
    main()
