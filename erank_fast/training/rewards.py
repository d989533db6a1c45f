"""Listwise-derived rewards for ERank's RL stage (the ERank paper's r_RR and variants),
computed per query over all N documents × G rollouts together.

r_RR (default). Parseable rollouts of one query are pooled and ranked by their score, higher
first; tied scores share the smallest rank. Then, per rollout:
  1. relevant document: ``positive_scale / rank`` (reciprocal rank);
  2. irrelevant document not ranked below every relevant rollout (its rank is at most the worst
     relevant rollout's rank, ties included): ``negative_above_penalty``;
  3. irrelevant document ranked below every relevant rollout (or the query has no relevant
     rollout): ``negative_se_scale * (1 - ((s - t) / 10) ** 2)`` with t the reference score,
     a smooth reward that keeps the score scale near the reference model's;
  4. no parseable score: ``invalid_penalty`` (left out of the ranking).
r_nDCG: as r_RR, but relevant rollouts earn ``positive_scale * (1 / log2(rank + 1)) / IDCG``,
with IDCG over as many relevant rollouts as there are. r_SE (pointwise): every parseable
rollout earns ``1 - ((s - t) / 10) ** 2`` against its reference (teacher) score.

A trap to know: when every rollout of a query writes the same score, all tie at rank 1, so
positives earn the most and negatives the penalty, and no document's rollouts differ in reward:
GRPO's advantages vanish and nothing pulls the policy out. A peaked policy (e.g. think-off
answers) reaches that state within a few steps at a high learning rate; watch
``frac_reward_zero_std`` and the entropy (train/RESULTS.md, the RL runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RewardConfig:
    kind: str = "rr"                      # "rr" | "ndcg" | "se"
    positive_scale: float = 1.0
    negative_above_penalty: float = -1.0
    negative_se_scale: float = 0.5
    invalid_penalty: float = -1.0

    def __post_init__(self):
        if self.kind not in ("rr", "ndcg", "se"):
            raise ValueError(f"reward kind must be 'rr', 'ndcg' or 'se', got {self.kind!r}")


@dataclass(frozen=True)
class Rollout:
    relevant: bool        # the document is relevant to the query (qrels grade > 0)
    reference: float      # reference score t (0..10) of the (query, document)
    score: int | None     # the rollout's parsed score, None if unparseable


def _se(score: int, reference: float) -> float:
    return 1.0 - ((score - reference) / 10.0) ** 2


def ranks(scores: list[float]) -> list[int]:
    """1-based ranks, higher score first; tied scores share the smallest rank."""
    order = sorted(scores, reverse=True)
    first = {}
    for i, s in enumerate(order):
        first.setdefault(s, i + 1)
    return [first[s] for s in scores]


CASES = ("positive", "negative_above", "negative_below", "invalid")


def query_cases(rollouts: list[Rollout]) -> list[str]:
    """Which r_RR case (``CASES``) each rollout of one query falls in."""
    valid = [i for i, r in enumerate(rollouts) if r.score is not None]
    rank_of = dict(zip(valid, ranks([rollouts[i].score for i in valid])))
    worst_positive = max((rank_of[i] for i in valid if rollouts[i].relevant), default=0)
    return ["invalid" if r.score is None else "positive" if r.relevant else
            "negative_above" if rank_of[i] <= worst_positive else "negative_below"
            for i, r in enumerate(rollouts)]


def query_rewards(rollouts: list[Rollout], config: RewardConfig = RewardConfig()) -> list[float]:
    """Rewards for every rollout of one query (all its documents × all their rollouts)."""
    if config.kind == "se":
        return [config.invalid_penalty if r.score is None else _se(r.score, r.reference)
                for r in rollouts]
    valid = [i for i, r in enumerate(rollouts) if r.score is not None]
    rank_of = dict(zip(valid, ranks([rollouts[i].score for i in valid])))
    positive_ranks = sorted(rank_of[i] for i in valid if rollouts[i].relevant)
    worst_positive = positive_ranks[-1] if positive_ranks else 0
    idcg = sum(1.0 / math.log2(k + 1) for k in range(1, len(positive_ranks) + 1))
    rewards = []
    for i, r in enumerate(rollouts):
        if r.score is None:
            rewards.append(config.invalid_penalty)
        elif r.relevant:
            gain = 1.0 / rank_of[i] if config.kind == "rr" else \
                (1.0 / math.log2(rank_of[i] + 1)) / idcg
            rewards.append(config.positive_scale * gain)
        elif rank_of[i] <= worst_positive:
            rewards.append(config.negative_above_penalty)
        else:
            rewards.append(config.negative_se_scale * _se(r.score, r.reference))
    return rewards
