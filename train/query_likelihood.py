"""Query-likelihood teacher scores (``erank_fast.training.query_likelihood``).

    python train/query_likelihood.py --model smollm2-135m-instruct \\
        --data ../shared/data/dl21-bm25-top100.jsonl --out runs/dl21-qlm.jsonl

Output: JSONL ``{"qid", "docid", "score"}``. Resumable: queries already complete in ``--out``
are skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

from erank_fast.training.arguments import ScriptParser
from erank_fast.training.query_likelihood import query_loglikelihoods, read_scores


def main(argv=None) -> None:
    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", required=True, help="reranking JSONL (qid, query, candidates)")
    parser.add_argument("--out", required=True, help="JSONL of {qid, docid, score}")
    parser.add_argument("--depth", type=int, default=None, help="score the top K candidates")
    parser.add_argument("--max_queries", type=int, default=None)
    parser.add_argument("--max_passage_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=25)
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from erank_fast.datasets import read_jsonl
    from erank_fast.training.policy import load_float32_model

    queries = read_jsonl(args.data, depth=args.depth)[: args.max_queries]
    counts: dict[str, int] = {}
    if Path(args.out).is_file():
        for qid, _ in read_scores(args.out):
            counts[qid] = counts.get(qid, 0) + 1
    # A query cut off mid-write is scored again (read_scores keeps one score per document).
    todo = [q for q in queries if counts.get(q.qid, 0) < len(q.candidates)]
    if not todo:
        print(f"{args.out}: all {len(queries)} queries already scored")
        return
    model, tokenizer = load_float32_model(args.model)
    model.eval()
    with open(args.out, "a", encoding="utf-8") as out:
        for q in tqdm(todo, desc="query likelihood", unit="query"):
            scores = query_loglikelihoods(model, tokenizer, q.text, [c.text for c in q.candidates],
                                          max_passage_tokens=args.max_passage_tokens,
                                          batch_size=args.batch_size)
            out.writelines(json.dumps({"qid": q.qid, "docid": c.docid, "score": s}) + "\n"
                           for c, s in zip(q.candidates, scores))
            out.flush()


if __name__ == "__main__":
    main()
