"""Every Triton kernel compiled ahead of time for sm_80 and sm_90a with Triton's NVIDIA backend
(no GPU needed): it compiles for both archs and both half-precision dtypes at the launch
configurations the launchers use, nothing spills, shared memory fits the arch's per-block
limit, and every tl.dot kernel runs on tensor cores. A deliberately oversized configuration is
caught by the same checks."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("triton.backends.nvidia.compiler")

from erank_fast import aot  # noqa: E402


@pytest.fixture(scope="module")
def records():
    return aot.compile_all(archs=(80, 90))


def test_every_kernel_compiles_for_both_archs_and_dtypes(records):
    kernels = {c.kernel for c in aot.kernel_cases()}
    assert kernels == {"_prefix_attention_kernel", "_suffix_attention_kernel",
                       "_suffix_attention_split_kernel", "_merge_splits_kernel",
                       "_score_head_kernel"}
    seen = {(r.kernel, r.arch, r.dtype) for r in records}
    assert seen == {(k, a, d) for k in kernels for a in (80, 90) for d in aot.DTYPES}
    for r in records:
        assert r.error is None, f"{r.kernel} sm_{r.arch} {r.dtype} {r.config}: {r.error}"


def test_no_spills_shared_memory_fits_tensor_cores_used(records):
    problems = [f"{r.kernel} sm_{r.arch} {r.dtype} {r.config}: {'; '.join(r.problems())}"
                for r in records if r.problems()]
    assert not problems, "\n".join(problems)
    dots = [r for r in records if r.uses_dot]
    assert dots and all(r.tensor_core_instructions > 0 for r in dots)
    assert all(r.registers <= 255 and r.shared_bytes <= r.shared_limit for r in records)


def test_an_oversized_block_is_caught():
    """The same checks flag a configuration no launcher should use."""
    prefix = next(c for c in aot.kernel_cases(("qwen3-4b",))
                  if c.kernel == "_prefix_attention_kernel")
    huge = dataclasses.replace(prefix, constexprs={**prefix.constexprs, "BLOCK_M": 256,
                                                   "BLOCK_N": 256}, num_stages=4)
    (record,) = aot.compile_all(archs=(80,), dtypes=("bfloat16",), cases=[huge], processes=1)
    assert record.problems(), record
    assert record.error or record.spill_bytes or record.shared_bytes > record.shared_limit
