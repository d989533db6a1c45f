"""What this CPU is and which dtype it multiplies fastest, decided by measurement.

CPUs differ: with AMX (Intel Sapphire Rapids and later) bfloat16 matrix multiplies run ~8× faster
than float32; with AVX512-BF16 alone the gain ranges from none to several times (oneDNN's
kernels differ by core); without either, bfloat16 is slower than float32. So the choice is made
by a short GEMM check at the model's shapes, not by a flag list: ``fast_bf16()`` is True when a
bfloat16 matmul beats float32 by at least ``BF16_MIN_SPEEDUP`` on this machine, as the process
sees it (thread count, ``ONEDNN_MAX_CPU_ISA``). The check runs once per process and takes
~50 ms where both dtypes have kernels, ~0.3 s where bfloat16 has none (it is then emulated at
~1 GFLOP/s, and one small multiply is enough to tell).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import time

import torch

log = logging.getLogger("erank_fast")

BF16_MIN_SPEEDUP = 2.0
# M × K × N of the check: a few hundred tokens through a SmolLM2-sized MLP projection.
CHECK_SHAPE = (512, 576, 1536)
# A first, small multiply: a dtype this slow (under ~5 GFLOP/s at PROBE_ROWS rows; bfloat16
# without bf16 kernels runs at ~1 here) is not timed at CHECK_SHAPE, which would take seconds.
PROBE_ROWS = 64
SLOW_PROBE_SECONDS = 0.02
FLAGS_OF_INTEREST = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512f", "avx512_vnni",
                     "avx_vnni", "avx2")


@functools.cache
def cpu_info() -> dict:
    """Model name (with its family and model numbers, which tell apart CPUs that report one
    name, such as a KVM guest's "AMD EPYC"), core count, the vector/matrix flags that matter
    here, and a short slug (for result file names)."""
    model, flags, family = platform.processor() or platform.machine(), set(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            model = m.group(1).strip()
        if m := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
            flags = set(m.group(1).split())
        numbers = [re.search(rf"^{key}\s*:\s*(\d+)$", text, re.M) for key in ("cpu family", "model")]
        if all(numbers):
            family = f"f{numbers[0].group(1)}m{numbers[1].group(1)}"
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    present = [f for f in FLAGS_OF_INTEREST if f in flags]
    isa = "amx" if "amx_bf16" in flags else "avx512bf16" if "avx512_bf16" in flags else \
        "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else platform.machine()
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    return {"model": model, "family_model": family, "cores": cores, "flags": present,
            "torch_threads": torch.get_num_threads(),
            "slug": "-".join(p for p in (slug, family, f"{cores}c", isa) if p)}


def _gflops(dtype: torch.dtype, repeats: int = 3) -> float:
    m, k, n = CHECK_SHAPE
    b = torch.randn(k, n).to(dtype)
    probe = torch.randn(PROBE_ROWS, k).to(dtype)
    probe @ b  # first call: kernel selection, packing buffers
    start = time.perf_counter()
    probe @ b
    took = time.perf_counter() - start
    if took > SLOW_PROBE_SECONDS:  # a dtype multiplied without its own kernels: one call tells
        return 2 * PROBE_ROWS * k * n / took / 1e9
    a = torch.randn(m, k).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


@functools.cache
def gemm_gflops() -> dict[str, float]:
    """Measured float32 and bfloat16 matmul GFLOP/s at ``CHECK_SHAPE`` (once per process)."""
    with torch.inference_mode():
        return {"float32": _gflops(torch.float32), "bfloat16": _gflops(torch.bfloat16)}


@functools.cache
def warn_if_slower_than_float32(dtype: torch.dtype) -> float:
    """For a dtype asked for explicitly on CPU: its measured matmul speed over float32's here,
    with a warning when it is below 1 (bfloat16 without bf16 units, float16 without fp16 ones:
    PyTorch then multiplies it several times slower than float32). Once per dtype and process."""
    if dtype == torch.float32:
        return 1.0
    rates = gemm_gflops()
    with torch.inference_mode():
        rate = rates["bfloat16"] if dtype == torch.bfloat16 else _gflops(dtype)
    ratio = rate / rates["float32"]
    if ratio < 1.0:
        name = str(dtype).removeprefix("torch.")
        log.warning("%s was asked for, but this CPU (%s) multiplies it at %.0f GFLOP/s against "
                    "float32's %.0f (%.2fx): the model will run slower than in float32, which "
                    "'auto' picks here", name, cpu_info()["model"], rate, rates["float32"],
                    ratio)
    return ratio


@functools.cache
def fast_bf16() -> bool:
    """True when this CPU multiplies bfloat16 at least BF16_MIN_SPEEDUP× faster than float32."""
    rates = gemm_gflops()
    speedup = rates["bfloat16"] / rates["float32"]
    choice = speedup >= BF16_MIN_SPEEDUP
    log.info("CPU %s: bfloat16 matmul %.0f GFLOP/s, float32 %.0f (%.1fx): %s by default",
             cpu_info()["model"], rates["bfloat16"], rates["float32"], speedup,
             "bfloat16" if choice else "float32")
    return choice


def default_cpu_dtype() -> torch.dtype:
    """bfloat16 where this CPU multiplies it fast (``fast_bf16``), else float32."""
    return torch.bfloat16 if fast_bf16() else torch.float32


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# Blocks up to this size come from the heap, not from fresh mappings (glibc's maximum, 32 MiB
# on 64-bit); freed memory goes back to the system only beyond KEEP_FREED.
MMAP_THRESHOLD = 32 << 20
KEEP_FREED = 1 << 30
TOP_PAD = 64 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse the memory of freed tensors instead of mapping fresh pages.

    A forward pass allocates and frees megabytes of activations per layer; by default glibc
    serves blocks above its (adaptive) mapping threshold from new mappings and gives them back
    on free, so layers first-touch (page-fault) their outputs again: on a 2-core KVM Xeon this
    was half the time of the MLP's GEMMs (bfloat16, 2048 rows: 2.76 s instead of 1.38 s over
    three 100-document calls). Process-wide, once, at the first CPU engine; a no-op where the C
    library is not glibc, and ``ERANK_FAST_KEEP_FREED=0`` leaves malloc as it is. Returns
    whether the settings were applied."""
    if os.environ.get("ERANK_FAST_KEEP_FREED", "1") == "0" or platform.system() != "Linux":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, KEEP_FREED),
        (_M_TOP_PAD, TOP_PAD)))
    log.info("malloc keeps freed memory (blocks up to %d MiB from the heap, %d MiB kept): %s",
             MMAP_THRESHOLD >> 20, KEEP_FREED >> 20, applied)
    return applied
