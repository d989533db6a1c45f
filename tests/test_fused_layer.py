"""A decoder layer of a CPU step in one C++ call (``models/fused_layer.py``,
``ops/csrc/decoder_layer.cpp``): bit for bit the Python layer's results, on the three families'
layer variants (q/k norms, q/k/v biases, neither), reasoning (decode steps) and think="off", in
bfloat16 (small-batch blocks), float32 (oneDNN's packed weights) and int8 (``quantize="int8"``,
on float32 and bfloat16 models); and which steps take it."""

from __future__ import annotations

import pytest
import torch

from erank_fast import Reranker
from erank_fast.models import decoder, fused_layer
from erank_fast.ops import packed_linear as pl
from erank_fast.ops.cpu_extension import cpu_kernels
from erank_fast.ops.int8_linear import int8_unavailable_reason
from tests.helpers import boost_digits, make_tiny_model

QUERY = "what causes ocean tides"
DOCS = ["Tides are caused by the moon.", "Bread needs yeast and time.", "",
        "Spring tides align the sun and the moon.", "The sea " * 40]


def _fused_or_skip(dtype: torch.dtype):
    probe = torch.zeros(8, 8, dtype=dtype)
    if not pl.packing_available(probe):
        pytest.skip(f"no oneDNN packing for {dtype} on this CPU")
    if dtype == torch.bfloat16 and not pl.small_rows_apply(probe):
        pytest.skip("no bfloat16 brgemm (AMX) on this CPU")


def _int8_fused_or_skip(dtype: torch.dtype):
    reason = int8_unavailable_reason(dtype)
    if reason:
        pytest.skip(reason)
    if not cpu_kernels().shared_prefix_attention_supports(str(dtype).removeprefix("torch.")):
        pytest.skip(f"the attention kernel is not built for {dtype} on this CPU")


@pytest.mark.parametrize("family,overrides", [
    ("qwen3", dict(head_dim=64)),                                        # q/k norms
    ("qwen2", dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2)),  # biases
    ("llama", dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1)),
])
@pytest.mark.parametrize("think", ["off", 6])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_fused_layer_equals_the_python_layer(qwen_tokenizer, tmp_path, monkeypatch, family,
                                             overrides, think, dtype, quantize):
    (_int8_fused_or_skip if quantize == "int8" else _fused_or_skip)(dtype)
    tok = qwen_tokenizer
    model = boost_digits(make_tiny_model(family, len(tok), **overrides), tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rr = Reranker.from_pretrained(tmp_path, dtype=dtype, think=think, max_think_tokens=12,
                                  quantize=quantize)
    ran = []
    real = fused_layer.run_fused_layer

    def counted(*args):
        ran.append(real(*args))
        return ran[-1]

    monkeypatch.setattr(decoder, "run_fused_layer", counted)
    fused = rr.rerank(QUERY, DOCS)
    assert any(ran)  # the small steps took it
    if think == "off":
        assert not all(ran)  # the last layer of a step that reads some rows alone does not
    monkeypatch.setattr(decoder, "run_fused_layer", lambda *args: False)
    python = rr.rerank(QUERY, DOCS)
    for a, b in zip(fused, python):
        assert (a.index, a.score, a.answer, a.num_generated_tokens) == (
            b.index, b.score, b.answer, b.num_generated_tokens)


def test_fused_layer_only_where_every_op_takes_the_cpu_kernels(tiny_qwen3, tmp_path,
                                                               monkeypatch):
    """Other dtypes take the Python layer; so does a model whose head dim the attention kernel
    does not take (tiny_qwen3: 32), and bfloat16 steps above ``SMALL_ROWS`` on small-batch
    blocks (``test_small_rows_limit``)."""
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ran = []
    real = fused_layer.run_fused_layer
    monkeypatch.setattr(decoder, "run_fused_layer", lambda *args: ran.append(real(*args)))
    for dtype in (torch.float32, torch.bfloat16):
        Reranker.from_pretrained(tmp_path, think=3, dtype=dtype).rerank(QUERY, DOCS)
    assert ran and not any(ran)
    with torch.inference_mode():  # rejected before the layer is looked at
        assert real(object(), torch.zeros(4, 64, dtype=torch.float16), None, None) is False
