"""The PyTorch paths of the ops (what the engine runs on CPU) and their oracles: shared-prefix
attention (prefix part + own part merged by LSE, and the fused prefill) equals plain causal
attention over each document's concatenated [prefix; suffix]; the streaming score head equals
full logits; prefix prefill equals its oracle."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from erank_fast.ops.causal_attention import causal_attention
from erank_fast.ops.prefix_attention import prefix_attention
from erank_fast.ops.score_head import greedy_tokens, pack_vocab_chunks, score_head_torch
from erank_fast.ops.shared_prefix_prefill import shared_prefix_prefill
from erank_fast.ops.suffix_attention import suffix_attention
from erank_fast.reference.causal_attention import causal_attention_ref
from erank_fast.reference.prefix_attention import prefix_attention_ref
from erank_fast.reference.score_head import score_head_ref
from erank_fast.reference.suffix_attention import suffix_attention_ref


def _plain(q, k, v, scale):
    """Causal attention of the last len(q) positions of a sequence whose keys are k, v."""
    n, p = q.shape[0], k.shape[0] - q.shape[0]
    mask = torch.ones(n, k.shape[0], dtype=torch.bool).tril(diagonal=p)
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                       v.transpose(0, 1)[None], attn_mask=mask, scale=scale,
                                       enable_gqa=True)
    return o[0].transpose(0, 1)


@pytest.mark.parametrize("prefix_lens,own,new,hq,hkv,d", [
    ([17, 0], [[0, 0, 0], [0, 0]], [[5, 1, 9], [3, 1]], 4, 1, 64),     # prefill, empty prefix
    ([1, 127, 128], [[3], [0, 11], [40, 2]], [[1], [1, 1], [1, 1]], 8, 8, 32),  # decode
    ([33], [[7, 0, 2, 5]], [[2, 4, 1, 3]], 8, 1, 128),                  # mixed, GQA 8
])
def test_shared_prefix_attention_equals_plain_causal(prefix_lens, own, new, hq, hkv, d):
    torch.manual_seed(0)
    scale = d**-0.5
    docs = [(g, o, n) for g in range(len(prefix_lens)) for o, n in zip(own[g], new[g])]
    # One K/V arena: prefixes first, then each document's own range, with gaps between them.
    prefix_starts, row = [], 3
    for p in prefix_lens:
        prefix_starts.append(row)
        row += p + 2
    own_base = []
    for _, o, n in reversed(docs):  # own ranges need not follow document order
        own_base.insert(0, row)
        row += o + n + 1
    k_arena, v_arena = torch.randn(row + 4, hkv, d), torch.randn(row + 4, hkv, d)
    k_arena[-1] = v_arena[-1] = float("nan")  # rows nobody owns may hold anything
    q = torch.randn(sum(n for *_, n in docs), hq, d)
    q_cu = [0]
    for *_, n in docs:
        q_cu.append(q_cu[-1] + n)
    group_cu = [0]
    for g in range(len(prefix_lens)):
        group_cu.append(group_cu[-1] + sum(n for gg, _, n in docs if gg == g))
    args = (torch.tensor(group_cu), torch.tensor(prefix_starts), torch.tensor(prefix_lens), scale)
    suffix_args = (torch.tensor(own_base), torch.tensor([o for _, o, _ in docs]), torch.tensor(q_cu))
    out_p, lse_p = prefix_attention(q, k_arena, v_arena, *args, impl="torch")
    out = suffix_attention(q, k_arena, v_arena, *suffix_args, out_p, lse_p, scale, impl="torch")
    ref_p, ref_lse = prefix_attention_ref(q, k_arena, v_arena, *args)
    ref = suffix_attention_ref(q, k_arena, v_arena, *suffix_args, ref_p, ref_lse, scale)
    # The fused CPU prefill path needs finite values in the arena.
    fused = shared_prefix_prefill(
        q, k_arena.nan_to_num(7.0), v_arena.nan_to_num(7.0), list(zip(prefix_starts, prefix_lens)),
        [(g, base, o, n) for base, (g, o, n) in zip(own_base, docs)], scale)
    for b, (g, o, n) in enumerate(docs):
        pre = slice(prefix_starts[g], prefix_starts[g] + prefix_lens[g])
        mine = slice(own_base[b], own_base[b] + o + n)
        k = torch.cat([k_arena[pre], k_arena[mine]])
        v = torch.cat([v_arena[pre], v_arena[mine]])
        want = _plain(q[q_cu[b] : q_cu[b + 1]], k, v, scale)
        for name, got in (("prefix+suffix", out), ("fused prefill", fused), ("oracle", ref)):
            diff = (got[q_cu[b] : q_cu[b + 1]] - want).abs().max().item()
            assert diff < 1e-5, f"{name}: doc {b} (prefix {prefix_lens[g]}, own {o}, new {n}): {diff:.3g}"
    torch.testing.assert_close(lse_p, ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows,vocab,hidden,chunk", [(1, 1000, 64, 256), (7, 4099, 48, 1024)])
def test_score_head_equals_full_logits(rows, vocab, hidden, chunk):
    torch.manual_seed(1)
    h, w = torch.randn(rows, hidden), torch.randn(vocab, hidden)
    w[3000 % vocab] = w[5]  # a tie across chunks: the smaller id must win, as torch.argmax
    ids = torch.tensor([0, 5, vocab - 1])
    got = score_head_torch(h, w, ids, vocab_chunk=chunk)
    want = score_head_ref(h, w, ids)
    assert torch.equal(got[1], want[1]) and torch.equal(want[1], (h @ w.T).argmax(-1))
    for name, g, r in zip(("max", "lse", "gathered"), got[::2] + got[3:], want[::2] + want[3:]):
        torch.testing.assert_close(g, r, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True])
def test_greedy_tokens_equal_the_score_heads_argmax(dtype, packed):
    """A reasoning step's argmax-only head picks the score head's token (the path it replaces)
    on the same weights: ties within and across chunks to the smallest id, a short last chunk,
    a row of equal logits; float32 also against torch.argmax of the full logits."""
    torch.manual_seed(2)
    vocab, chunk = 2 * 1024 + 300, 1024
    h, w = torch.randn(9, 64), torch.randn(vocab, 64)
    w[chunk + 7] = w[7]        # across chunks
    w[2 * chunk + 5] = w[2 * chunk + 1]  # within the short last chunk
    h[0] = 0.0                 # every logit equal: id 0
    h[1] = w[7] * 4.0          # row 1's best is the tied pair: id 7
    h, w = h.to(dtype), w.to(dtype)
    chunks = pack_vocab_chunks(w, chunk) if packed else None
    if packed and chunks is None:
        pytest.skip("oneDNN does not pack this dtype on this CPU")
    got = greedy_tokens(h, w, packed_chunks=chunks, vocab_chunk=chunk)
    want = score_head_torch(h, w, torch.tensor([0, 5]), vocab_chunk=chunk, packed_chunks=chunks)[1]
    assert torch.equal(got, want) and got[0] == 0 and got[1] == 7
    if dtype == torch.float32:
        assert torch.equal(got, (h @ w.T).argmax(-1))


@pytest.mark.parametrize("lengths,hq,hkv", [([5, 1, 17], 4, 2), ([0, 9], 8, 1)])
def test_prefix_prefill_equals_its_oracle(lengths, hq, hkv):
    torch.manual_seed(2)
    n, d = sum(lengths), 32
    q, k, v = torch.randn(n, hq, d), torch.randn(n, hkv, d), torch.randn(n, hkv, d)
    cu = [0]
    for length in lengths:
        cu.append(cu[-1] + length)
    torch.testing.assert_close(causal_attention(q, k, v, cu, d**-0.5),
                               causal_attention_ref(q, k, v, cu, d**-0.5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (8, 8, 128), (4, 1, 64)])
def test_cpu_decode_kernel_equals_the_oracle(dtype, tol, hq, hkv, d):
    """The C++ decode kernel (one token per document, prefix rows + own rows read in place)
    against the reference ops merged by LSE, on two query groups with gaps and NaN in rows that
    no document owns; bfloat16 inputs against the float32 oracle on the same values."""
    from erank_fast.ops.cpu_extension import cpu_kernels
    from erank_fast.ops.decode_attention import DecodeRows, decode_attention_cpu

    if cpu_kernels() is None:
        pytest.skip("erank_fast's CPU kernels could not be built here (no compiler)")
    torch.manual_seed(3)
    prefixes = [(2, 17), (25, 1)]
    docs = [(0, 40, 0, 1), (0, 60, 30, 1), (1, 100, 5, 1), (0, 130, 63, 1), (1, 200, 0, 1)]
    k_arena, v_arena = torch.randn(270, hkv, d), torch.randn(270, hkv, d)
    k_arena[[0, 1, 20, 39]] = v_arena[[0, 1, 20, 39]] = float("nan")  # rows nobody owns
    q = torch.randn(len(docs), hq, d)
    k_arena, v_arena, q = (t.to(dtype).float() for t in (k_arena, v_arena, q))  # same values
    rows = DecodeRows.of_step(docs, prefixes, "cpu")
    got = decode_attention_cpu(q.to(dtype), k_arena.to(dtype), v_arena.to(dtype), rows, d**-0.5)
    assert got is not None and got.dtype == dtype
    for b, (g, base, start, n) in enumerate(docs):
        p0, plen = prefixes[g]
        keys = torch.cat([k_arena[p0 : p0 + plen], k_arena[base : base + start + n]])
        values = torch.cat([v_arena[p0 : p0 + plen], v_arena[base : base + start + n]])
        want = _plain(q[b : b + 1], keys, values, d**-0.5)
        torch.testing.assert_close(got[b : b + 1].float(), want, atol=tol, rtol=tol)


def test_suffix_attention_with_ragged_lengths_is_not_taken_for_decode():
    """Two documents with 0 and 2 new tokens (as many tokens as documents) are not a decode
    step: the PyTorch path equals its oracle when max_q_tokens is left out."""
    torch.manual_seed(4)
    k, v = torch.randn(40, 2, 16), torch.randn(40, 2, 16)
    q = torch.randn(2, 4, 16)
    args = (torch.tensor([0, 20]), torch.tensor([3, 5]), torch.tensor([0, 0, 2]))
    po, pl = torch.randn(2, 4, 16), torch.randn(2, 4)
    got = suffix_attention(q, k, v, *args, po, pl, 0.25, impl="torch")
    want = suffix_attention_ref(q, k, v, *args, po, pl, 0.25)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (8, 8, 128), (4, 1, 64), (16, 8, 128),
                                     (72, 8, 64)])  # more query heads than one decode task takes
@pytest.mark.parametrize("case", ["prefill", "decode", "mixed"])
def test_cpu_arena_attention_kernel_equals_plain_causal(case, hq, hkv, d, dtype, tol):
    """The C++ shared-prefix kernel (any tokens per document, prefix + own rows read in place):
    odd lengths, tiles cut mid-token, empty and 1-token prefixes, NaN in rows nobody owns;
    bfloat16 inputs against float32 attention on the same values."""
    from erank_fast.ops.arena_attention import (
        ArenaRows,
        arena_attention_cpu,
        kernel_applies,
    )

    torch.manual_seed(4)
    prefixes = [(2, 17), (25, 1), (30, 0), (31, 70)]
    news = {"prefill": [1, 37, 5, 73, 11, 2], "decode": [1] * 6, "mixed": [1, 9, 1, 33, 1, 4]}
    docs = [(g, base, start, n) for g, base, start, n in zip(
        [0, 0, 1, 2, 3, 3], [110, 160, 230, 330, 470, 560], [0, 3, 0, 40, 1, 63], news[case])]
    k_arena, v_arena = torch.randn(700, hkv, d), torch.randn(700, hkv, d)
    k_arena[[0, 1, 20, 109, 699]] = v_arena[[0, 1, 20, 109, 699]] = float("nan")  # nobody's
    q = torch.randn(sum(n for *_, n in docs), hq, d)
    k_arena, v_arena, q = (t.to(dtype).float() for t in (k_arena, v_arena, q))  # same values
    if not kernel_applies(q.to(dtype), k_arena.to(dtype)):
        pytest.skip(f"erank_fast's CPU attention kernel is not built for {dtype} on this CPU")
    rows = ArenaRows.of_step(docs, prefixes)
    got = arena_attention_cpu(q.to(dtype), k_arena.to(dtype), v_arena.to(dtype), rows, d**-0.5)
    assert got is not None and got.dtype == dtype and not got.isnan().any()
    cu = rows.q_cu.tolist()
    for b, (g, base, start, n) in enumerate(docs):
        p0, plen = prefixes[g]
        keys = torch.cat([k_arena[p0 : p0 + plen], k_arena[base : base + start + n]])
        values = torch.cat([v_arena[p0 : p0 + plen], v_arena[base : base + start + n]])
        want = _plain(q[cu[b] : cu[b + 1]], keys, values, d**-0.5)
        diff = (got[cu[b] : cu[b + 1]].float() - want).abs().max().item()
        assert diff < tol, f"doc {b} (prefix {plen}, own {start}, new {n}): {diff:.3g}"


@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (16, 8, 128), (4, 1, 64)])
def test_cpu_brgemm_prefill_kernel_equals_the_vector_kernel(hq, hkv, d):
    """The bfloat16 prefill kernel on AMX tiles (raw, or oneDNN's brgemm) against the float32
    kernel on the same values: several prefixes (one empty, one of exactly 32 keys, others not
    multiples of the kernel's 32-key runs), own rows before the step, documents of 1 to 130 new
    tokens (tiles cut mid-token), NaN in rows nobody owns; the dispatch takes it for prefill
    steps where it runs. A one-token document (decode, in a step that mixes it with prefill) gets
    the vector kernel's rows, bit for bit. Raw tiles and the micro-kernels agree bit for bit."""
    from erank_fast.ops.arena_attention import ArenaRows, arena_attention_cpu, brgemm_available
    from erank_fast.ops.cpu_extension import cpu_kernels

    if not brgemm_available():
        pytest.skip("no bfloat16 brgemm (AMX) on this CPU")
    torch.manual_seed(5)
    prefixes = [(2, 17), (30, 0), (31, 70), (140, 32)]
    docs = [(0, 110, 0, 37), (0, 160, 3, 1), (1, 230, 0, 130), (2, 400, 64, 5), (2, 500, 1, 64),
            (3, 540, 0, 40)]
    k_arena, v_arena = torch.randn(600, hkv, d), torch.randn(600, hkv, d)
    k_arena[[0, 1, 20, 109, 599]] = v_arena[[0, 1, 20, 109, 599]] = float("nan")
    q = torch.randn(sum(n for *_, n in docs), hq, d)
    k_arena, v_arena, q = (t.bfloat16() for t in (k_arena, v_arena, q))
    rows = ArenaRows.of_step(docs, prefixes)
    args = (rows.q_cu, rows.own_base, rows.own_start, rows.prefix_start, rows.prefix_len, d**-0.5)
    got = cpu_kernels().shared_prefix_attention_brgemm(q, k_arena, v_arena, *args)
    want = cpu_kernels().shared_prefix_attention(q.float(), k_arena.float(), v_arena.float(),
                                                 *args)
    assert got.dtype == torch.bfloat16 and not got.isnan().any()
    torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=0)
    torch.testing.assert_close(arena_attention_cpu(q, k_arena, v_arena, rows, d**-0.5), got,
                               atol=0, rtol=0)
    # Raw AMX tiles (the default where the process may use them) and the micro-kernels: the
    # same sums in the same order.
    assert torch.equal(got, cpu_kernels().shared_prefix_attention_brgemm(
        q, k_arena, v_arena, *args, tiles=False))
    vector = cpu_kernels().shared_prefix_attention(q, k_arena, v_arena, *args)
    cu = rows.q_cu.tolist()
    one_token = [b for b, (*_, n) in enumerate(docs) if n == 1]
    assert one_token
    for b in one_token:
        assert torch.equal(got[cu[b] : cu[b + 1]], vector[cu[b] : cu[b + 1]])
    # Padding rows after the documents' (a step padded for the linear layers): zeros out, the
    # documents' rows unchanged, in both kernels.
    padded = torch.cat([q, torch.randn(5, hq, d).bfloat16()])
    for kernel, unpadded in ((cpu_kernels().shared_prefix_attention_brgemm, got),
                             (cpu_kernels().shared_prefix_attention, vector)):
        out = kernel(padded, k_arena, v_arena, *args)
        assert torch.equal(out[: q.shape[0]], unpadded) and not out[q.shape[0] :].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,d", [(9, 3, 64), (16, 8, 128), (32, 8, 128)])
def test_cpu_decode_rows_are_the_same_per_document_or_per_kv_head(hq, hkv, d, dtype):
    """A decode step's one-token documents: a step of many runs each document's heads in one
    task (the keys' rows of every head read together), a step of one document splits it by KV
    head across the threads. Both compute the same sums in the same order: bit for bit the same
    rows, whichever way a document is run (prefixes shared or not, own keys of 0 to 80, a block
    cut mid-prefix), and the float32 reference's attention."""
    from erank_fast.ops.arena_attention import ArenaRows
    from erank_fast.ops.cpu_extension import cpu_kernels

    kernels = cpu_kernels()
    if kernels is None or not kernels.shared_prefix_attention_supports(str(dtype)[6:]):
        pytest.skip("erank_fast's CPU kernels for this dtype could not be built here")
    torch.manual_seed(7)
    prefixes = [(0, 45), (50, 3)]
    docs = [(0, 60, 0, 1), (0, 70, 9, 1), (1, 90, 31, 1), (1, 130, 80, 1), (0, 220, 33, 1),
            (1, 260, 15, 1)]
    k_arena, v_arena = torch.randn(300, hkv, d).to(dtype), torch.randn(300, hkv, d).to(dtype)
    q = torch.randn(len(docs), hq, d).to(dtype)
    rows = ArenaRows.of_step(docs, prefixes)
    args = (rows.q_cu, rows.own_base, rows.own_start, rows.prefix_start, rows.prefix_len, d**-0.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # 6 documents go round 2 threads; one does not
    try:
        together = kernels.shared_prefix_attention(q, k_arena, v_arena, *args)
        for b, doc in enumerate(docs):
            alone = ArenaRows.of_step([doc], prefixes)
            got = kernels.shared_prefix_attention(
                q[b : b + 1], k_arena, v_arena, alone.q_cu, alone.own_base, alone.own_start,
                alone.prefix_start, alone.prefix_len, d**-0.5)
            assert torch.equal(got, together[b : b + 1]), f"document {b}"
    finally:
        torch.set_num_threads(threads)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for b, (g, base, start, n) in enumerate(docs):
        p0, plen = prefixes[g]
        keys = torch.cat([k_arena[p0 : p0 + plen], k_arena[base : base + start + n]]).float()
        values = torch.cat([v_arena[p0 : p0 + plen], v_arena[base : base + start + n]]).float()
        want = _plain(q[b : b + 1].float(), keys, values, d**-0.5)
        assert (together[b : b + 1].float() - want).abs().max().item() < tol, f"document {b}"


def test_cpu_brgemm_prefill_kernel_on_long_documents():
    """Documents of 700-1000 keys, where the brgemm kernel multiplies keys in coarser runs (64
    above 512 keys, 128 above 2048, so that few micro-kernel shapes are made whatever the
    lengths): the same attention as the float32 vector kernel."""
    from erank_fast.ops.arena_attention import ArenaRows, brgemm_available
    from erank_fast.ops.cpu_extension import cpu_kernels

    if not brgemm_available():
        pytest.skip("no bfloat16 brgemm (AMX) on this CPU")
    torch.manual_seed(6)
    prefixes = [(0, 45), (50, 300)]
    docs = [(0, 400, 0, 700), (1, 1200, 200, 500), (1, 1800, 0, 90)]
    k_arena, v_arena = torch.randn(2000, 3, 64).bfloat16(), torch.randn(2000, 3, 64).bfloat16()
    q = torch.randn(sum(n for *_, n in docs), 9, 64).bfloat16()
    rows = ArenaRows.of_step(docs, prefixes)
    args = (rows.q_cu, rows.own_base, rows.own_start, rows.prefix_start, rows.prefix_len, 0.125)
    got = cpu_kernels().shared_prefix_attention_brgemm(q, k_arena, v_arena, *args)
    want = cpu_kernels().shared_prefix_attention(q.float(), k_arena.float(), v_arena.float(),
                                                 *args)
    torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=0)
    assert torch.equal(got, cpu_kernels().shared_prefix_attention_brgemm(
        q, k_arena, v_arena, *args, tiles=False))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("d", [64, 128, 48])
def test_cpu_rotary_kernel_equals_the_decoder_rotation(d, dtype, tol):
    """The C++ in-place RoPE of q and k, on views of one fused QKV projection (strided rows),
    against the decoder's PyTorch rotation in float32 on the same values."""
    from erank_fast.models.rope import Rotary
    from erank_fast.ops.cpu_extension import cpu_kernels

    if cpu_kernels() is None:
        pytest.skip("erank_fast's CPU kernels could not be built here (no compiler)")
    torch.manual_seed(5)
    n, hq, hkv = 37, 6, 2
    positions = torch.randint(0, 4000, (n,))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = positions.float()[:, None] * inv_freq[None]
    qkv = torch.randn(n, (hq + 2 * hkv) * d).to(dtype)
    q, k = qkv[:, : hq * d].view(n, hq, d), qkv[:, hq * d : (hq + hkv) * d].view(n, hkv, d)
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    want_q, want_k = Rotary.apply(q.float(), cos, sin), Rotary.apply(k.float(), cos, sin)
    v_before = qkv[:, (hq + hkv) * d :].clone()
    cpu_kernels().rotary_(q, k, freqs.cos().contiguous(), freqs.sin().contiguous())
    torch.testing.assert_close(q.float(), want_q, atol=tol, rtol=tol)
    torch.testing.assert_close(k.float(), want_k, atol=tol, rtol=tol)
    assert torch.equal(qkv[:, (hq + hkv) * d :], v_before)  # v untouched


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("h", [576, 64, 37])
def test_cpu_rms_norm_kernel_equals_transformers(h, dtype, tol):
    """The C++ RMSNorm on strided rows against transformers' float32 arithmetic on the same
    values (bfloat16: within its one rounding)."""
    from erank_fast.ops.rms_norm import rms_norm_kernel

    torch.manual_seed(6)
    x = (torch.randn(23, 2 * h) * 3).to(dtype)[:, 5 : 5 + h]  # strided rows
    w = (torch.rand(h) + 0.5).to(dtype)
    kernel = rms_norm_kernel(x, w)
    if kernel is None:
        pytest.skip("erank_fast's CPU kernels could not be built here (no compiler)")
    xf = x.float()
    want = w.float() * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5))
    torch.testing.assert_close(kernel(x, w, 1e-5).float(), want, atol=tol, rtol=tol)


