"""Training data from the shared reranking format: SFT examples and RL query groups.

Prompts are built only through ``erank_fast.prompt`` so training and inference see the same
token ids. Without teacher outputs, SFT targets use the "no thinking" form that inference with
think="off" reads (``<think>\\n\\n</think>\\n\\n<answer>S</answer>``), with S from the qrels
grade by ``GRADE_TO_SCORE``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from erank_fast.evaluation.trec import Query, read_jsonl, read_qrels
from erank_fast.prompt import THINK_OFF_CONTINUATION, PromptBuilder

# Graded relevance (TREC DL: 0 irrelevant .. 3 perfectly relevant) to ERank's 0..10 scale.
GRADE_TO_SCORE = {0: 0, 1: 4, 2: 7, 3: 10}
HARD_RANKS = 10  # negatives from the first-stage top 10 are "hard", the rest "medium"


@dataclass(frozen=True)
class Pick:
    """One (query, document) chosen for training, with its qrels grade and first-stage rank."""

    query: Query
    doc_index: int
    grade: int

    @property
    def text(self) -> str:
        return self.query.candidates[self.doc_index].text

    @property
    def docid(self) -> str:
        return self.query.candidates[self.doc_index].docid


def load(data: str | Path, qrels: str | Path, depth: int | None = None):
    return read_jsonl(data, depth=depth), read_qrels(qrels)


def pick_documents(query: Query, judged: dict[str, int], docs: int, positives: int,
                   rng: random.Random) -> list[Pick]:
    """Up to ``positives`` relevant documents, then negatives: half hard (first-stage top 10),
    half medium (below), as the paper samples by difficulty, one kind filling in where the
    other runs short. At most ``docs`` in all."""
    relevant = [i for i, c in enumerate(query.candidates) if judged.get(c.docid, 0) > 0]
    hard = [i for i, c in enumerate(query.candidates[:HARD_RANKS]) if judged.get(c.docid, 0) <= 0]
    medium = [i + HARD_RANKS for i, c in enumerate(query.candidates[HARD_RANKS:])
              if judged.get(c.docid, 0) <= 0]
    chosen = rng.sample(relevant, min(positives, len(relevant)))
    n_negative = docs - len(chosen)
    # Half hard, unless there are too few medium negatives to fill the other half.
    n_hard = min(len(hard), max((n_negative + 1) // 2, n_negative - len(medium)))
    chosen += rng.sample(hard, n_hard)
    chosen += rng.sample(medium, min(len(medium), n_negative - n_hard))
    return [Pick(query, i, max(judged.get(query.candidates[i].docid, 0), 0)) for i in chosen]


def sft_examples(queries: list[Query], qrels, builder: PromptBuilder, *, docs_per_query: int = 8,
                 positives: int = 2, teacher: dict[tuple[str, str], str] | None = None,
                 seed: int = 0, instruction: str | None = None) -> list[dict]:
    """Pre-tokenized examples {"input_ids", "completion_mask", "qid", "docid", "score"}: the
    prompt exactly as inference builds it, then the target and end-of-sequence. ``teacher``
    maps (qid, docid) to a teacher output (reasoning + answer) used instead of the grade."""
    rng = random.Random(seed)
    tokenizer = builder.tokenizer
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    examples = []
    for q in queries:
        for pick in pick_documents(q, qrels.get(q.qid, {}), docs_per_query, positives, rng):
            prompt = builder.prompt_ids(q.text, pick.text, instruction)
            key = (q.qid, pick.docid)
            if teacher is not None and key in teacher:
                target, score = teacher[key], None
            else:
                score = GRADE_TO_SCORE[min(pick.grade, 3)]
                target = f"{THINK_OFF_CONTINUATION}{score}</answer>"
            completion = builder.encode(target) + eos
            examples.append({"input_ids": prompt + completion,
                             "completion_mask": [0] * len(prompt) + [1] * len(completion),
                             "qid": q.qid, "docid": pick.docid, "score": score})
    return examples


def rl_groups(queries: list[Query], qrels, *, docs_per_query: int = 8, positives: int = 1,
              seed: int = 0) -> list[dict]:
    """One record per query: {"qid", "query", "docs", "relevant", "reference"}, the reference
    scores from the grades (rl.py may replace them with the reference model's scores)."""
    rng = random.Random(seed)
    groups = []
    for q in queries:
        picks = pick_documents(q, qrels.get(q.qid, {}), docs_per_query, positives, rng)
        if not picks:
            continue
        groups.append({"qid": q.qid, "query": q.text, "docs": [p.text for p in picks],
                       "relevant": [p.grade > 0 for p in picks],
                       "reference": [float(GRADE_TO_SCORE[min(p.grade, 3)]) for p in picks]})
    return groups


def read_teacher(path: str | Path) -> dict[tuple[str, str], str]:
    """Teacher outputs written by distill.py: JSONL {"qid", "docid", "output", ...}."""
    return read_per_document(path, "output")


def read_per_document(path: str | Path, key: str) -> dict:
    """{(qid, docid): row[key]} from JSONL rows {"qid", "docid", key, ...} (the last row of a
    pair wins)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out[(str(row["qid"]), str(row["docid"]))] = row[key]
    return out


def pad_id(tokenizer) -> int:
    """The id padding positions hold: the tokenizer's pad token, else its end-of-sequence token
    (masked out either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(sequences: list[list[int]], pad_id: int) -> dict:
    """Token id lists as one left-padded batch {"input_ids", "attention_mask", "position_ids"}:
    every row ends at its last token, so the last positions line up across rows."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}


def consensus(outputs: list[str], scores: list[int | None]) -> tuple[str, int] | None:
    """The output whose score is closest to the mean of the readable scores (first on ties)."""
    readable = [(o, s) for o, s in zip(outputs, scores) if s is not None]
    if not readable:
        return None
    mean = sum(s for _, s in readable) / len(readable)
    return min(readable, key=lambda x: abs(x[1] - mean))
