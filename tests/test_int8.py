"""int8 linear layers (``quantize="int8"``): the row kernels against their definitions, an
int8 linear layer against float32, the option's errors, and erank-smol's int8 path (on float32
and on bfloat16 models) against its float32 path with a stated tolerance (its ranking agrees
with float32's with Spearman >= 0.9, and no score moves by more than 2 points of 10; on DL19,
nDCG@10 0.5735 against 0.5755 with bfloat16)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from erank_fast import Reranker
from erank_fast.config import RerankerConfig
from erank_fast.ops.cpu_extension import cpu_kernels


def _kernels():
    kernels = cpu_kernels()
    if kernels is None:
        pytest.skip("erank_fast's CPU kernels could not be built here (no compiler)")
    return kernels


DTYPES = [torch.float32, torch.bfloat16]
# bfloat16 matmuls below this fraction of float32's rate: PyTorch has no kernels for them here
# (an AVX2 CPU: ~0.01; with AVX-512 but no bf16 units, an Ice Lake: ~0.25).
BF16_WITHOUT_KERNELS = 0.1


def _int8_or_skip(dtype):
    from erank_fast.ops.int8_linear import int8_unavailable_reason

    reason = int8_unavailable_reason(dtype)
    if reason is not None:
        pytest.skip(reason)


def _dequantized(q, scale):
    assert q.dtype == torch.uint8 and scale.dtype == torch.float32
    assert int(q.min()) >= 1 and int(q.max()) <= 255  # round(x / scale) in [-127, 127]
    return (q.float() - 128) * scale[:, None]


def _check_quantized(q, scale, want):
    """Within half a step of each row's scale, the scale being the row's max |value| / 127."""
    top = want.abs().amax(dim=1)
    torch.testing.assert_close(scale, torch.where(top > 0, top / 127, torch.ones_like(top)),
                               rtol=1e-5, atol=0)
    err = (_dequantized(q, scale) - want).abs()
    assert (err <= scale[:, None] * 0.5 + 1e-6 * want.abs().amax()).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_row_kernels_match_their_definitions(dtype):
    kernels = _kernels()
    torch.manual_seed(3)
    x = torch.randn(37, 70)  # 70: a vector tail
    x[5] = 0.0  # an all-zero row: scale 1, every value at the zero point
    x[7, 3] = 80.0  # an outlier owns its row's scale alone
    xb = x.to(dtype)
    q, scale = kernels.quantize_rows(xb)
    _check_quantized(q, scale, xb.float())
    assert scale[5] == 1.0 and (q[5] == 128).all()

    w = torch.randn(70).to(dtype)
    q, scale = kernels.rms_norm_quantize(xb, w, 1e-6)
    xf = xb.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()
    _check_quantized(q, scale, normed)

    g, u = torch.randn(37, 70).to(dtype), torch.randn(37, 70).to(dtype)
    g[4] = torch.linspace(-200.0, 200.0, 70)  # SiLU's exponent beyond float32's range both ways
    s = torch.rand(37) + 0.5
    q, scale = kernels.silu_mul_quantize(g, u, s)
    _check_quantized(q, scale, F.silu(g.float() * s[:, None]) * (u.float() * s[:, None]))

    # float32 rows: to float32's rounding (the vector path fuses the multiply and the add);
    # bfloat16 rows: to one bfloat16 rounding.
    rtol = 1e-6 if dtype == torch.float32 else 0.01
    y, residual = torch.randn(37, 70).to(dtype), torch.randn(37, 70).to(dtype)
    want = (residual.float() + y.float() * s[:, None]).to(dtype)
    kernels.scaled_add_(residual, y, s)
    torch.testing.assert_close(residual, want, atol=1e-6, rtol=rtol)
    want = (y.float() * s[:, None]).to(dtype)
    kernels.scale_rows_(y, s)
    torch.testing.assert_close(y, want, atol=0, rtol=rtol)


def test_weight_rows_quantised_within_half_a_step():
    from erank_fast.ops.int8_linear import QuantizedRows, quantize_weight_rows

    torch.manual_seed(5)
    w = torch.randn(40, 70)
    w[3] = 0.0  # an all-zero output row quantises to zeros
    w[5, 2] = 50.0  # an outlier sets its own row's scale only
    q, scale = quantize_weight_rows(w.bfloat16())
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert int(q.abs().max()) == 127 and (q[3] == 0).all()
    wf = w.bfloat16().float()
    top = wf.abs().amax(dim=1)
    torch.testing.assert_close(scale[top > 0], top[top > 0] / 127, rtol=1e-6, atol=0)
    assert ((q.float() * scale[:, None] - wf).abs() <= scale[:, None] * 0.5 + 1e-6).all()

    q7, scale7 = quantize_weight_rows(w, levels=63)  # the AVX2 path's 7-bit weights
    assert int(q7.abs().max()) == 63 and (q7[3] == 0).all()
    torch.testing.assert_close(scale7, scale * 127 / 63, rtol=1e-2, atol=0)
    assert ((q7.float() * scale7[:, None] - w).abs() <= scale7[:, None] * 0.5 + 1e-6).all()
    with pytest.raises(ValueError, match="levels must be in 1..127"):
        quantize_weight_rows(w, levels=128)

    rows = QuantizedRows(torch.tensor([[0, 128, 255]], dtype=torch.uint8), torch.tensor([0.5]))
    assert rows.dequantized().tolist() == [[-64.0, 0.0, 63.5]]


def test_weight_levels_follow_the_cpus_int8_products(monkeypatch):
    """8-bit weights where the GEMM sums four products in 32 bits (VNNI, AMX), 7-bit where it
    sums two in 16 (AVX2 alone); int8 refused only without any of them."""
    import erank_fast.cpu
    from erank_fast.ops import int8_linear

    def cpu_with(*flags):
        monkeypatch.setattr(erank_fast.cpu, "cpu_info", lambda: {"flags": list(flags)})

    cpu_with("avx2", "avx512f", "avx512_vnni")
    assert int8_linear.weight_levels() == 127
    cpu_with("avx2", "amx_int8")
    assert int8_linear.weight_levels() == 127
    cpu_with("avx2")
    assert int8_linear.weight_levels() == 63
    cpu_with()
    assert "neither AMX-INT8, AVX512-VNNI nor AVX2" in int8_linear.int8_unavailable_reason(
        torch.float32)


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_int8_gemm_is_exact_at_this_cpus_weight_levels(rows):
    """The packed GEMM over full-range activations (0..255, the zero point 128 taken off) and
    weights at ``weight_levels()`` returns the exact integer sums: no 16-bit pair sum saturates
    on this CPU (with 8-bit weights on an AVX2 CPU it does, by up to ~20 % of a result)."""
    _int8_or_skip(torch.float32)
    from erank_fast.ops.int8_linear import Int8Linear, QuantizedRows, weight_levels

    levels = weight_levels()
    torch.manual_seed(6)
    linear = nn.Linear(576, 96, bias=False)
    with torch.no_grad():  # integer weights of full range: one scale of 1 per row
        linear.weight.copy_(torch.randint(-levels, levels + 1, (96, 576)).float())
        linear.weight[:, 0] = levels
    layer = Int8Linear(linear)
    assert layer.levels == levels
    torch.testing.assert_close(layer.w_scale, torch.ones(96), rtol=0, atol=0)
    q = torch.randint(0, 256, (rows, 576), dtype=torch.uint8)
    q[0, :] = 255  # the largest activations against the largest weights
    got = layer.unscaled(QuantizedRows(q, torch.ones(rows)))
    want = (q.long() - 128) @ linear.weight.long().T  # |sums| < 2**24: exact in float32
    assert torch.equal(got.double(), want.double())


@pytest.mark.parametrize("k,n", [(576, 96), (576, 98), (40, 7)])
def test_few_rows_kernel_is_onednns_gemm(k, n):
    """``int8_few_rows_linear`` (decode steps, 7-bit weights) returns what oneDNN's int8 GEMM
    returns, bit for bit, at 1 to ``FEW_ROWS`` rows: K a multiple of 32 (the AVX2 blocks) or
    not (one product at a time), N a multiple of the 4-row blocks or not."""
    _int8_or_skip(torch.float32)
    from erank_fast.ops.int8_linear import (
        FEW_ROWS,
        PAIR_SAFE_LEVELS,
        ZERO_POINT,
        Int8Linear,
        QuantizedRows,
        few_rows_kernels,
        quantize_weight_rows,
    )

    kernels = few_rows_kernels(PAIR_SAFE_LEVELS, torch.float32)
    if kernels is None:
        pytest.skip("the few-rows kernel is built with AVX2")
    torch.manual_seed(7)
    linear = nn.Linear(k, n, bias=False)
    layer = Int8Linear(linear, levels=PAIR_SAFE_LEVELS)
    assert layer.few_rows_weight is not None
    w_q, scale = quantize_weight_rows(linear.weight, PAIR_SAFE_LEVELS)
    assert torch.equal(layer.few_rows_weight, w_q)
    assert torch.equal(layer.few_rows_sums, w_q.sum(1).int())
    for rows in (1, 2, 3, 8, FEW_ROWS):
        q = torch.randint(0, 256, (rows, k), dtype=torch.uint8)
        q[0, :] = 255
        got = kernels.int8_few_rows_linear(q, w_q, layer.few_rows_sums, scale)
        onednn = torch.ops.onednn.qlinear_pointwise(
            q, 1.0, ZERO_POINT, layer.packed, layer.w_scale, layer.w_zero, None, 1.0, 0,
            torch.float32, "none", [], "")
        assert torch.equal(got, onednn), rows
        assert torch.equal(layer.unscaled(QuantizedRows(q, torch.ones(rows))), onednn)
    # 8-bit weights would saturate its 16-bit pair sums: those layers keep oneDNN alone
    assert few_rows_kernels(127, torch.float32) is None
    assert Int8Linear(linear, levels=127).few_rows_weight is None
    assert few_rows_kernels(PAIR_SAFE_LEVELS, torch.bfloat16) is None
    with pytest.raises(RuntimeError, match="x_q"):
        kernels.int8_few_rows_linear(q.float(), w_q, layer.few_rows_sums, scale)
    with pytest.raises(RuntimeError, match="against w_q"):
        kernels.int8_few_rows_linear(q[:, 1:], w_q, layer.few_rows_sums, scale)


def test_int8_row_kernels_refuse_mixed_dtypes():
    kernels = _kernels()
    x, w = torch.randn(4, 32), torch.randn(32).bfloat16()
    with pytest.raises(RuntimeError, match="of one dtype"):
        kernels.rms_norm_quantize(x, w, 1e-6)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        kernels.quantize_rows(x.half())
    with pytest.raises(RuntimeError, match="of one dtype"):
        kernels.scaled_add_(x, x.bfloat16(), torch.ones(4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_linear_against_float32(dtype):
    _int8_or_skip(dtype)
    from erank_fast.ops.int8_linear import Int8Linear

    torch.manual_seed(4)
    linear = nn.Linear(96, 80, bias=True)
    x = torch.randn(33, 96)
    x[2] *= 40.0  # one token far louder than the others keeps its own scale
    want = F.linear(x, linear.weight, linear.bias)
    layer = Int8Linear(linear.to(dtype))
    out = layer(x.to(dtype))
    assert out.dtype == dtype
    got = out.float()
    rel = (got - want).norm(dim=1) / want.norm(dim=1)
    assert rel.max() < 0.02, rel.max()
    residual = torch.randn(33, 80)
    added = layer.add_into(residual.to(dtype, copy=True), x.to(dtype)).float()
    assert ((added - residual - want).norm(dim=1) / want.norm(dim=1)).max() < 0.03


def test_quantize_option_is_checked(tiny_qwen3):
    with pytest.raises(ValueError, match="quantize must be one of"):
        RerankerConfig(quantize="int4")
    model, tok = tiny_qwen3
    with pytest.raises(ValueError, match="in-memory model"):
        Reranker.from_pretrained(model, tokenizer=tok, quantize="int8")
    with pytest.raises(ValueError, match="reference backend"):
        Reranker.from_pretrained(model, tokenizer=tok, backend="reference", quantize="int8")


@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_model_with_projection_biases(qwen_tokenizer, tmp_path, dtype):
    """A Qwen2 model (q, k and v with biases, quantised as one int8 GEMM) end to end: every
    linear layer int8, its scores within the stated tolerance of the float32 path's on the
    same weights, and different from the int8 scores of the same model with its biases zeroed
    (the biases are applied)."""
    _int8_or_skip(dtype)
    from tests.helpers import boost_digits, make_tiny_model

    model = boost_digits(make_tiny_model("qwen2", len(qwen_tokenizer), hidden_size=128,
                                         intermediate_size=256), qwen_tokenizer)
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    docs = ["a flea lives up to a year", "the life cycle of a flea", "tax forms", "x" * 40,
            "fleas and ticks on dogs", "how long is a year"]

    def scores(directory, **kwargs):
        return Reranker.from_pretrained(directory, **kwargs).score("flea life cycle", docs)

    model.save_pretrained(tmp_path / "biased")
    qwen_tokenizer.save_pretrained(tmp_path / "biased")
    want = scores(tmp_path / "biased", dtype=torch.float32)
    rr = Reranker.from_pretrained(tmp_path / "biased", dtype=dtype, quantize="int8")
    assert rr.backend.quantized_layers == 7 * model.config.num_hidden_layers
    assert rr.backend.reader.weight.dtype == dtype
    # The lm_head is packed as in a model of its dtype without int8: its small-batch blocks
    # where they apply, without a float32 copy; else oneDNN's packed chunks.
    from erank_fast.ops.packed_linear import packing_available, small_rows_apply

    reader = rr.backend.reader
    if small_rows_apply(reader.weight):
        assert reader.blocks is not None and reader.exact is None
    else:
        assert reader.packed is not None or not packing_available(reader.weight)
    got = rr.score("flea life cycle", docs)
    assert max(abs(a - b) for a, b in zip(got, want)) <= 0.5, (got, want)
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.zero_()
    model.save_pretrained(tmp_path / "unbiased")
    qwen_tokenizer.save_pretrained(tmp_path / "unbiased")
    unbiased = scores(tmp_path / "unbiased", dtype=dtype, quantize="int8")
    assert max(abs(a - b) for a, b in zip(got, unbiased)) > 1.0


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_path_against_the_float32_path(smollm2_dir, dtype):
    """erank-smol (its scores spread over 0..10, unlike the base model's) on 24 DL19 passages,
    int8 (on a float32 or a bfloat16 model) against float32 (itself the reference's
    arithmetic, test_reranker_exactness). Stated tolerance: Spearman >= 0.9 and every score
    within 2.0 of float32's."""
    _int8_or_skip(dtype)
    from erank_fast.cpu import warn_if_slower_than_float32

    if dtype == torch.bfloat16 and warn_if_slower_than_float32(dtype) < BF16_WITHOUT_KERNELS:
        # PyTorch emulates bfloat16 here (~1 GFLOP/s: ~10 minutes for this model); int8 on a
        # bfloat16 model is checked on the tiny Qwen2 model above.
        pytest.skip("this CPU has no bfloat16 matmul kernels")
    from tests.conftest import DATA_DIR

    path = DATA_DIR / "dl19-bm25-top100.jsonl"
    if not path.is_file():
        pytest.skip("needs the shared TREC data (real passages)")
    row = json.loads(path.open(encoding="utf-8").readline())
    query, docs = row["query"], [c["text"] for c in row["candidates"][:24]]
    want = Reranker.from_pretrained("erank-smol", dtype=torch.float32).score(query, docs)
    ours = Reranker.from_pretrained("erank-smol", dtype=dtype, quantize="int8")
    layers = ours.backend.decoder.config.num_layers
    assert ours.backend.quantized_layers == 7 * layers  # q, k, v, o, gate, up, down
    got = ours.score(query, docs)
    ra = torch.tensor(got).argsort().argsort().double()
    rb = torch.tensor(want).argsort().argsort().double()
    spearman = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
    err = max(abs(a - b) for a, b in zip(got, want))
    print(f"int8 ({dtype}) against float32: max |score error| {err:.3f}, "
          f"Spearman {spearman:.3f}")
    assert spearman >= 0.9 and err <= 2.0


def test_few_row_steps_run_unpadded(tiny_qwen3, tmp_path):
    """Where every int8 layer has the few-rows kernel's weights (7-bit weights, float32, an
    AVX2 build), steps of at most ``FEW_ROWS`` rows are not padded to a row bucket: that
    kernel builds nothing per row count, and a 2-document decode step padded to 16 rows
    multiplied 8x the rows. Tokens and scores are the padded steps', bit for bit (each row's
    products do not depend on the other rows); larger steps are still padded for oneDNN."""
    _int8_or_skip(torch.float32)
    from erank_fast.models.decoder import padded_rows
    from erank_fast.ops.int8_linear import FEW_ROWS, Int8Linear
    from erank_fast.ops.packed_linear import rows_unpadded_below

    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rr = Reranker.from_pretrained(tmp_path, dtype=torch.float32, quantize="int8", think=8,
                                  max_think_tokens=20)
    decoder = rr.backend.decoder
    layers = [m for m in decoder.model.layers.modules() if isinstance(m, Int8Linear)]
    if not all(m.few_rows_weight is not None for m in layers):
        assert decoder.unpadded_below is None
        pytest.skip("no few-rows int8 kernel here (VNNI or AMX: 8-bit weights on oneDNN)")
    assert decoder.pad_rows and decoder.unpadded_below == FEW_ROWS
    assert [decoder._rows_run(n) for n in (1, 2, FEW_ROWS, FEW_ROWS + 1, 300)] == \
        [1, 2, FEW_ROWS, padded_rows(FEW_ROWS + 1), 512]
    seen = []
    hook = decoder.model.layers[0].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[0]))
    query, docs = "what do vaccines do", ["They train immune memory.", "Paris in 1889.", "",
                                          "Antigens without the disease " * 9]
    unpadded = rr.rerank(query, docs, return_reasoning=True)
    hook.remove()
    assert any(n % 16 for n in seen)  # some steps ran their own row count
    decoder.unpadded_below = None
    padded = rr.rerank(query, docs, return_reasoning=True)
    assert [(r.index, r.score, r.reasoning, r.answer) for r in unpadded] == \
        [(r.index, r.score, r.reasoning, r.answer) for r in padded]
    layers[0].few_rows_weight = None
    assert rows_unpadded_below(decoder.model.layers) is None