def test_cpu_kernels_are_built_when_a_cpu_engine_is_made(tiny_qwen3, monkeypatch):
    """A CPU reranker builds (or loads) erank_fast's C++ kernels at load, so its first call does
    not pay for the one-time build."""
    from erank_fast import Reranker
    from erank_fast.engine import engine

    asked = []
    monkeypatch.setattr(engine, "cpu_kernels", lambda: asked.append(1))
    model, tok = tiny_qwen3
    Reranker.from_pretrained(model, tokenizer=tok, device="cpu")
    assert asked == [1]


@pytest.mark.parametrize("dtype,arena_dtype", [(torch.float32, torch.float32),
                                               (torch.bfloat16, torch.bfloat16),
                                               (torch.float32, torch.bfloat16)])
def test_cpu_arena_write_equals_advanced_indexing(dtype, arena_dtype):
    """A step's K/V rows written by the C++ copy land where ``arena[rows] = k`` puts them, from
    contiguous rows and from a view of a wider projection (rows farther apart); float32 rows
    into a bfloat16 arena (int8 attention's) rounded as PyTorch's cast (ties to even); a row
    outside the arena is an error, and the arena is left as it was."""
    from erank_fast.ops.arena_attention import write_kv
    from erank_fast.ops.cpu_extension import cpu_kernels

    if cpu_kernels() is None:
        pytest.skip("erank_fast's CPU kernels could not be built here (no compiler)")
    torch.manual_seed(3)
    k_arena = torch.randn(300, 3, 16).to(arena_dtype)
    v_arena = torch.randn(300, 3, 16).to(arena_dtype)
    want_k, want_v = k_arena.clone(), v_arena.clone()
    rows = torch.tensor([7, 8, 9, 120, 299, 0])
    qkv = torch.randn(6, 5 * 48).to(dtype)  # k and v as column slices of one projection
    # halfway between two bfloat16 values: rounded to the even one
    qkv[0, 48:52] = torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 3 * 2**-9])
    for k, v in ((torch.randn(6, 3, 16).to(dtype), torch.randn(6, 3, 16).to(dtype)),
                 (qkv[:, 48:96].view(6, 3, 16), qkv[:, 96:144].view(6, 3, 16))):
        write_kv(k_arena, v_arena, rows, k, v)
        want_k[rows], want_v[rows] = k.to(arena_dtype), v.to(arena_dtype)
        assert torch.equal(k_arena, want_k) and torch.equal(v_arena, want_v)
    write_kv(k_arena, v_arena, rows[:0], k[:0], v[:0])
    with pytest.raises(RuntimeError, match="outside the arena"):
        write_kv(k_arena, v_arena, torch.tensor([5, 300]), k[:2], v[:2])
    assert torch.equal(k_arena, want_k) and torch.equal(v_arena, want_v)
