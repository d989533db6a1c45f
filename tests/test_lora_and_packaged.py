"""LoRA merging without peft, adapter export, and the packaged reranker erank-smol."""

from __future__ import annotations

import json

import pytest
import torch

from erank_fast import Reranker
from erank_fast.models.lora import merge_lora
from erank_fast.training.export import export

DOCS = ["one document", "another, longer document", "a third"]


@pytest.fixture()
def trained_adapter(tiny_qwen3, tmp_path):
    """A peft adapter with non-zero B (as after training), and the base checkpoint."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    lora.save_pretrained(tmp_path / "adapter")
    return tmp_path, lora.merge_and_unload().eval()


def test_merge_equals_peft_merge(trained_adapter):
    from transformers import AutoModelForCausalLM

    root, peft_merged = trained_adapter
    ours = merge_lora(AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32),
                      root / "adapter")
    want = peft_merged.state_dict()
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(tensor, want[name], rtol=0, atol=1e-6, msg=name)


def test_reranker_with_adapter_equals_the_peft_merged_model(trained_adapter, tiny_qwen3):
    root, peft_merged = trained_adapter
    model, tok = tiny_qwen3
    got = Reranker.from_pretrained(str(root / "base"), adapter=str(root / "adapter"),
                                   device="cpu", dtype=torch.float32).score("q", DOCS)
    want = Reranker.from_pretrained(peft_merged, tokenizer=tok).score("q", DOCS)
    plain = Reranker.from_pretrained(model, tokenizer=tok).score("q", DOCS)
    assert got == pytest.approx(want, abs=1e-6) and got != pytest.approx(plain, abs=1e-6)


def test_a_checkpoint_and_adapter_load_like_the_transformers_merge(trained_adapter):
    """load_decoder(path, adapter=...) builds no transformers model: merged in float32, then
    cast, its weights equal those of transformers + merge_lora + cast, bit for bit."""
    from transformers import AutoModelForCausalLM

    from erank_fast.models.loading import decoder_from_hf_model, load_decoder

    root, _ = trained_adapter
    for dtype in (torch.float32, torch.bfloat16):
        ours = load_decoder(root / "base", dtype, torch.device("cpu"), adapter=root / "adapter")
        hf = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32)
        want = decoder_from_hf_model(merge_lora(hf, root / "adapter").to(dtype)).state_dict()
        got = ours.state_dict()
        assert got.keys() == want.keys()
        for name, tensor in got.items():
            assert tensor.dtype == want[name].dtype and torch.equal(tensor, want[name]), name


def test_in_memory_model_is_not_changed_by_an_adapter(trained_adapter, tiny_qwen3):
    root, _ = trained_adapter
    model, tok = tiny_qwen3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with_adapter = Reranker.from_pretrained(model, tokenizer=tok, adapter=str(root / "adapter"))
    plain = Reranker.from_pretrained(model, tokenizer=tok)
    assert with_adapter.score("q", DOCS) != pytest.approx(plain.score("q", DOCS), abs=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unsupported_or_mismatched_adapters_are_refused(trained_adapter, tmp_path):
    root, _ = trained_adapter
    config_path = root / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="plain LoRA adapters only.*DoRA"):
        Reranker.from_pretrained(str(root / "base"), adapter=str(root / "adapter"))
    config_path.write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter directory"):
        Reranker.from_pretrained(str(root / "base"), adapter=str(tmp_path / "nothing"))

    from transformers import AutoModelForCausalLM, Qwen3Config

    other = AutoModelForCausalLM.from_config(Qwen3Config(
        vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=12))
    with pytest.raises(ValueError, match="does not fit this model"):
        merge_lora(other, root / "adapter")


def test_export_then_load_as_a_packaged_directory(trained_adapter, tmp_path):
    root, peft_merged = trained_adapter
    out = export(root / "adapter", tmp_path / "packaged", base=str(root / "base"),
                                think=2, score_mode="expected")
    meta = json.loads((out / "erank_fast.json").read_text())
    assert meta == {"base": str(root / "base"), "think": 2, "score_mode": "expected"}
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(out / "adapter_model.safetensors")).values()} == {torch.float16}
    # float16 adapter weights: scores equal the float32 merge's to well within ranking precision
    got = Reranker.from_pretrained(str(root / "base"), adapter=str(out), think=2).score("q", DOCS)
    tok = Reranker.from_pretrained(str(root / "base")).tokenizer
    want = Reranker.from_pretrained(peft_merged, tokenizer=tok, think=2).score("q", DOCS)
    assert got == pytest.approx(want, abs=1e-3)


def test_packaged_reranker_settings_and_overrides(monkeypatch, trained_adapter, tmp_path):
    from erank_fast.models import packaged

    root, _ = trained_adapter
    export(root / "adapter", tmp_path / "pkg", base=str(root / "base"),
                          score_mode="expected", extra={"max_doc_tokens": 16})
    monkeypatch.setitem(packaged.PACKAGED_DIRS, "tiny-packaged", tmp_path / "pkg")
    rr = Reranker.from_pretrained("tiny-packaged")
    assert rr.name == "tiny-packaged"
    assert (rr.config.score_mode, rr.config.think, rr.config.max_doc_tokens) == ("expected", "off", 16)
    rr = Reranker.from_pretrained("tiny-packaged", score_mode="erank", max_doc_tokens=32, think=3)
    assert (rr.config.score_mode, rr.config.think, rr.config.max_doc_tokens) == ("erank", 3, 32)
    with pytest.raises(ValueError, match="already includes its adapter"):
        Reranker.from_pretrained("tiny-packaged", adapter=str(root / "adapter"))
    monkeypatch.setitem(packaged.PACKAGED_DIRS, "broken", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing from this installation"):
        Reranker.from_pretrained("broken")



def test_a_merged_adapter_is_fully_trainable(trained_adapter):
    """``--adapter A --use_lora false`` fine-tunes every weight of the merged model: peft
    freezes the base it loads an adapter on, and the merge must not keep that."""
    from erank_fast.training.policy import load_policy

    root, peft_merged = trained_adapter
    model, _ = load_policy(str(root / "base"), str(root / "adapter"))
    assert all(p.requires_grad for p in model.parameters())
    want = peft_merged.state_dict()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, want[name], rtol=0, atol=1e-6, msg=name)
