"""A full fine-tune's change as a LoRA adapter (train/extract_adapter.py): exact when the change
is of the adapter's rank, the best truncation otherwise, what it cannot carry reported."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from erank_fast import Reranker
from erank_fast.models.lora import lora_deltas, merge_lora_into, read_adapter, write_adapter
from erank_fast.training import adapter_extract as extract_script  # train/extract_adapter.py
from erank_fast.training.adapter_extract import LINEAR_MODULES, extract_adapter

Q = "model.layers.0.self_attn.q_proj"
UP = "model.layers.0.mlp.up_proj"
NORM = "model.layers.0.input_layernorm.weight"


def base_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"{Q}.weight": torch.randn(8, 8, generator=g),
            f"{UP}.weight": torch.randn(12, 8, generator=g),
            NORM: torch.ones(8),
            "model.embed_tokens.weight": torch.randn(20, 8, generator=g)}


def low_rank(rows: int, cols: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, rank, generator=g) @ torch.randn(rank, cols, generator=g) * 0.1


def test_a_change_of_the_adapters_rank_is_recovered_exactly(tmp_path):
    base = base_weights()
    tuned = {k: v.clone() for k, v in base.items()}
    tuned[f"{Q}.weight"] += low_rank(8, 8, 2, 1)
    tuned[f"{UP}.weight"] += low_rank(12, 8, 2, 2)
    tuned[NORM] = tuned[NORM] * 1.01
    result = extract_adapter(base, tuned, rank=2, base_name="tiny")
    assert set(lora_deltas(result.config, result.tensors)) == {Q, UP}
    assert result.config["target_modules"] == ["q_proj", "up_proj"]
    assert max(result.relative_error.values()) < 1e-6
    # the norm changed and no adapter on linear layers can carry it: reported, with its size
    assert result.uncarried == {NORM: pytest.approx(0.01, rel=1e-4)}
    # written, read back and merged as any adapter is, the linear weights are the fine-tune's
    merged = {k: v.clone() for k, v in base.items()}
    merge_lora_into(merged, write_adapter(result.config, result.tensors, tmp_path / "a"))
    for name in (f"{Q}.weight", f"{UP}.weight"):
        torch.testing.assert_close(merged[name], tuned[name], rtol=1e-5, atol=1e-5)


def test_a_larger_change_is_truncated_to_its_leading_directions():
    base = base_weights()
    u, _ = torch.linalg.qr(torch.randn(8, 2, generator=torch.Generator().manual_seed(3)))
    v, _ = torch.linalg.qr(torch.randn(8, 2, generator=torch.Generator().manual_seed(4)))
    tuned = dict(base)
    tuned[f"{Q}.weight"] = base[f"{Q}.weight"] + u @ torch.diag(torch.tensor([3.0, 1.0])) @ v.T
    result = extract_adapter(base, tuned, rank=1)
    assert result.relative_error[Q] == pytest.approx(1 / math.sqrt(10), rel=1e-5)
    best = 3.0 * u[:, :1] @ v[:, :1].T
    torch.testing.assert_close(lora_deltas(result.config, result.tensors)[Q], best,
                               rtol=1e-5, atol=1e-5)


def test_refuses_checkpoints_that_are_not_one_model():
    base = base_weights()
    with pytest.raises(ValueError, match="different weights"):
        extract_adapter(base, {k: v for k, v in base.items() if k != NORM}, rank=2)
    wider = dict(base, **{f"{UP}.weight": torch.zeros(12, 9)})
    with pytest.raises(ValueError, match="not the same base model"):
        extract_adapter(base, wider, rank=2)
    changed = dict(base, **{f"{Q}.weight": base[f"{Q}.weight"] + 1})
    with pytest.raises(ValueError, match="at least 1"):
        extract_adapter(base, changed, rank=0)
    with pytest.raises(ValueError, match="smaller dimension 8"):
        extract_adapter(base, changed, rank=9)
    with pytest.raises(ValueError, match="nothing to extract"):
        extract_adapter(base, dict(base, **{NORM: base[NORM] * 2}), rank=2)


def test_script_extracts_a_fine_tune_that_scores_like_it(tiny_qwen3, tmp_path, capsys):
    """A whole checkpoint whose every linear layer moved by a rank-2 change: the extracted
    adapter on the base scores as the fine-tune does."""
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        for i, (name, module) in enumerate(tuned.named_modules()):
            if name.rsplit(".", 1)[-1] in LINEAR_MODULES:
                module.weight += low_rank(*module.weight.shape, 2, i) * 2
    tuned.save_pretrained(tmp_path / "tuned")
    tok.save_pretrained(tmp_path / "tuned")
    extract_script.main([str(tmp_path / "tuned"), "--base", str(tmp_path / "base"),
                         "--rank", "2", "--out", str(tmp_path / "adapter")])
    report = capsys.readouterr().out
    assert "linear weights at rank 2" in report and "not carried" not in report
    config, _ = read_adapter(tmp_path / "adapter")
    assert config["r"] == 2
    exact = dict(think="off", device="cpu", dtype=torch.float32)
    docs = ["one document", "a second, longer document about something", "a third"]
    want = Reranker.from_pretrained(str(tmp_path / "tuned"), **exact).score("query", docs)
    got = Reranker.from_pretrained(str(tmp_path / "base"), adapter=str(tmp_path / "adapter"),
                                   **exact).score("query", docs)
    assert got == pytest.approx(want, abs=1e-4)
    before = Reranker.from_pretrained(str(tmp_path / "base"), **exact).score("query", docs)
    assert max(abs(a - b) for a, b in zip(before, want)) > 1e-3  # the change is visible
    with pytest.raises(SystemExit):
        extract_script.main([str(tmp_path / "tuned"), "--base", str(tmp_path / "base"),
                             "--out", str(tmp_path / "adapter")])  # exists: refused
