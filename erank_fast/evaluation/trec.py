"""Reranking data: the shared JSONL format (one query with its first-stage candidates per line)
plus TREC qrels, or BEIR-style corpus / queries / qrels with a TREC run file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Candidate:
    docid: str
    text: str
    score: float  # first-stage score


@dataclass(frozen=True)
class Query:
    qid: str
    text: str
    candidates: tuple[Candidate, ...]  # first-stage order


def read_jsonl(path: str | Path, depth: int | None = None) -> list[Query]:
    """``{"qid", "query", "candidates": [{"docid", "text", "score", ...}]}`` per line."""
    queries = []
    for n, row in _records(path, "reranking"):
        try:
            cands = [Candidate(str(c["docid"]), c["text"], float(c["score"]))
                     for c in row["candidates"][:depth]]
            queries.append(Query(str(row["qid"]), row["query"], tuple(cands)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n}: not a reranking record ({e})") from e
    return queries


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """TREC qrels: ``qid iteration docid grade`` per line."""
    def grade(parts: list[str]) -> int:
        if len(parts) != 4:
            raise ValueError(f"{len(parts)} fields")
        return int(parts[3])

    return _trec_table(path, grade, "'qid iteration docid grade' with an integer grade")


def _trec_table(path: str | Path, value, expected: str) -> dict:
    """{qid: {docid: value(fields)}} from a whitespace-separated TREC file (qrels, runs: the
    query first, the document third); a line ``value`` rejects is a ValueError naming the file,
    the line and what was ``expected``."""
    table: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                table.setdefault(parts[0], {})[parts[2]] = value(parts)  # value() runs first
            except ValueError as e:
                raise ValueError(f"{path}:{n}: expected {expected} ({e})") from e
    return table


def _records(path: str | Path, what: str):
    """(line number, parsed value) of each non-empty line of a JSONL file; a line that is not
    JSON is a ValueError naming the file, the line and ``what`` was expected."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a {what} record ({e})") from e


def read_beir(corpus: str | Path, queries: str | Path, run: str | Path,
              depth: int | None = None) -> list[Query]:
    """BEIR corpus.jsonl (``_id``, ``title``, ``text``) and queries.jsonl (``_id``, ``text``),
    with a TREC run file (``qid Q0 docid rank score tag``) giving the first stage. Run entries
    whose document is not in the corpus are skipped; a malformed line, or a run query missing
    from the queries file, is a ValueError naming the file."""
    docs = {}
    for n, d in _records(corpus, "BEIR corpus"):
        try:
            title = d.get("title") or ""
            docs[str(d["_id"])] = f"{title}\n{d['text']}" if title else d["text"]
        except (AttributeError, KeyError, TypeError) as e:
            raise ValueError(f"{corpus}:{n}: not a BEIR corpus record ({e!r})") from e
    texts = {}
    for n, q in _records(queries, "BEIR query"):
        try:
            texts[str(q["_id"])] = q["text"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{queries}:{n}: not a BEIR query record ({e!r})") from e
    ranked = read_trec_run(run)
    unknown = sorted(set(ranked) - set(texts))
    if unknown:
        raise ValueError(f"{run}: queries not in {queries}: {', '.join(unknown[:5])}"
                         + (" ..." if len(unknown) > 5 else ""))
    out = []
    for qid, scores in ranked.items():
        hits = sorted(((s, d) for d, s in scores.items()), reverse=True)
        cands = tuple(Candidate(d, docs[d], s) for s, d in hits[:depth] if d in docs)
        out.append(Query(qid, texts[qid], cands))
    return out


def read_trec_run(path: str | Path) -> dict[str, dict[str, float]]:
    """A TREC run file (``qid Q0 docid rank score tag`` per line) as {qid: {docid: score}}; a
    malformed line is a ValueError naming the file and line."""
    def score(parts: list[str]) -> float:
        if len(parts) < 5:
            raise ValueError(f"{len(parts)} fields")
        return float(parts[4])

    return _trec_table(path, score, "'qid Q0 docid rank score tag'")


def write_trec_run(run: dict[str, dict[str, float]], path: str | Path,
                   tag: str = "erank_fast") -> None:
    """A run ({qid: {docid: score}}) as a TREC run file, each query's documents best first."""
    from erank_fast.evaluation.metrics import ranked

    with open(path, "w", encoding="utf-8") as f:
        for qid, scores in run.items():
            for rank, docid in enumerate(ranked(scores), 1):
                f.write(f"{qid} Q0 {docid} {rank} {scores[docid]:.6f} {tag}\n")
