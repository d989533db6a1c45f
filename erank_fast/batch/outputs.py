"""Resumable batch outputs: results land in shard files, each written whole (to a temporary
name, then renamed), so a killed job leaves only complete shards; a rerun reads the query ids of
the shards present and skips them. A query's rows are never split across shards.

Each output row is one candidate: ``qid, docid, index`` (its position in the input),
``rank`` (1 = best), ``score``, ``answer`` (0..10, or null when none could be read),
``probability``, ``distribution`` (p(0) .. p(10)) and ``num_generated_tokens``."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

FORMATS = ("parquet", "jsonl")
PREFIX = "part-"
TEMP_SUFFIX = ".tmp"


def candidate_rows(query_rows: list[dict]) -> list[dict]:
    """Per-query results (parallel lists) as one row per candidate."""
    rows = []
    for q in query_rows:
        for i in range(len(q["docids"])):
            rows.append({"qid": q["qid"], "docid": q["docids"][i], "index": int(q["index"][i]),
                         "rank": int(q["rank"][i]), "score": float(q["score"][i]),
                         "answer": None if q["answer"][i] is None else int(q["answer"][i]),
                         "probability": float(q["probability"][i]),
                         "distribution": [float(p) for p in q["distribution"][i]],
                         "num_generated_tokens": int(q["num_generated_tokens"][i])})
    return rows


def shard_files(directory: str | Path) -> list[Path]:
    """The complete shards of an output directory (never a temporary one)."""
    return sorted(p for p in Path(directory).glob(f"{PREFIX}*")
                  if p.suffix in (".parquet", ".jsonl"))


class ShardWriter:
    """Writes result shards into ``directory`` and knows which queries are already there."""

    def __init__(self, directory: str | Path, fmt: str = "parquet"):
        if fmt not in FORMATS:
            raise ValueError(f"output format must be one of {FORMATS}, got {fmt!r}")
        self.dir = Path(directory)
        self.fmt = fmt
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(f"{PREFIX}*{TEMP_SUFFIX}"):  # a killed job's half shard
            stale.unlink()

    def shards(self) -> list[Path]:
        return shard_files(self.dir)

    def done_queries(self) -> set[str]:
        """Query ids present in the shards already written (in either format)."""
        done: set[str] = set()
        for shard in self.shards():
            if shard.suffix == ".parquet":
                import pyarrow.parquet as pq

                done.update(pq.read_table(shard, columns=["qid"]).column("qid").to_pylist())
            else:
                with open(shard, encoding="utf-8") as f:
                    done.update(json.loads(line)["qid"] for line in f if line.strip())
        return done

    def write(self, rows: list[dict]) -> Path:
        """One shard holding ``rows``, visible only once complete."""
        final = self.dir / f"{PREFIX}{uuid.uuid4().hex}.{self.fmt}"
        temp = final.with_name(final.name + TEMP_SUFFIX)
        if self.fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), temp)
        else:
            with open(temp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        os.replace(temp, final)
        return final


def _schema():
    import pyarrow as pa

    return pa.schema([("qid", pa.string()), ("docid", pa.string()), ("index", pa.int32()),
                      ("rank", pa.int32()), ("score", pa.float64()), ("answer", pa.int8()),
                      ("probability", pa.float64()), ("distribution", pa.list_(pa.float32())),
                      ("num_generated_tokens", pa.int32())])


def read_results(directory: str | Path) -> list[dict]:
    """Every row of every shard (for checks and small outputs)."""
    rows = []
    for shard in shard_files(directory):
        if shard.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(shard).to_pylist())
        elif shard.suffix == ".jsonl":
            with open(shard, encoding="utf-8") as f:
                rows.extend(json.loads(line) for line in f if line.strip())
    return rows
