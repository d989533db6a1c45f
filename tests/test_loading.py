"""Model sources: a checkpoint directory, an in-memory model, GGUF via offline names, hub ids."""

from __future__ import annotations

import pytest
import torch

from erank_fast import Reranker


def test_checkpoint_directory_equals_in_memory_model(tiny_qwen3, tmp_path):
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    from_dir = Reranker.from_pretrained(str(tmp_path), think=3, device="cpu")
    ref_dir = Reranker.from_pretrained(str(tmp_path), think=3, backend="reference", device="cpu")
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


def test_offline_name_resolves_to_the_packaged_gguf(smollm2_dir):
    assert (smollm2_dir / "config.json").is_file()
    assert (smollm2_dir / "model.safetensors").is_file()


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="could not load model 'no-org/no-such-reranker'"):
        Reranker.from_pretrained("no-org/no-such-reranker")
