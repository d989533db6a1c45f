"""Listwise fine-tuning on the score distribution (``train/sft.py --objective listwise``).

Pointwise next-token loss on grade-derived targets can be lowered without ranking anything
within a query (predicting each query's share of relevant documents is enough), and nDCG only
sees the order within a query. This objective trains what inference reads instead:

- each example is a think-off prompt exactly as the engine builds it, followed by a
  teacher-forced "1", so one forward gives the two distributions the engine reads: the digits
  at the answer position and P("0" | "1") one position later (``erank_fast.scoring``);
- from them, the 0..10 distribution p(s) and the expected score E = Σ s·p(s), the "expected"
  rank score of inference, computed the same way;
- the loss is a pairwise logistic (RankNet) loss on E over the documents of one query, each
  pair weighted by its grade difference, plus ``pointwise_weight`` × the cross-entropy of the
  grade-derived score under p(s), which keeps answers readable and the scale anchored;
- optionally, teacher scores for every candidate (``train/query_likelihood.py``, or a
  sentence-transformers teacher through ``train/teacher_scores.py``), z-normalised within each
  query over all its candidates: either added, × ``teacher_weight``, to each pair's weight
  ("pairs"), distilled as the KL divergence from the teacher's softmax over each group to the
  student's softmax of expected scores ("kl"), or matched margin by margin (Margin-MSE,
  "margin_mse": the student's E_i − E_j against the teacher's, in score points): a dense signal
  on the many unjudged and same-grade pairs.

Optionally, pseudo-queries (``train/pseudo_queries.py``: questions generated from training
passages) add groups of their own: the source passage is the one relevant document (grade 2),
half the negatives are other candidates of the real query it came from (same topic), the other
half candidates of other real queries. Their pairs come from these grades alone. With a
teacher, ``consistent_pseudo_queries`` keeps only those whose source passage the teacher ranks
near the top of its query's candidates.

Batches hold whole queries: ``QueryGroupSampler`` yields each query's documents together, and
the per-device batch size must equal ``docs_per_query``. Only the last two positions of each
row go through the vocabulary projection (``logits_to_keep``), with left padding.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler
from transformers import Trainer

from erank_fast.evaluation.metrics import zscores
from erank_fast.evaluation.trec import Query
from erank_fast.prompt import PromptBuilder
from erank_fast.scoring import ScoreReadout, ScoreTokens
from erank_fast.training import data as train_data
from erank_fast.training.teacher_terms import group_kl, margin_mse
from erank_fast.training.teachers import pseudo_qid

SCORE_VALUES = torch.arange(11, dtype=torch.float32)
TEACHER_LOSSES = ("pairs", "kl", "margin_mse")


def listwise_examples(queries, qrels, builder: PromptBuilder, tokens: ScoreTokens, *,
                      docs_per_query: int, positives: int, rounds: int = 1, seed: int = 0,
                      instruction: str | None = None,
                      teacher: dict[tuple[str, str], float] | None = None) -> list[dict]:
    """Rows {"input_ids", "group", "grade", "teacher"}, ``docs_per_query`` consecutive rows per
    group; "teacher" is the query-normalised teacher score (0 without a teacher).

    Each round draws a fresh sample of documents per query (``erank_fast.training.data``
    sampling). Queries with fewer candidates than ``docs_per_query``, or without both a
    relevant and an irrelevant document among them, give no pairs and are left out."""
    rng = random.Random(seed)
    rows, group = [], 0
    normalised = {q.qid: teacher_zscores(q, teacher) for q in queries} if teacher else {}
    for _ in range(rounds):
        for q in queries:
            picks = train_data.pick_documents(q, qrels.get(q.qid, {}), docs_per_query, positives,
                                              rng)
            grades = {p.grade > 0 for p in picks}
            if len(picks) != docs_per_query or grades != {True, False}:
                continue
            z = normalised.get(q.qid, {})
            for p in picks:
                ids = builder.prompt_ids(q.text, p.text, instruction, think_off=True)
                rows.append({"input_ids": ScoreReadout(tokens).scored_ids(ids), "group": group,
                             "grade": p.grade,
                             "teacher": z.get(p.docid, 0.0)})
            group += 1
    return rows


def pseudo_query_examples(pseudo: list[dict], queries, builder: PromptBuilder,
                          tokens: ScoreTokens, *, docs_per_query: int, first_group: int,
                          seed: int = 0, instruction: str | None = None,
                          teacher: dict[tuple[str, str], float] | None = None) -> list[dict]:
    """Rows as ``listwise_examples`` writes them for pseudo-queries {"qid", "docid", "query"}
    (groups numbered from ``first_group``): the source passage (grade 2), then
    ``docs_per_query`` − 1 negatives, half from the source's own real query, half from others.
    With ``teacher`` (scores keyed by ``pseudo_qid``, over the source query's candidates), all
    negatives come from the source query, each with its teacher z-score: same-topic passages
    are where a teacher's judgement matters. Pseudo-queries whose real query is not in
    ``queries`` are left out."""
    if docs_per_query < 2:
        raise ValueError(f"pseudo-query groups need docs_per_query >= 2, got {docs_per_query}")
    rng = random.Random(seed)
    by_qid = {q.qid: q for q in queries}
    rows, group = [], first_group
    for p in pseudo:
        source = by_qid.get(p["qid"])
        if source is None:
            continue
        if p["docid"] not in {c.docid for c in source.candidates}:
            raise ValueError(f"pseudo-query source {p['docid']} is not a candidate of query "
                             f"{p['qid']}")
        same = [c for c in source.candidates if c.docid != p["docid"]]
        others = [q for q in queries if q.qid != source.qid] if teacher is None else []
        n_same = min(len(same), (docs_per_query - 1) // 2 if others else docs_per_query - 1)
        negatives = rng.sample(same, n_same)
        if len(negatives) < docs_per_query - 1 and not others:
            continue  # too few candidates for a full group
        while len(negatives) < docs_per_query - 1:
            negatives.append(rng.choice(rng.choice(others).candidates))
        z = {}
        if teacher is not None:
            z = teacher_zscores(Query(pseudo_qid(p), p["query"], source.candidates), teacher)
        positive = next(c for c in source.candidates if c.docid == p["docid"])
        picks = [(2, positive)] + [(0, c) for c in negatives]
        for grade, c in picks:
            ids = builder.prompt_ids(p["query"], c.text, instruction, think_off=True)
            rows.append({"input_ids": ScoreReadout(tokens).scored_ids(ids), "group": group,
                         "grade": grade,
                         "teacher": z.get(c.docid, 0.0)})
        group += 1
    return rows


def consistent_pseudo_queries(pseudo: list[dict], queries,
                              teacher: dict[tuple[str, str], float], top_k: int) -> list[dict]:
    """The pseudo-queries whose source passage the teacher ranks within the first ``top_k`` of
    its source query's candidates (round-trip consistency filtering, as in Promptagator and
    InPars-v2): a question the teacher does not match to its own passage is more likely a
    generation failure than a hard query, and its grade-2 source would contradict the teacher's
    pairs. Ties count in the passage's favour (rank = 1 + candidates scored strictly higher).
    Pseudo-queries whose real query is not in ``queries`` are left out, as the groups leave
    them out."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    by_qid = {q.qid: q for q in queries}
    kept = []
    for p in pseudo:
        source = by_qid.get(p["qid"])
        if source is None:
            continue
        z = teacher_zscores(Query(pseudo_qid(p), p["query"], source.candidates), teacher)
        if p["docid"] not in z:
            raise ValueError(f"pseudo-query source {p['docid']} is not a candidate of query "
                             f"{p['qid']}")
        if sum(v > z[p["docid"]] for v in z.values()) < top_k:
            kept.append(p)
    return kept


