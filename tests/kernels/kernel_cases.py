"""Inputs, tolerances, benchmark shapes and baselines shared by the kernel tests and bench/."""

from __future__ import annotations

import os

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# The Triton interpreter's bfloat16 arithmetic is wrong: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])
TOLERANCE = {torch.float32: (2e-5, 2e-5), torch.float16: (3e-3, 3e-3), torch.bfloat16: (2e-2, 2e-2)}


def randn(*shape, dtype=torch.float32, seed=None):
    g = torch.Generator(device="cpu")
    if seed is not None:
        g.manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=DEVICE, dtype=dtype)


def cu(lengths) -> torch.Tensor:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=DEVICE)


def assert_close(got, want, dtype, what):
    atol, rtol = TOLERANCE[dtype]
    got, want = got.float(), want.float()
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), f"{what}: -inf pattern differs"
    err = (got[finite] - want[finite]).abs()
    bound = atol + rtol * want[finite].abs()
    worst = (err - bound).argmax() if err.numel() else None
    assert err.numel() == 0 or bool((err <= bound).all()), (
        f"{what} ({dtype}): max error {err.max().item():.3g}; worst got "
        f"{got[finite].flatten()[worst].item():.6g} want {want[finite].flatten()[worst].item():.6g}")


def arena(lengths, hkv, d, dtype, seed, gap=3):
    """K and V arenas [T, Hkv, D] holding ranges of the given lengths at gapped, out-of-order
    starts; rows nobody owns are NaN (never read). Returns (k, v, starts [len(lengths)])."""
    starts, row = [0] * len(lengths), gap
    for i in reversed(range(len(lengths))):
        starts[i] = row
        row += lengths[i] + gap
    k = randn(row, hkv, d, dtype=dtype, seed=seed)
    v = randn(row, hkv, d, dtype=dtype, seed=seed + 1)
    owned = torch.zeros(row, dtype=torch.bool)
    for s, n in zip(starts, lengths):
        owned[s : s + n] = True
    k[~owned.to(DEVICE)] = float("nan")
    v[~owned.to(DEVICE)] = float("nan")
    return k, v, torch.tensor(starts, device=DEVICE)


# Benchmark shapes (bench/ imports these, so kernels are timed on the shapes tests cover the
# code paths of): Qwen3-4B on CUDA, CPU-sized elsewhere; tiny under ERANK_BENCH_SMOKE=1 (CI
# runs every benchmark once that way, so a broken call fails CI).
SMOKE = os.environ.get("ERANK_BENCH_SMOKE") == "1"
if SMOKE:
    BENCH = dict(dtype=torch.float32, hq=4, hkv=2, d=64, docs=3, suffix=8, prefixes=[16],
                 decode_prefix=16, own=8, batches=[4], hidden=64, vocab=1000, rows=[4])
elif DEVICE.type == "cuda":
    BENCH = dict(dtype=torch.bfloat16, hq=32, hkv=8, d=128, docs=100, suffix=256,
                 prefixes=[64, 512, 1024, 2048], decode_prefix=2048, own=300, batches=[64, 256],
                 hidden=2560, vocab=151936, rows=[1, 64, 256])
else:
    BENCH = dict(dtype=torch.float32, hq=8, hkv=2, d=64, docs=16, suffix=64, prefixes=[64, 512],
                 decode_prefix=512, own=100, batches=[16, 64], hidden=576, vocab=49152,
                 rows=[16, 64])


def shared_prefix_inputs(prefix: int, docs: int, own_before: int, new: int, hq: int, hkv: int,
                         d: int, dtype, seed: int = 0):
    """One query group: ``docs`` documents with ``own_before`` cached and ``new`` new tokens
    each, over a prefix of ``prefix`` rows, all in one K/V arena. Returns the arguments of
    prefix_attention and suffix_attention: (q, k, v, group_cu, prefix_start, prefix_len,
    own_base, own_start, q_cu)."""
    own = own_before + new
    k = randn(prefix + docs * own, hkv, d, dtype=dtype, seed=seed)
    v = randn(prefix + docs * own, hkv, d, dtype=dtype, seed=seed + 1)
    q = randn(docs * new, hq, d, dtype=dtype, seed=seed + 2)
    index = dict(dtype=torch.int64, device=DEVICE)
    return (q, k, v, cu([docs * new]), torch.tensor([0], **index),
            torch.tensor([prefix], **index), prefix + own * torch.arange(docs, **index),
            torch.full((docs,), own_before, **index), cu([new] * docs))


def per_document_sdpa(q, k, v, prefix: int, docs: int, own_before: int, new: int, scale: float):
    """The generic baseline: each document attends to its own copy of [prefix; own keys] with
    one SDPA call over the batch (causal, bottom-right aligned), GQA heads expanded."""
    from torch.nn import functional as F
    from torch.nn.attention.bias import causal_lower_right

    own = own_before + new
    hq, hkv, d = q.shape[1], k.shape[1], k.shape[2]
    own_k = k[prefix:].view(docs, own, hkv, d)
    own_v = v[prefix:].view(docs, own, hkv, d)
    kd = torch.cat([k[:prefix][None].expand(docs, -1, -1, -1), own_k], 1)
    vd = torch.cat([v[:prefix][None].expand(docs, -1, -1, -1), own_v], 1)
    kd = kd.repeat_interleave(hq // hkv, 2).transpose(1, 2).contiguous()
    vd = vd.repeat_interleave(hq // hkv, 2).transpose(1, 2).contiguous()
    qd = q.view(docs, new, hq, d).transpose(1, 2).contiguous()
    mask = causal_lower_right(new, prefix + own)

    def run():
        return F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=scale)

    return run


def full_logits_head(hidden, weight, ids):
    """The generic score read: full lm_head logits, log-softmax, gather, argmax."""
    logits = hidden @ weight.T
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(1, ids[None].expand(hidden.shape[0], -1)), logits.argmax(-1)


def shared_prefix_attention(q, k, v, group_cu, prefix_start, prefix_len, own_base, own_start,
                            q_cu, *, impl: str, max_q_tokens: int, max_own_len: int):
    """erank_fast's shared-prefix attention as the engine runs it (prefix part, then own part
    merged by LSE), as a callable for benchmarks."""
    from erank_fast.ops.prefix_attention import prefix_attention
    from erank_fast.ops.suffix_attention import suffix_attention

    scale = q.shape[-1] ** -0.5

    def run():
        out_p, lse_p = prefix_attention(q, k, v, group_cu, prefix_start, prefix_len, scale,
                                        impl=impl, max_q_tokens=q.shape[0])
        return suffix_attention(q, k, v, own_base, own_start, q_cu, out_p, lse_p, scale,
                                impl=impl, max_q_tokens=max_q_tokens, max_own_len=max_own_len)

    return run
