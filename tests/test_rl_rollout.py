"""RL rollouts (erank_fast.training.rollouts) and the GRPO reward plumbing
(erank_fast.training.grpo), without the launcher."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from erank_fast import Reranker
from erank_fast.training import grpo
from erank_fast.training import rollouts as rl
from erank_fast.training.rewards import RewardConfig


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
    reward = grpo.make_listwise_reward(RewardConfig(), docs_per_query=2, generations=2)
    completions = ["<answer>9</answer>", "<answer>8</answer>", "<answer>2</answer>", "bad"]
    got = reward(None, completions, qid=["q"] * 4, relevant=[True, True, False, False],
                 reference=[8.0, 8.0, 1.0, 1.0])
    assert got == pytest.approx([1.0, 0.5, 0.5 * (1 - 0.01), -1.0])
    with pytest.raises(RuntimeError, match="query q: 3 rollouts"):
        reward(None, completions[:3], qid=["q"] * 3, relevant=[True, True, False],
               reference=[8.0, 8.0, 1.0])


def test_rollout_on_a_live_lora_policy(tiny_qwen3):
    """A trainable adapter: rollouts see base + LoRA (merged for the call), and the base
    weights are as before afterwards."""
    peft = pytest.importorskip("peft")
    model, tok = tiny_qwen3
    policy = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    rollout = rl.make_rollout(tok, max_new_tokens=4, temperature=1.0, top_p=1.0, top_k=0)
    out = rollout(["a prompt about lora", "a prompt about lora"], _fake_trainer(policy))
    for p, c, lp in zip(out["prompt_ids"], out["completion_ids"], out["logprobs"]):
        with torch.no_grad():
            logits = policy(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float()
            base = model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float()
        want = torch.log_softmax(logits, -1).gather(1, torch.tensor(c)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(lp), want, atol=1e-4, rtol=0)
        assert not torch.allclose(logits, base, atol=1e-3)  # the adapter does change the policy
    for k, v in policy.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)


def test_engine_refuses_an_unmerged_adapter(tiny_qwen3):
    peft = pytest.importorskip("peft")
    from erank_fast.models.loading import decoder_from_hf_model

    model, _ = tiny_qwen3
    policy = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=2, target_modules=["q_proj"], init_lora_weights=False))
    with pytest.raises(ValueError, match="not merged"):
        decoder_from_hf_model(policy)
    with rl.merged_adapters(policy):
        decoder_from_hf_model(policy)  # merged: readable


def test_think_off_completions_continue_the_answer_tag():
    reward = grpo.make_listwise_reward(RewardConfig(), docs_per_query=2, generations=2,
                                     think="off")
    completions = ["9</", "10", "2</answer>", "</answer>"]  # the last writes no score
    got = reward(None, completions, qid=["q"] * 4, relevant=[True, True, False, False],
                 reference=[8.0, 8.0, 1.0, 1.0])
    assert got == pytest.approx([0.5, 1.0, 0.5 * (1 - 0.01), -1.0])
    # Read as think-off inference reads the answer position: one digit, or "10".
    assert grpo.answer_text("7</answer>", off=True) == "<answer>7"
    assert grpo.answer_text("73", off=True) == "<answer>7"
    assert grpo.answer_text("12", off=True) == "<answer>1"
    assert grpo.answer_text("<answer>7</answer>", off=False) == "<answer>7</answer>"


def _assert_policy_logprobs(model, out, temperature=1.0):
    for p, c, lp in zip(out["prompt_ids"], out["completion_ids"], out["logprobs"]):
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float() / temperature
        want = torch.log_softmax(logits, -1).gather(1, torch.tensor(c)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(lp), want, atol=1e-4, rtol=0)


def test_one_engine_serves_every_rollout_call_and_sees_weight_updates(tiny_qwen3):
    """The engine (arena, graphs) is built once per trainer; optimizer-style in-place updates
    between calls are what the next rollouts sample from."""
    model, tok = tiny_qwen3
    policy = copy.deepcopy(model)
    rollout = rl.make_rollout(tok, max_new_tokens=4, temperature=1.0, top_p=1.0, top_k=0)
    prompts = ["a prompt about updates"] * 2 + ["another prompt"] * 2
    seen = []
    for call in range(3):
        out = rollout(prompts, _fake_trainer(policy))
        _assert_policy_logprobs(policy, out)
        seen.append(out["logprobs"])
        with torch.no_grad():  # an optimizer step: the same tensors, new values
            for p in policy.parameters():
                p.add_(0.05 * torch.randn_like(p))
    assert rollout.engine.builds == 1
    assert seen[0] != seen[1] != seen[2]


def test_rollouts_stop_on_every_eos_id_inference_stops_on(tiny_qwen3):
    """A generation config listing several end-of-sequence ids: rollouts end at any of them,
    as inference does (one helper gives both the set)."""
    model, tok = tiny_qwen3
    policy = copy.deepcopy(model)
    prompt = ["a prompt that runs on"]
    greedy = rl.make_rollout(tok, max_new_tokens=6, temperature=0.0, top_p=1.0, top_k=0)
    free = greedy(prompt, _fake_trainer(policy))["completion_ids"][0]
    at = next(i for i in range(1, len(free)) if free[i] not in free[:i])  # its first occurrence
    stop = free[at]
    assert stop != tok.eos_token_id
    policy.generation_config.eos_token_id = [tok.eos_token_id, stop]
    inference = Reranker.from_pretrained(policy, tokenizer=tok, backend="torch")
    assert stop in inference.eos_ids and tok.eos_token_id in inference.eos_ids
    stopped = rl.make_rollout(tok, max_new_tokens=6, temperature=0.0, top_p=1.0, top_k=0)
    got = stopped(prompt, _fake_trainer(policy))["completion_ids"][0]
    assert got == free[:at + 1]
