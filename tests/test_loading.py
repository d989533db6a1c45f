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


def _fields(config) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(config).items() if k != "hf_config"}


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "llama"])
def test_config_json_read_directly_equals_transformers_config(family, tmp_path):
    """The decoder's config read straight from config.json (either RoPE layout) is what
    transformers' config class gives; a config.json that leaves a class default unsaid
    (Qwen3's head_dim) is read through transformers."""
    import json

    from transformers import AutoConfig

    from erank_fast.models.decoder_config import DecoderConfig
    from tests.helpers import make_tiny_model

    make_tiny_model(family, 300, tie_word_embeddings=family == "llama").config.save_pretrained(
        tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    legacy = {k: v for k, v in raw.items() if k != "rope_parameters"}
    legacy.update(rope_theta=raw["rope_parameters"]["rope_theta"], rope_scaling=None)
    unsaid = {k: v for k, v in raw.items() if k != "head_dim"}
    for variant in (raw, legacy, unsaid):
        (tmp_path / "config.json").write_text(json.dumps(variant))
        got = DecoderConfig.from_checkpoint(tmp_path)
        want = DecoderConfig.from_hf(AutoConfig.from_pretrained(tmp_path))
        assert _fields(got) == _fields(want)
        assert torch.equal(got.rope_inv_freq()[0], want.rope_inv_freq()[0])
    if family == "qwen3":
        assert DecoderConfig.from_checkpoint(tmp_path).head_dim == 128  # Qwen3Config's default


def test_tokenizer_loaded_without_the_model_config_class_is_autotokenizers(qwen_tokenizer,
                                                                           tmp_path):
    from transformers import AutoTokenizer

    from erank_fast.models.sources import load_tokenizer
    from tests.helpers import make_tiny_model

    qwen_tokenizer.save_pretrained(tmp_path)
    make_tiny_model("qwen3", len(qwen_tokenizer)).config.save_pretrained(tmp_path)
    got, want = load_tokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(tmp_path)
    assert type(got) is type(want)
    text = "<think>\nA query</think> <|im_end|> über 10 <answer>7</answer>"
    assert got.encode(text) == want.encode(text)
    messages = [{"role": "user", "content": text}]
    assert (got.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == want.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert (got.eos_token_id, got.pad_token_id, got.get_added_vocab()) == (
        want.eos_token_id, want.pad_token_id, want.get_added_vocab())


def test_loading_a_checkpoint_imports_neither_dynamo_nor_model_config_classes(tiny_qwen3,
                                                                               tmp_path):
    """A service's cold start: building the decoder on the meta device must not run torch's
    Python reference ops (they import torch._dynamo, 1-3 s), nor may reading the config or
    the tokenizer import transformers' model config classes (they pull torch.distributed)."""
    import subprocess
    import sys

    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    code = (
        "import sys, torch\n"
        "from erank_fast import Reranker\n"
        f"Reranker.from_pretrained({str(tmp_path)!r}, dtype=torch.float32, device='cpu')\n"
        "print(sorted(m for m in ('torch._dynamo', 'torch.distributed.tensor',\n"
        "                         'transformers.utils.type_validators') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**__import__("os").environ, "TRITON_INTERPRET": "1"})
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_copies_of_one_gguf_share_one_conversion(monkeypatch, tmp_path):
    """The converted checkpoint is named by the GGUF's bytes: a copy elsewhere (another venv,
    a reinstall with a new mtime) finds it; other bytes get their own; the digest is read back
    from the cache's index, not recomputed."""
    import os

    from erank_fast.models import loading

    monkeypatch.setenv("ERANK_FAST_CACHE", str(tmp_path / "cache"))
    first, copy, other = (tmp_path / d / "m.gguf" for d in ("a", "b", "c"))
    for path, body in ((first, b"GGUF one"), (copy, b"GGUF one"), (other, b"GGUF two")):
        path.parent.mkdir()
        path.write_bytes(body)
    os.utime(copy, ns=(1, 1))
    converted = loading.cache_root() / "gguf" / f"m-{loading.gguf_digest(first)[:12]}"
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")  # as a finished conversion leaves it
    assert loading.converted_gguf_dir(copy) == converted
    assert loading.converted_gguf_dir(first) == converted
    assert loading.gguf_digest(other) != loading.gguf_digest(first)
    monkeypatch.setattr(loading.hashlib, "sha1", None)  # hashing again would fail
    assert loading.converted_gguf_dir(copy) == converted
