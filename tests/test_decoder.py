"""The decoder equals the transformers model: logits in float32, max abs diff <= 1e-4."""

from __future__ import annotations

import pytest
import torch

from erank_fast.models.decoder_config import DecoderConfig
from erank_fast.models.loading import decoder_from_hf_model, load_decoder
from tests.helpers import decoder_logits, make_tiny_model

VOCAB = 512

CASES = {
    "qwen3-untied": ("qwen3", dict(tie_word_embeddings=False)),
    "qwen3-tied-gqa4": ("qwen3", dict(tie_word_embeddings=True, num_attention_heads=8,
                                      num_key_value_heads=2, head_dim=16)),
    "qwen3-yarn": ("qwen3", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                                  "factor": 4.0,
                                                  "original_max_position_embeddings": 1024})),
    "qwen2-bias": ("qwen2", dict(tie_word_embeddings=False)),
    "llama-tied": ("llama", dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "llama3-rope": ("llama", dict(rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 512})),
    "llama-linear-rope": ("llama", dict(rope_parameters={"rope_type": "linear",
                                                         "rope_theta": 10000.0, "factor": 2.0})),
}


def _ids(n: int, seed: int = 1) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=g).tolist()


def _check(decoder, hf_model, ids):
    with torch.no_grad():
        expected = hf_model(torch.tensor([ids])).logits[0].float()
    got = decoder_logits(decoder, ids)
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4, f"max |logit diff| = {diff:.3g} over {len(ids)} tokens"


@pytest.mark.parametrize("case", sorted(CASES))
def test_decoder_matches_transformers(case):
    family, overrides = CASES[case]
    model = make_tiny_model(family, VOCAB, **overrides)
    decoder = decoder_from_hf_model(model)
    _check(decoder, model, _ids(67))


def test_decoder_shares_parameters_with_the_transformers_model():
    model = make_tiny_model("qwen3", VOCAB)
    decoder = decoder_from_hf_model(model)
    assert decoder.model.layers[0].mlp.up_proj.weight.data_ptr() == \
        model.model.layers[0].mlp.up_proj.weight.data_ptr()
    with torch.no_grad():  # an optimizer step on the transformers model is seen by the decoder
        model.model.layers[1].self_attn.q_proj.weight.mul_(1.5)
    _check(decoder, model, _ids(20))


def test_decoder_loads_a_checkpoint_directory(tmp_path):
    model = make_tiny_model("qwen2", VOCAB)
    model.save_pretrained(tmp_path)
    decoder = load_decoder(tmp_path, torch.float32, torch.device("cpu"))
    _check(decoder, model, _ids(33))


def test_unsupported_configs_are_refused_clearly():
    from transformers import GPT2Config, Qwen3Config

    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        DecoderConfig.from_hf(GPT2Config())
    with pytest.raises(ValueError, match="sliding-window"):
        DecoderConfig.from_hf(Qwen3Config(use_sliding_window=True))


def test_smollm2_real_weights_match_transformers(smollm2, smollm2_dir):
    model, tokenizer = smollm2
    ids = tokenizer.encode("The capital of France is Paris. The capital of Italy is",
                           add_special_tokens=False)
    _check(load_decoder(smollm2_dir, torch.float32, torch.device("cpu")), model, ids)


def _rotary(theta: float = 100000.0):
    from transformers import LlamaConfig

    from erank_fast.models.rope import Rotary

    hf = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                     intermediate_size=1536, num_hidden_layers=1, vocab_size=64,
                     rope_theta=theta)
    return Rotary(DecoderConfig.from_hf(hf))


def test_rope_tables_are_transformers_tables_bit_for_bit():
    """The RoPE tables both rotation paths read are transformers' own for a document's positions
    (its float32 angles and ATen's float32 cos / sin, the same bits), and for any range of
    positions the same values whichever rows a step asks for."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rotary = _rotary()
    hf = LlamaRotaryEmbedding(LlamaConfig(hidden_size=576, num_attention_heads=9,
                                          num_key_value_heads=3, rope_theta=100000.0))
    positions = torch.arange(512)
    hf_cos, hf_sin = hf(torch.zeros(1, 512, 64), positions[None])
    cos, sin = rotary.half_tables(positions)
    assert torch.equal(cos, hf_cos[0, :, :32]) and torch.equal(sin, hf_sin[0, :, :32])
    full_cos, full_sin = rotary.cos_sin(positions, torch.float32)
    assert torch.equal(full_cos[:, 0], hf_cos[0]) and torch.equal(full_sin[:, 0], hf_sin[0])
    far = torch.arange(0, 40000, 97)  # tables grown to 65,536 rows; read in any order
    angles = far.float()[:, None] * rotary.inv_freq[None, :]
    cos, sin = rotary.half_tables(far.flip(0))
    assert torch.equal(cos.flip(0), angles.cos()) and torch.equal(sin.flip(0), angles.sin())


_TABLES_IN_A_THREAD = """
import hashlib, threading, torch
from tests.test_decoder import _rotary
rotary = _rotary()
torch.randn(256, 256) @ torch.randn(256, 256)
out = {}
def tables():  # as the engine's first step: in its own thread, after the model's load
    cos, sin = rotary.half_tables(torch.arange(96))
    out["hash"] = hashlib.sha1(cos.numpy().tobytes() + sin.numpy().tobytes()).hexdigest()
thread = threading.Thread(target=tables)
thread.start()
thread.join()
print(out["hash"])
"""


def test_rope_tables_are_the_same_in_every_process():
    """The tables of a fresh process's first step (in a new thread, as the engine runs it) are
    the same bytes in every process. ATen's float32 cos gave other last bits in about one
    process in ten on a 2-core Xeon when the tables were a process's first call, and bfloat16
    scores then moved by up to 0.14."""
    import hashlib
    import subprocess
    import sys
    from pathlib import Path

    rotary = _rotary()
    cos, sin = rotary.half_tables(torch.arange(96))
    want = hashlib.sha1(cos.numpy().tobytes() + sin.numpy().tobytes()).hexdigest()
    root = Path(__file__).resolve().parents[1]
    for _ in range(3):
        got = subprocess.run([sys.executable, "-c", _TABLES_IN_A_THREAD], cwd=root, check=True,
                             capture_output=True, text=True).stdout.split()[-1]
        assert got == want
