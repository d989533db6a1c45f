"""Linear layers on small-batch blocks (``ops/csrc/small_linear.cpp``, ``PackedLinear``'s
blocks; steps of many rows on AMX tiles, ``ops/csrc/tile_linear.cpp``): each epilogue against
float32 arithmetic on the same bfloat16 values rounded once, and against oneDNN's packed path
(both within one bfloat16 rounding: they sum in different orders); the tile kernel against the
micro-kernels, bit for bit; which steps take the blocks; when the copies are made; a bfloat16
model's scores with and without them. The vocabulary head on the same blocks
(``ops/csrc/vocab_head.cpp``) against the float32 logits of the same bfloat16 values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from erank_fast import Reranker
from erank_fast.ops import packed_linear as pl
from erank_fast.ops.score_head import greedy_tokens, pack_vocab_blocks, score_head


def _small_or_skip():
    probe = torch.zeros(8, 8, dtype=torch.bfloat16)
    if not (pl.packing_available(probe) and pl.small_rows_apply(probe)):
        pytest.skip("no bfloat16 brgemm (AMX / AVX512-BF16) or no oneDNN packing on this CPU")


def _close(got: torch.Tensor, want: torch.Tensor):
    """Within one bfloat16 rounding of the float32 result (plus float32 summation order)."""
    tol = 2.0**-7
    torch.testing.assert_close(got.float(), want.bfloat16().float(), rtol=tol,
                               atol=tol * float(want.abs().max()))


@pytest.mark.parametrize("n,k", [(96, 64), (200, 130), (576, 576), (40, 32)])
@pytest.mark.parametrize("rows", [1, 17, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_small_batch_blocks_equal_float32_arithmetic(n, k, rows, bias):
    _small_or_skip()
    torch.manual_seed(n + k + rows)
    linear = nn.Linear(k, n, bias=bias).bfloat16()
    layer = pl.PackedLinear(linear, small_rows=True)
    x = torch.randn(rows, k).bfloat16()
    assert layer.small(x)
    exact = x.float() @ linear.weight.detach().float().T
    if bias:
        exact += linear.bias.detach().float()
    other = torch.randn(rows, n).bfloat16()
    onednn = pl.packed_matmul(x, layer.packed, layer.bias)
    _close(layer(x), exact)
    _close(onednn, exact)
    _close(pl.linear_silu(layer, x), F.silu(exact))
    _close(pl.linear_mul(layer, x, other.clone()), exact * other.float())
    residual = other.clone()
    added = pl.linear_add(layer, x, residual)
    assert added.data_ptr() == residual.data_ptr()  # in place, as the oneDNN path may
    _close(added, exact + other.float())
    up = pl.PackedLinear(nn.Linear(k, n, bias=bias).bfloat16(), small_rows=True)
    want = pl.linear_mul(up, x, pl.linear_silu(layer, x))  # the two projections one by one
    assert torch.equal(pl.linear_silu_mul(layer, up, x), want)


@pytest.mark.parametrize("n,k,bias", [(576, 576, False), (200, 96, True), (1536, 576, True),
                                      (40, 64, False), (576, 1536, False)])
def test_tile_kernel_equals_the_micro_kernels(n, k, bias):
    """Steps of many rows on AMX tiles give small_linear's micro-kernel results bit for bit (a
    row's result does not depend on the other rows: 255 rows take the micro-kernels, 300 the
    tiles), for every epilogue, the gate/up pair, a bias, N not a multiple of the 64-column
    blocks and a last chunk of fewer than 32 rows."""
    _small_or_skip()
    kernels = pl.cpu_kernels()
    if not kernels.tile_linear_applies(300, k):
        pytest.skip("no AMX tiles on this CPU")
    assert not kernels.tile_linear_applies(255, k) and not kernels.tile_linear_applies(300, k + 2)
    torch.manual_seed(n + k)
    gate, up = (pl.PackedLinear(nn.Linear(k, n, bias=bias).bfloat16(), small_rows=True)
                for _ in range(2))
    x, other = torch.randn(300, k).bfloat16(), torch.randn(300, n).bfloat16()
    for epilogue in (pl.PackedLinear.NONE, pl.PackedLinear.SILU):
        few = kernels.small_linear(x[:255], gate.blocks, n, gate.bias32, epilogue)
        many = kernels.small_linear(x, gate.blocks, n, gate.bias32, epilogue)
        assert torch.equal(few, many[:255])
    for epilogue in (pl.PackedLinear.MUL, pl.PackedLinear.ADD):
        few, many = other[:255].clone(), other.clone()
        kernels.small_linear_into_(few, x[:255], gate.blocks, n, gate.bias32, epilogue)
        kernels.small_linear_into_(many, x, gate.blocks, n, gate.bias32, epilogue)
        assert torch.equal(few, many[:255])
    pair = (gate.blocks, up.blocks, n, gate.bias32, up.bias32)
    few = kernels.small_linear_gate_up(x[:255], *pair)
    assert torch.equal(few, kernels.small_linear_gate_up(x, *pair)[:255])
    assert torch.equal(few, pl.linear_mul(up, x[:255], pl.linear_silu(gate, x[:255])))
    threads = torch.get_num_threads()
    try:  # more threads than twice the 10 chunks: the threads share out the blocks instead
        torch.set_num_threads(6)
        assert torch.equal(few, kernels.small_linear_gate_up(x, *pair)[:255])
        silu = kernels.small_linear(x, gate.blocks, n, gate.bias32, pl.PackedLinear.SILU)
        assert torch.equal(silu[:255], pl.linear_silu(gate, x[:255]))
    finally:
        torch.set_num_threads(threads)


def test_steps_above_small_rows_take_tiles_or_onednn(monkeypatch):
    """Above ``SMALL_ROWS`` rows a layer takes its blocks where the AMX tile kernel applies
    (``many_rows``) and oneDNN's packed weight elsewhere."""
    _small_or_skip()
    layer = pl.PackedLinear(nn.Linear(64, 96).bfloat16(), small_rows=True)
    few, many = torch.randn(pl.SMALL_ROWS, 64).bfloat16(), torch.randn(pl.SMALL_ROWS + 1, 64)
    assert layer.many_rows == pl.cpu_kernels().tile_linear_applies(pl.SMALL_ROWS + 1, 64)
    assert layer.small(many.bfloat16()) == layer.many_rows
    assert not pl.PackedLinear(nn.Linear(66, 96).bfloat16(), small_rows=True).many_rows
    layer.many_rows = False
    assert layer.small(few) and not layer.small(many.bfloat16())
    strided = few.t().contiguous().t()  # the same rows, columns not contiguous
    assert not layer.small(few.float()) and not layer.small(strided)
    many = many.bfloat16()
    assert torch.equal(layer(many), pl.packed_matmul(many, layer.packed, layer.bias))
    empty = torch.zeros(0, 64, dtype=torch.bfloat16)  # no rows: oneDNN, an empty result
    assert not layer.small(empty) and layer(empty).shape == (0, 96)
    assert layer.small_matmul(empty).shape == (0, 96)  # and the blocks' op, called directly
    nothing = torch.zeros(0, 96, dtype=torch.bfloat16)
    assert layer.small_into(nothing, empty, pl.PackedLinear.ADD) is False  # not taken
    pl.cpu_kernels().small_linear_into_(nothing, empty, layer.blocks, 96, layer.bias32,
                                        pl.PackedLinear.ADD)
    plain = pl.PackedLinear(nn.Linear(64, 96).bfloat16())  # no blocks unless asked for
    assert plain.blocks is None and not plain.small(few)


