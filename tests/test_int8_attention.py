"""int8 prefill attention (``shared_prefix_attention(..., int8_attention=True)``, the engine's
``quantize="int8"`` on float32 models where the CPU has AVX512-VNNI): the kernel computes the
scheme of ``ops/csrc/int8_attention.h`` (checked against it written in float64 here), its error
against the float32 kernel is bounded (max |Δ| <= 3 % of max |V|, mean <= 0.3 %; measured 1.5 %
and 0.11 %), decode rows stay float32 bit for bit, and results do not depend on the threads or
on which documents share the call; the engine turns it on for int8 float32 models only.
Without AVX-512 the int8 engine's arena is bfloat16 under float32 attention: the portable
kernel gives the bits of the float32 kernel over the same values."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from erank_fast.ops.arena_attention import (
    ArenaRows,
    bfloat16_arena_available,
    int8_attention_available,
)
from erank_fast.ops.cpu_extension import cpu_kernels

BLOCK = 32  # keys per block of the kernel's online softmax
PREFIXES = [(0, 45), (50, 3)]
# (group, own base, own tokens before, new tokens): prefill tiles of 1-3 tiles, decode rows
DOCS = [(0, 60, 0, 17), (0, 90, 9, 1), (1, 100, 31, 40), (1, 180, 0, 5), (0, 220, 12, 1)]


def _kernels_or_skip():
    if not int8_attention_available(torch.float32):
        pytest.skip("int8 attention needs erank_fast's CPU kernels on a CPU with AVX512-VNNI")
    return cpu_kernels()


def _inputs(hq, hkv, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(300, hkv, d, generator=g) + 3 * torch.randn(1, hkv, d, generator=g)
    v = torch.randn(300, hkv, d, generator=g)
    q = 2 * torch.randn(sum(n for *_, n in DOCS), hq, d, generator=g)
    return q, k, v


def _args(docs, d):
    rows = ArenaRows.of_step(docs, PREFIXES)
    return rows.q_cu, rows.own_base, rows.own_start, rows.prefix_start, rows.prefix_len, d**-0.5


def _int8_rows(x):
    """x rounded to int8 along its last dimension with a scale per row (its max |x| / 127, 1
    where that is 0), half to even as the kernel's conversion."""
    scale = x.abs().amax(dim=-1, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(x / scale), scale


def _scheme(q, k, v, d):
    """The documented scheme in float64, per document and KV head: keys and values less their
    mean, int8 per key; query rows int8 per row; the softmax in float; P times the value
    scales rounded to uint8 per row and block of 32 keys (its largest at 255)."""
    hq, hkv = q.shape[1], k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    row = 0
    for g, base, start, n in DOCS:
        p0, plen = PREFIXES[g]
        rows = torch.cat([torch.arange(p0, p0 + plen), torch.arange(base, base + start + n)])
        keys, values = k[rows].double(), v[rows].double()  # [T, Hkv, D]
        k8, k_scale = _int8_rows(keys - keys.mean(dim=0, keepdim=True))
        v_mean = values.mean(dim=0)
        v8, v_scale = _int8_rows(values - v_mean)
        q8, q_scale = _int8_rows(q[row : row + n].double())
        t, pad = len(rows), -len(rows) % BLOCK
        visible = torch.arange(t)[None] <= plen + start + torch.arange(n)[:, None]
        for h in range(hq):
            kv = h // (hq // hkv)
            s = (q8[:, h] @ k8[:, kv].T) * q_scale[:, h] * k_scale[:, kv, 0] * d**-0.5
            s = s.masked_fill(~visible, float("-inf"))
            e = torch.exp(s - s.amax(dim=1, keepdim=True))
            weighted = F.pad(e * v_scale[:, kv, 0], (0, pad)).view(n, -1, BLOCK)
            step = weighted.amax(dim=2, keepdim=True) / 255
            p8 = torch.round(weighted / torch.where(step > 0, step, torch.ones_like(step)))
            blocks = F.pad(v8[:, kv], (0, 0, 0, pad)).view(-1, BLOCK, d)
            pv = (torch.einsum("nbj,bjd->nbd", p8, blocks) * step).sum(dim=1)
            out[row : row + n, h] = pv / e.sum(dim=1, keepdim=True) + v_mean[kv]
        row += n
    return out


@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (8, 2, 128)])
def test_int8_attention_computes_the_scheme_within_a_bound_of_float32(hq, hkv, d):
    kernels = _kernels_or_skip()
    q, k, v = _inputs(hq, hkv, d)
    args = _args(DOCS, d)
    exact = kernels.shared_prefix_attention(q, k, v, *args)
    got = kernels.shared_prefix_attention(q, k, v, *args, True)
    prefill = torch.cat([torch.full((n,), n > 1) for *_, n in DOCS])
    # decode rows (one new token) stay float32: the same bits
    assert torch.equal(got[~prefill], exact[~prefill])
    # the scheme, up to float32 arithmetic: ~3e-6, and where a value sits on a rounding
    # boundary it may round to the other side (a P step of 1/255 of its block's largest)
    diff = (got[prefill] - _scheme(q, k, v, d).float()[prefill]).abs()
    assert diff.mean().item() < 1e-5 and diff.max().item() < 0.02
    # against float32 attention
    err = (got[prefill] - exact[prefill]).abs()
    top = v.abs().max().item()
    assert err.max().item() <= 0.03 * top and err.mean().item() <= 0.003 * top
    assert err.max().item() > 0  # the int8 path did run


