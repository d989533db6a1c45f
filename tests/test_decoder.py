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