@pytest.mark.parametrize("rows", [0, 1, 9, 70])
@pytest.mark.parametrize("vocab", [64, 4099, 49152 + 17])
def test_vocab_head_equals_float32_logits(rows, vocab):
    """The head on small-batch blocks: the maximum and log-sum-exp of the float32 logits of the
    same bfloat16 values (the same products, summed in another order) and their first argmax,
    with ties within a block, across blocks and across the threads' runs of blocks, a short
    last block, and a row of equal logits (id 0, log-sum-exp log V)."""
    _small_or_skip()
    torch.manual_seed(rows + vocab)
    h, w = torch.randn(rows, 64).bfloat16(), torch.randn(vocab, 64).bfloat16()
    for a, b in ((5, 9), (7, vocab // 2 + 3), (3, vocab - 1)):  # within, across blocks / runs
        if b < vocab:
            w[b] = w[a]
    if rows > 1:
        h[0] = 0.0
        h[1] = (w[7].float() * 4).bfloat16()  # its best is the tied pair: the smaller id
    blocks = pack_vocab_blocks(w)
    logits = h.float() @ w.float().T
    ids = torch.tensor([0, 5, vocab - 1])
    best, arg, lse, gathered = score_head(h, w, ids, blocks=blocks)
    assert torch.equal(arg, logits.argmax(-1)) if rows else arg.shape == (0,)
    assert torch.equal(greedy_tokens(h, w, blocks=blocks), arg)
    torch.testing.assert_close(best, logits.max(-1).values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gathered, logits[:, ids], rtol=1e-5, atol=1e-5)
    if rows > 1:
        assert arg[0] == 0 and abs(float(lse[0]) - math.log(vocab)) < 1e-4
        assert arg[1] == min(i for i in range(vocab) if torch.equal(w[i], w[7]))


def test_vocab_blocks_only_where_they_apply(monkeypatch):
    _small_or_skip()
    w = torch.randn(128, 64)
    assert pack_vocab_blocks(w) is None  # float32: the chunked path
    assert pack_vocab_blocks(w.bfloat16()) is not None
    monkeypatch.setenv("ERANK_FAST_SMALL_ROWS", "0")
    assert pack_vocab_blocks(w.bfloat16()) is None


def test_small_batch_copies_only_where_they_fit(monkeypatch):
    _small_or_skip()
    weights = [torch.zeros(576, 576, dtype=torch.bfloat16)] * 4
    assert pl._small_rows_fit(weights)
    assert not pl._small_rows_fit([w.float() for w in weights])  # bfloat16 only
    monkeypatch.setattr(pl, "SMALL_ROWS_MEMORY_SHARE", 1e-9)
    assert not pl._small_rows_fit(weights)
    monkeypatch.setattr(pl, "SMALL_ROWS_MEMORY_SHARE", 1 / 8)
    monkeypatch.setenv("ERANK_FAST_SMALL_ROWS", "0")
    assert not pl._small_rows_fit(weights)


def test_bf16_scores_with_and_without_small_batch_blocks(tiny_qwen3, tmp_path, monkeypatch):
    """A bfloat16 model reasoning (decode steps of a few rows) scores the same documents within
    bfloat16's rounding whether its decode steps take the blocks or oneDNN."""
    _small_or_skip()
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rr = Reranker.from_pretrained(tmp_path, dtype=torch.bfloat16, think=6, max_think_tokens=12)
    layers = [m for m in rr.backend.decoder.modules() if isinstance(m, pl.PackedLinear)]
    assert layers and all(m.blocks is not None for m in layers)
    docs = ["tides and the moon", "a recipe for bread", "gravity pulls the sea", "x y z"]
    with_blocks = rr.score("what causes tides", docs)
    monkeypatch.setattr(pl, "SMALL_ROWS", 0)
    for layer in layers:  # nor the tile kernel for many rows
        monkeypatch.setattr(layer, "many_rows", False)
    assert not any(layer.small(torch.zeros(4, layer.in_features).bfloat16()) for layer in layers)
    without = rr.score("what causes tides", docs)
    assert max(abs(a - b) for a, b in zip(with_blocks, without)) < 0.1, (with_blocks, without)


def test_many_row_steps_on_tiles_run_unpadded(tiny_qwen3, tmp_path):
    """Where every linear layer takes the tile kernel, steps above ``SMALL_ROWS`` rows are not
    padded to a row bucket (the kernel is made once for all row counts): the same scores as
    padded steps, bit for bit (each row's products do not depend on the other rows). Where
    some layer does not (oneDNN), they are padded."""
    _small_or_skip()
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    rr = Reranker.from_pretrained(tmp_path, dtype=torch.bfloat16)
    decoder = rr.backend.decoder
    layers = [m for m in decoder.model.modules() if isinstance(m, pl.PackedLinear)]
    if not all(m.many_rows for m in layers):
        assert decoder.unpadded_above is None
        pytest.skip("no AMX tile kernel here: every step is padded")
    assert decoder.unpadded_above == pl.SMALL_ROWS
    docs = [f"passage {i} about the moon, the sea and the tides that follow them" * 3
            for i in range(40)]  # one step of well over SMALL_ROWS tokens
    unpadded = rr.rerank("what causes tides", docs)
    assert unpadded.stats.prefill_tokens > pl.SMALL_ROWS
    decoder.unpadded_above = None
    padded = rr.rerank("what causes tides", docs)
    assert [(r.index, r.score) for r in unpadded] == [(r.index, r.score) for r in padded]
    layers[0].many_rows = False
    assert pl.rows_unpadded_above(decoder.model) is None
