"""Dense teacher scores from a sentence-transformers model (bi-encoder or cross-encoder).

A bi-encoder (e.g. all-MiniLM-L6-v2) encodes every passage and query once and scores a pair by
the cosine of their embeddings, so labelling thousands of (query, passage) pairs costs one
encoding per text; a cross-encoder reads each pair. Scores feed the listwise objective
(``train/sft.py --teacher_scores``) in the JSONL format ``{"qid", "docid", "score"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from erank_fast.datasets import Query


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
