"""Query-likelihood teacher scores (``erank_fast.training.query_likelihood``).

    python train/query_likelihood.py --model smollm2-135m-instruct \\
        --data ../shared/data/dl21-bm25-top100.jsonl --out runs/dl21-qlm.jsonl

Output: JSONL ``{"qid", "docid", "score"}``. Resumable: queries already complete in ``--out``
are skipped, so an interrupted run continues where it stopped.
"""

from erank_fast.training.query_likelihood import main

if __name__ == "__main__":
    main()
