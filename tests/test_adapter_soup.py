"""Averaging LoRA adapters (train/average_adapters.py): exact, and refusing what cannot average."""

from __future__ import annotations

import json

import pytest
import torch

from erank_fast.models.lora import lora_deltas, read_adapter, write_adapter
from erank_fast.training.adapter_soup import average_adapters

MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj")


def make_adapter(path, rank: int, alpha: float, seed: int, rslora: bool = False,
                 modules=MODULES, width: int = 12):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for m in modules:
        tensors[f"base_model.model.{m}.lora_A.weight"] = torch.randn(rank, width, generator=g)
        tensors[f"base_model.model.{m}.lora_B.weight"] = torch.randn(10, rank, generator=g)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "use_rslora": rslora,
              "target_modules": ["q_proj", "up_proj"]}
    return write_adapter(config, tensors, path)


def test_average_is_exactly_the_weighted_mean_of_the_deltas(tmp_path):
    a = make_adapter(tmp_path / "a", rank=2, alpha=4, seed=0)
    b = make_adapter(tmp_path / "b", rank=3, alpha=3, seed=1, rslora=True)
    config, tensors = average_adapters([a, b], [0.3, 0.7])
    assert config["r"] == 5
    soup = lora_deltas(config, tensors)
    da, db = (lora_deltas(*read_adapter(p)) for p in (a, b))
    assert set(soup) == set(MODULES)
    for m in MODULES:
        torch.testing.assert_close(soup[m], 0.3 * da[m] + 0.7 * db[m], rtol=1e-5, atol=1e-5)
    # written and read back as a plain adapter, the same deltas
    out = write_adapter(config, tensors, tmp_path / "soup")
    again = lora_deltas(*read_adapter(out))
    for m in MODULES:
        torch.testing.assert_close(again[m], soup[m])
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 5


def test_default_weights_are_equal(tmp_path):
    a = make_adapter(tmp_path / "a", rank=2, alpha=2, seed=0)
    b = make_adapter(tmp_path / "b", rank=2, alpha=2, seed=1)
    soup = lora_deltas(*average_adapters([a, b]))
    da, db = (lora_deltas(*read_adapter(p)) for p in (a, b))
    torch.testing.assert_close(soup[MODULES[0]], (da[MODULES[0]] + db[MODULES[0]]) / 2)


def test_refuses_what_cannot_average(tmp_path):
    a = make_adapter(tmp_path / "a", rank=2, alpha=2, seed=0)
    b = make_adapter(tmp_path / "b", rank=2, alpha=2, seed=1, modules=MODULES[:1])
    with pytest.raises(ValueError, match="different modules"):
        average_adapters([a, b])
    with pytest.raises(ValueError, match="at least two"):
        average_adapters([a])
    with pytest.raises(ValueError, match="2 adapters but 3 weights"):
        average_adapters([a, a], [0.2, 0.3, 0.5])
    other_base = make_adapter(tmp_path / "c", rank=2, alpha=2, seed=2, width=14)
    with pytest.raises(ValueError, match="different base models"):
        average_adapters([a, other_base])
    with pytest.raises(FileNotFoundError):
        average_adapters([a, tmp_path / "missing"])
