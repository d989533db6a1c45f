"""erank_fast.training.rewards: each r_RR case by hand, ties, several positives; r_nDCG and r_SE."""

from __future__ import annotations

import math

import pytest

from erank_fast.scoring import parse_answer  # noqa: E402
from erank_fast.training.rewards import RewardConfig, Rollout, query_rewards, ranks


def test_ranks_share_the_smallest_rank_on_ties():
    assert ranks([5, 9, 5, 1, 9]) == [3, 1, 3, 5, 1]


def test_rr_every_case():
    rollouts = [
        Rollout(relevant=True, reference=8, score=9),    # rank 1
        Rollout(relevant=True, reference=8, score=6),    # rank 3
        Rollout(relevant=False, reference=2, score=7),   # rank 2: above a positive -> penalty
        Rollout(relevant=False, reference=2, score=3),   # rank 4: below all positives -> SE
        Rollout(relevant=False, reference=2, score=None),  # unparseable
    ]
    assert query_rewards(rollouts) == pytest.approx([1.0, 1 / 3, -1.0, 0.5 * (1 - 0.01), -1.0])


def test_rr_negative_tied_with_the_worst_positive_is_penalised():
    rollouts = [Rollout(True, 8, 6), Rollout(False, 1, 6), Rollout(False, 1, 1)]
    assert query_rewards(rollouts) == pytest.approx([1.0, -1.0, 0.5 * 1.0])


def test_rr_several_positives_and_rollouts_of_one_document():
    # Two relevant documents × 2 rollouts, one irrelevant × 2; ties on 8.
    rollouts = [Rollout(True, 9, 8), Rollout(True, 9, 8), Rollout(True, 7, 5),
                Rollout(True, 7, 10), Rollout(False, 0, 2), Rollout(False, 0, 0)]
    got = query_rewards(rollouts)
    assert got[:4] == pytest.approx([1 / 2, 1 / 2, 1 / 4, 1.0])
    assert got[4:] == pytest.approx([0.5 * (1 - 0.04), 0.5])


def test_query_without_relevant_documents_uses_squared_error():
    rollouts = [Rollout(False, 3, 3), Rollout(False, 3, 8)]
    assert query_rewards(rollouts) == pytest.approx([0.5, 0.5 * (1 - 0.25)])


def test_ndcg_reward():
    rollouts = [Rollout(True, 8, 9), Rollout(True, 8, 4), Rollout(False, 2, 6)]
    idcg = 1 + 1 / math.log2(3)
    got = query_rewards(rollouts, RewardConfig(kind="ndcg"))
    assert got == pytest.approx([1 / idcg, (1 / math.log2(4)) / idcg, -1.0])


def test_se_reward_and_constants_from_config():
    rollouts = [Rollout(True, 8, 6), Rollout(False, 0, None)]
    assert query_rewards(rollouts, RewardConfig(kind="se", invalid_penalty=-2.0)) == \
        pytest.approx([1 - 0.04, -2.0])
    with pytest.raises(ValueError, match="reward kind"):
        RewardConfig(kind="map")


def test_parse_answer():
    assert parse_answer("<think>x</think><answer>7</answer>") == 7
    assert parse_answer("<answer> 10 </answer>") == 10
    assert parse_answer("<answer>11</answer>") is None
    assert parse_answer("no tag 7") is None
    assert parse_answer("<answer>3</answer> then <answer>4") == 4


def test_cases_label_every_rollout():
    from erank_fast.training.rewards import query_cases

    rollouts = [Rollout(True, 8, 6), Rollout(False, 1, 7), Rollout(False, 1, 2),
                Rollout(False, 1, None)]
    assert query_cases(rollouts) == ["positive", "negative_above", "negative_below", "invalid"]


def test_distill_consensus_keeps_the_output_closest_to_the_mean():
    from erank_fast.training.data import consensus

    assert consensus(["a", "b", "c"], [2, 9, 6]) == ("c", 6)  # mean 5.67
    assert consensus(["a", "b"], [None, 4]) == ("b", 4)
    assert consensus(["a"], [None]) is None
