"""TRL's fused LM head with erank_fast's CPU fix (``training.trl_cpu``): scoring only the
labelled (completion) positions gives the log-probs, entropies and gradients of scoring every
position, on the same weights."""

from __future__ import annotations

import copy

import pytest
import torch

trl_utils = pytest.importorskip("trl.trainer.utils")

from erank_fast.training.trl_cpu import compact_lm_head_everywhere  # noqa: E402
from tests.helpers import make_tiny_model  # noqa: E402


def _fused_outputs(model, ids, labels):
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels,
                fused_lm_head=True)
    (out.log_probs.sum() + out.entropy.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.log_probs.detach(), out.entropy.detach(), grads


def test_compact_head_equals_scoring_every_position(monkeypatch):
    if not hasattr(trl_utils, "_use_triton"):
        pytest.skip("this TRL has no device switch in its fused LM head")
    base = make_tiny_model("llama", 300, seed=3)
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (3, 17))
    labels = ids.clone()
    labels[:, :-2] = -100  # only the 2 completion tokens are scored, as GRPO asks
    results = []
    original = trl_utils._use_triton  # restored by monkeypatch at teardown
    for compact in (False, True):
        model = copy.deepcopy(base)
        trl_utils.add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
        if compact:
            monkeypatch.setattr(trl_utils, "_use_triton", original)
            assert compact_lm_head_everywhere()
            assert trl_utils._use_triton(torch.device("cpu")) is True
        else:  # every position scored: TRL's own path on a device without Triton
            monkeypatch.setattr(trl_utils, "_use_triton", lambda device: False)
        results.append(_fused_outputs(model, ids, labels))
    (lp_all, ent_all, g_all), (lp_c, ent_c, g_c) = results
    torch.testing.assert_close(lp_c, lp_all, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ent_c, ent_all, atol=1e-6, rtol=1e-5)
    assert lp_c[:, :-2].abs().max() == 0 and lp_c[:, -2:].abs().min() > 0
    assert g_c.keys() == g_all.keys() and g_c
    for name in g_all:
        torch.testing.assert_close(g_c[name], g_all[name], atol=1e-6, rtol=1e-4, msg=name)
