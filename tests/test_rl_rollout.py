"""train/rl.py's rollout function and reward plumbing, without the launcher."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

import rl  # noqa: E402
from rewards import RewardConfig  # noqa: E402


def _fake_trainer(model):
    return SimpleNamespace(accelerator=SimpleNamespace(unwrap_model=lambda m: m), model=model,
                           state=SimpleNamespace(global_step=3), args=SimpleNamespace(seed=0),
                           is_deepspeed_enabled=False)


def test_rollout_logprobs_are_the_policys_log_softmax(tiny_qwen3):
    """The importance ratio at step 0 is 1: sampled tokens' log-probs equal the policy's."""
    model, tok = tiny_qwen3
    temperature = 0.8
    rollout = rl.make_rollout(tok, max_new_tokens=5, temperature=temperature, top_p=1.0, top_k=0)
    prompts = ["first prompt text", "first prompt text", "a second prompt", "a second prompt"]
    out = rollout(prompts, _fake_trainer(model))
    assert len(out["completion_ids"]) == 4
    assert out["prompt_ids"][0] == tok.encode(prompts[0], add_special_tokens=False)
    assert out["completion_ids"][0] != out["completion_ids"][1]  # two different rollouts
    for p, c, lp in zip(out["prompt_ids"], out["completion_ids"], out["logprobs"]):
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float() / temperature
        want = torch.log_softmax(logits, -1).gather(1, torch.tensor(c)[:, None])[:, 0]
        ratio = torch.exp(torch.tensor(lp) - want)
        torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)


def test_reward_call_needs_whole_queries():
    reward = rl.make_listwise_reward(RewardConfig(), docs_per_query=2, generations=2)
    completions = ["<answer>9</answer>", "<answer>8</answer>", "<answer>2</answer>", "bad"]
    got = reward(None, completions, qid=["q"] * 4, relevant=[True, True, False, False],
                 reference=[8.0, 8.0, 1.0, 1.0])
    assert got == pytest.approx([1.0, 0.5, 0.5 * (1 - 0.01), -1.0])
    with pytest.raises(RuntimeError, match="query q: 3 rollouts"):
        reward(None, completions[:3], qid=["q"] * 3, relevant=[True, True, False],
               reference=[8.0, 8.0, 1.0])