def teacher_zscores(query, teacher: dict[tuple[str, str], float]) -> dict[str, float]:
    """Teacher scores of all the query's candidates, z-normalised (population std)."""
    missing = [c.docid for c in query.candidates if (query.qid, c.docid) not in teacher]
    if missing:
        raise ValueError(f"teacher scores miss {len(missing)} of the {len(query.candidates)} "
                         f"candidates of query {query.qid} (e.g. {missing[0]}); score them all")
    return zscores({c.docid: teacher[(query.qid, c.docid)] for c in query.candidates})


def score_distribution(logits: torch.Tensor, tokens: ScoreTokens) -> torch.Tensor:
    """log p(s), s = 0..10, from logits [B, 2, V] at the answer position and after a forced "1"
    (``ScoreReadout.log_distribution``: differentiable)."""
    return ScoreReadout(tokens).log_distribution(logits)


def listwise_loss(log_dist: torch.Tensor, grades: torch.Tensor, groups: torch.Tensor,
                  pointwise_weight: float, teacher: torch.Tensor | None = None,
                  teacher_weight: float = 0.0, teacher_loss: str = "pairs",
                  teacher_temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Pairwise logistic loss on the expected score E within each group, pair (i above j)
    weighted by max(grade_i − grade_j, 0), plus ``pointwise_weight`` × cross-entropy of the
    grade-derived target, plus the teacher's term (``teacher`` holds z-scores):

    - "pairs": ``teacher_weight`` · max(t_i − t_j, 0) added to every pair's weight;
    - "kl": ``teacher_weight`` × KL(softmax(t / T) ‖ softmax(E)) over each group, T the
      ``teacher_temperature`` (E is in score units 0..10, so T sets how many score points the
      teacher's preferences are worth);
    - "margin_mse": ``teacher_weight`` × the mean over each group's pairs of
      ((E_i − E_j) − (t_i − t_j) / T)²: the teacher's margins, one z unit worth 1 / T score
      points, matched directly (Hofstätter et al.'s Margin-MSE on expected scores)."""
    if teacher_loss not in TEACHER_LOSSES:
        raise ValueError(f"teacher_loss must be one of {TEACHER_LOSSES}, got {teacher_loss!r}")
    if not teacher_temperature > 0:
        raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature!r}")
    expected = (log_dist.exp() * SCORE_VALUES.to(log_dist.device)).sum(dim=1)
    diff = expected[:, None] - expected[None, :]
    same_group = groups[:, None] == groups[None, :]
    weight = (grades[:, None] - grades[None, :]).clamp(min=0).float()
    use_teacher = teacher is not None and teacher_weight > 0
    if use_teacher and teacher_loss == "pairs":
        t = teacher.float()
        weight = weight + teacher_weight * (t[:, None] - t[None, :]).clamp(min=0)
    weight = weight * same_group
    pairwise = (weight * F.softplus(-diff)).sum() / weight.sum().clamp(min=1.0)
    targets = torch.tensor([train_data.GRADE_TO_SCORE[min(int(g), 3)] for g in grades],
                           device=log_dist.device)
    pointwise = -log_dist.gather(1, targets[:, None]).squeeze(1).mean()
    loss = pairwise + pointwise_weight * pointwise
    parts = {"pairwise": float(pairwise.detach()), "pointwise": float(pointwise.detach())}
    if use_teacher and teacher_loss == "kl":
        kl = group_kl(teacher.float() / teacher_temperature, expected, groups)
        loss = loss + teacher_weight * kl
        parts["kl"] = float(kl.detach())
    if use_teacher and teacher_loss == "margin_mse":
        mse = margin_mse(teacher.float() / teacher_temperature, expected, groups)
        loss = loss + teacher_weight * mse
        parts["margin_mse"] = float(mse.detach())
    return loss, parts


class QueryGroupSampler(Sampler):
    """Indices group by group (groups in a seeded random order, a new one each epoch)."""

    def __init__(self, groups: list[int], seed: int = 0):
        self.members: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            self.members.setdefault(g, []).append(i)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return sum(len(m) for m in self.members.values())

    def __iter__(self):
        order = list(self.members)
        random.Random(self.seed + self.epoch).shuffle(order)
        self.epoch += 1
        for g in order:
            yield from self.members[g]


class LeftPaddingCollator:
    """Left-pads input_ids so every row ends at its answer position + the forced "1"."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return {**train_data.left_pad([r["input_ids"] for r in rows], self.pad_id),
                "grade": torch.tensor([r["grade"] for r in rows]),
                "group": torch.tensor([r["group"] for r in rows]),
                "teacher": torch.tensor([float(r.get("teacher", 0.0)) for r in rows])}


class ListwiseTrainer(Trainer):
    """A ``transformers.Trainer`` with the listwise loss and whole-query batches."""

    def __init__(self, *args, score_tokens: ScoreTokens, pointwise_weight: float,
                 docs_per_query: int, teacher_weight: float = 0.0, teacher_loss: str = "pairs",
                 teacher_temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.per_device_train_batch_size != docs_per_query:
            raise ValueError(
                f"--objective listwise needs per_device_train_batch_size == docs_per_query "
                f"(one query per batch), got {self.args.per_device_train_batch_size} and "
                f"{docs_per_query}; raise gradient_accumulation_steps for more queries per step")
        self.score_tokens = score_tokens
        self.pointwise_weight = pointwise_weight
        self.teacher_weight = teacher_weight
        self.teacher_loss, self.teacher_temperature = teacher_loss, teacher_temperature
        self._part_sums: dict[str, float] = {}
        self._part_count = 0

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return QueryGroupSampler(list(dataset["group"]), seed=self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        grades, groups, teacher = inputs.pop("grade"), inputs.pop("group"), inputs.pop("teacher")
        readout = ScoreReadout(self.score_tokens)
        outputs = model(**inputs, logits_to_keep=readout.read_span, use_cache=False)
        log_dist = readout.log_distribution(outputs.logits)
        loss, parts = listwise_loss(log_dist, grades, groups, self.pointwise_weight, teacher,
                                    self.teacher_weight, self.teacher_loss,
                                    self.teacher_temperature)
        if model.training:
            for k, v in parts.items():
                self._part_sums[k] = self._part_sums.get(k, 0.0) + v
            self._part_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Adds the two loss terms, averaged over the batches since the last log."""
        if "loss" in logs and self._part_count:
            logs = {**logs, **{f"loss_{k}": round(v / self._part_count, 4)
                               for k, v in self._part_sums.items()}}
            self._part_sums, self._part_count = {}, 0
        super().log(logs, *args, **kwargs)
