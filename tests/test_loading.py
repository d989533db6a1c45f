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


def test_the_small_probe_measures_like_the_full_check(monkeypatch):
    """A dtype whose small probe multiply is slow is rated from that probe alone: its estimate
    agrees with the full-size measurement (float32 here, forced down either branch)."""
    from erank_fast import cpu

    monkeypatch.setattr(cpu, "SLOW_PROBE_SECONDS", float("inf"))
    full = cpu._gflops(torch.float32)
    monkeypatch.setattr(cpu, "SLOW_PROBE_SECONDS", 0.0)
    probe = cpu._gflops(torch.float32)
    assert full > 0 and probe > 0 and 0.1 < probe / full < 10, (probe, full)


def test_an_explicit_dtype_slower_than_float32_is_warned_about(monkeypatch, tiny_qwen3,
                                                               tmp_path, caplog):
    """dtype="bfloat16" on a CPU that multiplies it slower than float32: loaded as asked, with
    one warning that names both rates; none where bfloat16 is the faster one."""
    from erank_fast import cpu

    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    for rates, warned in (({"float32": 137.0, "bfloat16": 28.0}, True),
                          ({"float32": 300.0, "bfloat16": 2500.0}, False)):
        cpu.warn_if_slower_than_float32.cache_clear()
        monkeypatch.setattr(cpu, "gemm_gflops", lambda rates=rates: rates)
        caplog.clear()
        with caplog.at_level("WARNING", logger="erank_fast"):
            rr = Reranker.from_pretrained(str(tmp_path), device="cpu", dtype="bfloat16")
        assert rr.backend.dtype == torch.bfloat16
        text = [r.getMessage() for r in caplog.records if "was asked for" in r.getMessage()]
        assert len(text) == warned, text
        if warned:
            assert "28 GFLOP/s against float32's 137 (0.20x)" in text[0]
    cpu.warn_if_slower_than_float32.cache_clear()


def test_offline_name_resolves_to_the_packaged_gguf(smollm2_dir):
    assert (smollm2_dir / "config.json").is_file()
    assert (smollm2_dir / "model.safetensors").is_file()


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="could not load model 'no-org/no-such-reranker'"):
        Reranker.from_pretrained("no-org/no-such-reranker")
