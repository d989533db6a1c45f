"""Reading batch inputs: JSONL in the ``shared/data`` shape (one query and its candidates per
line) or Parquet with the same columns, from a file or every such file of a directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

SUFFIXES = (".jsonl", ".parquet")


def input_files(path: str | Path) -> list[Path]:
    """The input files: ``path`` itself, or the ``.jsonl``/``.parquet`` files of a directory in
    name order."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file())
        if not files:
            raise ValueError(f"{p}: no .jsonl or .parquet files")
        return files
    if not p.is_file():
        raise ValueError(f"{p}: no such file or directory")
    if p.suffix not in SUFFIXES:
        raise ValueError(f"{p}: expected a .jsonl or .parquet file")
    return [p]


def _record(row: dict, where: str, depth: int | None) -> dict:
    """One query as the pipeline carries it: qid, query, docids, texts (parallel lists)."""
    try:
        cands = list(row["candidates"])[:depth]
        return {"qid": str(row["qid"]), "query": str(row["query"]),
                "docids": [str(c["docid"]) for c in cands],
                "texts": [str(c["text"]) for c in cands]}
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: not a reranking record (needs qid, query and candidates "
                         f"with docid and text; {type(e).__name__}: {e})") from e


def read_queries(path: str | Path, depth: int | None = None) -> Iterator[dict]:
    """Every query of the input, in file order, with at most ``depth`` candidates each."""
    for f in input_files(path):
        if f.suffix == ".jsonl":
            with open(f, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise ValueError(f"{f}:{n}: not JSON ({e})") from e
                        yield _record(row, f"{f}:{n}", depth)
        else:
            import pyarrow.parquet as pq

            for n, row in enumerate(pq.read_table(f).to_pylist(), 1):
                yield _record(row, f"{f} row {n}", depth)
