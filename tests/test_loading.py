"""Model sources: a checkpoint directory, an in-memory model, GGUF via offline names, hub ids."""

from __future__ import annotations

import pytest
import torch

from erank_fast import Reranker


def test_checkpoint_directory_equals_in_memory_model(tiny_qwen3, tmp_path):
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    exact = dict(think=3, device="cpu", dtype=torch.float32)  # the default may be bf16 on CPU
    from_dir = Reranker.from_pretrained(str(tmp_path), **exact)
    ref_dir = Reranker.from_pretrained(str(tmp_path), backend="reference", **exact)
    in_memory = Reranker.from_pretrained(model, tokenizer=tok, think=3)
    docs = ["one document", "a second, longer document about something"]
    a, b, c = (r.score("query", docs) for r in (from_dir, ref_dir, in_memory))
    assert a == pytest.approx(c, abs=1e-6) and a == pytest.approx(b, abs=1e-5)


def test_bfloat16_runs_and_ranks_like_float32(tiny_qwen3, tmp_path):
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    bf16 = Reranker.from_pretrained(str(tmp_path), dtype=torch.bfloat16, device="cpu")
    assert bf16.backend.dtype == torch.bfloat16
    scores = bf16.score("query", ["one", "two"])
    assert all(0.0 <= s <= 10.0 for s in scores)


def test_cpu_default_dtype_follows_the_measured_gemm_speed(monkeypatch, tiny_qwen3, tmp_path):
    """dtype=None on CPU: bfloat16 when the start-up check finds it >= 2x float32, else
    float32; the choice is reported in each call's stats."""
    from erank_fast import cpu

    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    for rates, want in (({"float32": 300.0, "bfloat16": 2500.0}, torch.bfloat16),
                        ({"float32": 300.0, "bfloat16": 170.0}, torch.float32),
                        ({"float32": 300.0, "bfloat16": 500.0}, torch.float32)):
        cpu.fast_bf16.cache_clear()
        monkeypatch.setattr(cpu, "gemm_gflops", lambda rates=rates: rates)
        rr = Reranker.from_pretrained(str(tmp_path), device="cpu")
        assert rr.backend.dtype == want
        assert rr.rerank("query", ["one", "two"]).stats.dtype == str(want).removeprefix("torch.")
    cpu.fast_bf16.cache_clear()


def test_offline_name_resolves_to_the_packaged_gguf(smollm2_dir):
    assert (smollm2_dir / "config.json").is_file()
    assert (smollm2_dir / "model.safetensors").is_file()


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="could not load model 'no-org/no-such-reranker'"):
        Reranker.from_pretrained("no-org/no-such-reranker")
