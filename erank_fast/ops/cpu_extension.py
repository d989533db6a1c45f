"""erank_fast's C++ CPU kernels (``ops/csrc``), built on first use by
``torch.utils.cpp_extension`` for this machine (``-O3 -march=native``, OpenMP) and cached in
``$ERANK_FAST_CACHE/torch_extensions`` (default ``~/.cache/erank_fast``) under a name that
changes with the source, its location, the CPU and torch, so a different machine, version or
install builds its own. The first build takes ~30 s on 2 cores and happens when an engine is
made on CPU (at load, so a server is ready only once they are built, and no call pays for it);
where no compiler is found, or ``ERANK_FAST_CPU_KERNELS=0``, the PyTorch paths run instead (a
warning says so once)."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger("erank_fast")
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / name for name in ("bindings.cpp", "decode_attention.cpp",
                                    "shared_prefix_attention.cpp",
                                    "shared_prefix_attention_brgemm.cpp", "rotary.cpp",
                                    "rms_norm.cpp", "int8_rows.cpp", "int8_few_rows.cpp",
                                    "small_linear.cpp",
                                    "tile_linear.cpp", "vocab_head.cpp", "arena_write.cpp",
                                    "decoder_layer.cpp")]
HEADERS = [CSRC / "erank_cpu.h", CSRC / "shared_prefix_attention_portable.h",
           CSRC / "shared_prefix_attention_portable_decode.h",
           CSRC / "avx512_exp2.h", CSRC / "exp2_series.h", CSRC / "avx512_bf16.h",
           CSRC / "linear_epilogue.h",
           CSRC / "next_block_prefetch.h", CSRC / "avx512_transpose.h",
           CSRC / "int8_attention.h"]


@functools.cache
def cpu_kernels():
    """The compiled operators (``torch.ops.erank_fast_cpu``), or None when they cannot be had
    (then the PyTorch paths run)."""
    if os.environ.get("ERANK_FAST_CPU_KERNELS", "1") == "0":
        return None
    from erank_fast.cpu import cpu_info
    from erank_fast.models.loading import cache_root

    key = hashlib.sha1()
    for path in SOURCES + HEADERS:
        key.update(path.read_bytes())
    # The sources' location too: torch rebuilds whenever the build file's source paths change,
    # so two installs sharing the cache would otherwise rebuild each other's (~30 s per load).
    key.update(f"{cpu_info()['model']}|{cpu_info()['flags']}|{torch.__version__}|{CSRC}".encode())
    name = f"erank_fast_cpu_{key.hexdigest()[:12]}"
    build = cache_root() / "torch_extensions" / name
    try:
        from torch.utils.cpp_extension import load

        build.mkdir(parents=True, exist_ok=True)
        cached = (build / f"{name}.so").is_file()
        if not cached:
            log.info("building erank_fast's CPU kernels for this machine (once; ~30 s on 2 cores)")
        started = time.perf_counter()
        load(name, [str(p) for p in SOURCES], build_directory=str(build),
             extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno"],
             extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
        if not cached:
            log.info("erank_fast's CPU kernels built in %.1f s (%s)", time.perf_counter() - started,
                     build)
        return torch.ops.erank_fast_cpu
    except Exception as error:  # no compiler, no ninja, a failed build: the PyTorch paths run
        log.warning("erank_fast's CPU kernels could not be built (%s: %s); using the PyTorch "
                    "paths", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
        return None
