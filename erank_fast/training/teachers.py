"""Dense teacher scores from a sentence-transformers model (bi-encoder or cross-encoder).

A bi-encoder (e.g. all-MiniLM-L6-v2) encodes every passage and query once and scores a pair by
the cosine of their embeddings, so labelling thousands of (query, passage) pairs costs one
encoding per text; a cross-encoder reads each pair. Scores feed the listwise objective
(``train/sft.py --teacher_scores``) in the JSONL format ``{"qid", "docid", "score"}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from erank_fast.evaluation.trec import Query, read_jsonl
from erank_fast.training.arguments import ScriptParser
from erank_fast.training.pseudo_queries import read_pseudo_queries


def pseudo_qid(row: dict) -> str:
    """The id a pseudo-query ({"qid", "docid", "query"}) is scored and trained under."""
    return f"{row['qid']}:pq:{row['docid']}"


class DenseTeacher:
    """Scores (query, passage) pairs with a sentence-transformers model directory.

    ``max_seq_length`` caps the tokens each text is read with (the model's own cap when None)."""

    def __init__(self, path: str | Path, *, device: str = "cpu", batch_size: int = 64,
                 max_seq_length: int | None = 256, progress: bool = True):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a sentence-transformers model directory "
                             "(no config.json)")
        self.bi_encoder = (path / "modules.json").is_file()
        if self.bi_encoder:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(str(path), device=device)
        else:
            from sentence_transformers import CrossEncoder

            self.model = CrossEncoder(str(path), device=device)
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.batch_size, self.progress = batch_size, progress

    def embed(self, texts: list[str]):
        """Unit-norm embeddings [N, D] (float32): the cosine of two is their dot product."""
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_tensor=True, show_progress_bar=self.progress)

    def score(self, query: str, passages: list[str]) -> list[float]:
        """One score per passage, higher is more relevant."""
        if self.bi_encoder:
            q = self.embed([query])
            return (self.embed(passages) @ q[0]).tolist()
        return [float(s) for s in self.model.predict([(query, p) for p in passages],
                                                      batch_size=self.batch_size,
                                                      show_progress_bar=False)]

    def score_queries(self, queries: list[Query], pseudo: list[dict] = ()) -> Iterator[dict]:
        """Rows {"qid", "docid", "score"}: every candidate of every query, and every candidate of
        a pseudo-query's source query for that pseudo-query (under ``pseudo_qid``)."""
        by_qid = {q.qid: q for q in queries}
        asks = [(q.qid, q.text, q) for q in queries] + [
            (pseudo_qid(p), p["query"], by_qid[p["qid"]]) for p in pseudo if p["qid"] in by_qid]
        if not self.bi_encoder:
            for qid, text, source in asks:
                yield from _rows(qid, source.candidates,
                                 self.score(text, [c.text for c in source.candidates]))
            return
        # Bi-encoder: each distinct passage and query text is encoded once.
        texts = sorted({c.text for q in queries for c in q.candidates})
        index = {t: i for i, t in enumerate(texts)}
        passages = self.embed(texts)
        questions = self.embed([text for _, text, _ in asks])
        for (qid, _, source), vector in zip(asks, questions):
            rows = passages[[index[c.text] for c in source.candidates]] @ vector
            yield from _rows(qid, source.candidates, rows.tolist())


def _rows(qid: str, candidates: Iterable, scores: list[float]) -> Iterator[dict]:
    for c, s in zip(candidates, scores):
        yield {"qid": qid, "docid": c.docid, "score": float(s)}


def write_scores(rows: Iterable[dict], out: str | Path) -> int:
    """Write rows as JSONL, atomically (a partial file never takes ``out``'s name)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    tmp.replace(out)
    return n


def main(argv=None) -> None:
    parser = ScriptParser(description='Dense teacher scores from a sentence-transformers model, for the listwise objective.')
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
    from erank_fast.evaluation.metrics import evaluate, hybrid
    from erank_fast.evaluation.trec import read_qrels
    from erank_fast.training.query_likelihood import read_scores

    scores, qrels = read_scores(scores_path), read_qrels(qrels_path)
    first = {q.qid: {c.docid: c.score for c in q.candidates} for q in queries}
    teacher = {q.qid: {c.docid: scores[(q.qid, c.docid)] for c in q.candidates} for q in queries}
    for name, run in (("first stage", first), ("teacher", teacher),
                      ("hybrid 0.2", hybrid(first, teacher, 0.2))):
        means, _ = evaluate(run, qrels)
        print(f"{name:<12} " + "  ".join(f"{k} {v:.4f}" for k, v in means.items()))