def test_int8_attention_does_not_depend_on_threads_or_company():
    """Each (document, KV head)'s int8 keys and values are made from its own alone: the same
    rows with 1 or 2 threads, and for a document alone or among others."""
    kernels = _kernels_or_skip()
    q, k, v = _inputs(9, 3, 64, seed=1)
    together = kernels.shared_prefix_attention(q, k, v, *_args(DOCS, 64), True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(kernels.shared_prefix_attention(q, k, v, *_args(DOCS, 64), True),
                           together)
    finally:
        torch.set_num_threads(threads)
    row = 0
    for doc in DOCS:
        n = doc[3]
        alone = kernels.shared_prefix_attention(q[row : row + n], k, v, *_args([doc], 64), True)
        assert torch.equal(alone, together[row : row + n])
        row += n


def test_int8_attention_over_a_bfloat16_arena_reads_its_values_exactly():
    """The engine's arena under int8 attention is bfloat16: float32 queries over it give the
    bits they give over the same values in a float32 arena, prefill and decode rows alike."""
    kernels = _kernels_or_skip()
    q, k, v = _inputs(9, 3, 64, seed=2)
    k16, v16 = k.bfloat16(), v.bfloat16()
    got = kernels.shared_prefix_attention(q, k16, v16, *_args(DOCS, 64), True)
    assert got.dtype == torch.float32
    assert torch.equal(got, kernels.shared_prefix_attention(q, k16.float(), v16.float(),
                                                            *_args(DOCS, 64), True))
    with pytest.raises(RuntimeError, match="float32 queries over a bfloat16 arena"):
        kernels.shared_prefix_attention(q, k16, v16, *_args(DOCS, 64))


@pytest.mark.parametrize("d", [64, 128])
def test_float32_attention_over_a_bfloat16_arena_reads_its_values_exactly(d):
    """Without AVX-512, int8 layers keep a bfloat16 arena under float32 attention: prefill
    tiles (through their float32 copy of the document's keys and values) and decode rows
    (widening as they read) give the bits of the float32 kernel over the same values, on one
    thread and on two; where the kernel lacks it, it refuses a bfloat16 arena."""
    kernels = cpu_kernels()
    if kernels is None:
        pytest.skip("erank_fast's CPU kernels could not be built here")
    q, k, v = _inputs(9, 3, d, seed=3)
    k16, v16 = k.bfloat16(), v.bfloat16()
    if not bfloat16_arena_available(torch.float32):
        assert not kernels.shared_prefix_attention_bf16_arena()
        with pytest.raises(RuntimeError, match="float32 queries over a bfloat16 arena"):
            kernels.shared_prefix_attention(q, k16, v16, *_args(DOCS, d), False)
        return
    assert not bfloat16_arena_available(torch.bfloat16)
    want = kernels.shared_prefix_attention(q, k16.float(), v16.float(), *_args(DOCS, d), False)
    threads = torch.get_num_threads()
    try:
        for n in sorted({1, max(2, threads)}):
            torch.set_num_threads(n)
            got = kernels.shared_prefix_attention(q, k16, v16, *_args(DOCS, d), False)
            assert got.dtype == torch.float32
            assert torch.equal(got, want), n
    finally:
        torch.set_num_threads(threads)
    # and it is attention over those values: the float32 reference within float32 error
    g = 9 // 3
    row = 0
    for grp, base, start, n in DOCS:
        p0, plen = PREFIXES[grp]
        rows = torch.cat([torch.arange(p0, p0 + plen), torch.arange(base, base + start + n)])
        keys = k16[rows].float().repeat_interleave(g, dim=1).transpose(0, 1)
        values = v16[rows].float().repeat_interleave(g, dim=1).transpose(0, 1)
        mask = torch.ones(n, plen + start + n, dtype=torch.bool).tril(plen + start)
        ref = F.scaled_dot_product_attention(q[row : row + n].transpose(0, 1), keys, values,
                                             attn_mask=mask)
        assert torch.allclose(want[row : row + n], ref.transpose(0, 1), atol=1e-5, rtol=1e-5)
        row += n


def test_int8_attention_only_where_it_runs():
    kernels = cpu_kernels()
    if kernels is None:
        pytest.skip("erank_fast's CPU kernels could not be built here")
    assert int8_attention_available(torch.float32) == bool(
        kernels.shared_prefix_attention_int8_available())
    assert not int8_attention_available(torch.bfloat16)
    q, k, v = _inputs(9, 3, 64)
    with pytest.raises(RuntimeError, match="int8 attention: float32 on a CPU with AVX512-VNNI"):
        kernels.shared_prefix_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(),
                                        *_args(DOCS, 64), True)


def test_the_engine_takes_int8_attention_with_int8_layers_on_float32(qwen_tokenizer, tmp_path):
    from erank_fast import Reranker
    from erank_fast.ops.int8_linear import int8_unavailable_reason
    from tests.helpers import make_tiny_model

    if int8_unavailable_reason(torch.float32):
        pytest.skip(int8_unavailable_reason(torch.float32))
    make_tiny_model("qwen3", len(qwen_tokenizer), head_dim=64).save_pretrained(tmp_path)
    qwen_tokenizer.save_pretrained(tmp_path)
    int8 = Reranker.from_pretrained(tmp_path, dtype=torch.float32, quantize="int8")
    plain = Reranker.from_pretrained(tmp_path, dtype=torch.float32)
    on = int8_attention_available(torch.float32)
    assert int8._backend.runner.int8_attention == on
    bf16_arena = on or bfloat16_arena_available(torch.float32)
    assert int8._backend.kv_dtype == (torch.bfloat16 if bf16_arena else torch.float32)
    assert not plain._backend.runner.int8_attention
    assert plain._backend.kv_dtype == torch.float32
    assert len(int8.rerank("what causes tides", ["The moon.", "Bread " * 30])) == 2
