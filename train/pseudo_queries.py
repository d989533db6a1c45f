"""Pseudo-queries for training passages (``erank_fast.training.pseudo_queries``).

    python train/pseudo_queries.py --data ../shared/data/dl21-bm25-top100.jsonl \\
        --max_queries 43 --per_query 10 --out runs/dl21-pseudo.jsonl

Passages are drawn from each query's candidates with a seeded generator; decoding is greedy;
questions that fail the filter (``usable``) are dropped. ``--exclude`` an earlier output to draw
only passages it does not hold (a passage whose question was dropped may be drawn again);
concatenated, the files are one training set. Output: JSONL ``{"qid", "docid",
"query"}``; an existing ``--out`` is refused.
"""

from erank_fast.training.pseudo_queries import main

if __name__ == "__main__":
    main()
