"""Ahead-of-time compilation of every Triton kernel for NVIDIA GPUs, on any machine.

Triton's NVIDIA backend (shipped in its wheel with ``ptxas``, ``cuobjdump`` and ``nvdisasm``)
compiles for a target GPU without one being present. For each kernel, at the launch
configurations its launcher in ``erank_fast.ops`` really uses (the launchers' own constants),
for sm_80 / sm_90a and float16 / bfloat16, this reports registers per thread, spill bytes
(``ptxas -v``), shared memory, tensor-core instructions in the SASS (HMMA on sm_80; HGMMA or
HMMA on sm_90a) and compile time. ``erank-fast kernels`` prints it; tests/kernels/test_aot.py
checks it: every kernel compiles, nothing spills, shared memory fits, every ``tl.dot`` kernel
uses tensor cores.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field

# Per-block shared memory limits (opt-in maximum), bytes.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
# Model shapes the kernels are compiled for: (head_dim, query heads, KV heads, hidden, vocab).
SHAPES = {"qwen3-4b": (128, 32, 8, 2560, 151_936), "smollm2-135m": (64, 9, 3, 576, 49_152)}
DTYPES = {"float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class KernelCase:
    """One kernel at one launch configuration."""

    kernel: str                 # function name in erank_fast.kernels.<module>
    module: str
    shape: str                  # a key of SHAPES
    constexprs: dict
    pointers: dict              # pointer argument -> element type ("model" for the model dtype)
    num_warps: int = 4
    num_stages: int = 3
    uses_dot: bool = True

    @property
    def config(self) -> dict:
        return {**self.constexprs, "num_warps": self.num_warps, "num_stages": self.num_stages,
                "shape": self.shape}


@dataclass
class KernelRecord:
    kernel: str
    arch: int
    dtype: str
    config: dict
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    shared_limit: int | None = None
    tensor_core_instructions: int | None = None
    uses_dot: bool = True
    compile_seconds: float | None = None
    error: str | None = None
    notes: list = field(default_factory=list)

    def problems(self) -> list[str]:
        """What the checks object to (empty when the kernel is fine)."""
        if self.error:
            return [f"does not compile: {self.error}"]
        found = []
        if self.spill_bytes:
            found.append(f"spills {self.spill_bytes} bytes")
        if self.shared_bytes is not None and self.shared_bytes > self.shared_limit:
            found.append(f"needs {self.shared_bytes} B shared memory, over {self.shared_limit}")
        if self.uses_dot and not self.tensor_core_instructions:
            found.append("tl.dot lowered without tensor-core instructions")
        return found


def kernel_cases(shapes=tuple(SHAPES)) -> list[KernelCase]:
    """Every kernel at every configuration its launcher can choose for these model shapes."""
    from erank_fast.ops import prefix_attention as prefix
    from erank_fast.ops import score_head as head
    from erank_fast.ops import suffix_attention as suffix
    from erank_fast.ops.dispatch import block_d, next_power_of_2

    cases = []
    for shape in shapes:
        d, hq, hkv, _, _ = SHAPES[shape]
        group = hq // hkv
        common = dict(HEAD_DIM=d, BLOCK_D=block_d(d))
        cases.append(KernelCase(
            "_prefix_attention_kernel", "prefix_attention", shape,
            dict(GROUP=group, BLOCK_M=prefix.BLOCK_M, BLOCK_N=prefix.BLOCK_N, **common),
            {"lse_ptr": "fp32", "q_cu_ptr": "i64", "kv_start_ptr": "i64", "kv_len_ptr": "i64"},
            num_warps=prefix.NUM_WARPS, num_stages=prefix.NUM_STAGES))
        # Prefill: BLOCK_M follows the longest document's rows × group, 16 .. 64.
        for block_m in sorted({min(64, max(16, next_power_of_2(n * group))) for n in (1, 4, 64)}):
            cases.append(KernelCase(
                "_suffix_attention_kernel", "suffix_attention", shape,
                dict(GROUP=group, BLOCK_M=block_m, BLOCK_N=suffix.BLOCK_N, **common),
                {"own_base_ptr": "i64", "own_start_ptr": "i64", "q_cu_ptr": "i64",
                 "pre_lse_ptr": "fp32"},
                num_warps=suffix.NUM_WARPS, num_stages=suffix.NUM_STAGES))
        cases.append(KernelCase(
            "_suffix_attention_split_kernel", "suffix_attention", shape,
            dict(GROUP=group, BLOCK_M=max(16, next_power_of_2(group)), BLOCK_N=suffix.BLOCK_N,
                 **common),
            {"own_base_ptr": "i64", "own_start_ptr": "i64", "part_out_ptr": "fp32",
             "part_lse_ptr": "fp32"},
            num_warps=suffix.NUM_WARPS, num_stages=suffix.NUM_STAGES))
        for splits in (2, 64):  # SPLITS is a constexpr: the smallest and the largest plan
            cases.append(KernelCase(
                "_merge_splits_kernel", "suffix_attention", shape, dict(SPLITS=splits, **common),
                {"part_out_ptr": "fp32", "part_lse_ptr": "fp32", "pre_lse_ptr": "fp32"},
                uses_dot=False))
        cases.append(KernelCase(
            "_score_head_kernel", "score_head", shape,
            dict(BLOCK_B=head.BLOCK_B, BLOCK_V=head.BLOCK_V, BLOCK_H=head.BLOCK_H),
            {"part_max_ptr": "fp32", "part_arg_ptr": "i32", "part_sum_ptr": "fp32"},
            num_warps=head.NUM_WARPS, num_stages=head.NUM_STAGES))
    return cases


# Integer arguments whose runtime value is not a multiple of 16 in general (row counts, and
# strides of [splits, tokens, heads] or [rows] buffers); per-head strides of log-sum-exp
# buffers are the query-head count, a multiple of 16 only for some models.
_UNALIGNED_INTS = {"rows", "stride_part_s", "stride_pl_s"}
_HEAD_COUNT_STRIDES = {"stride_lse_n", "stride_pre_lse_n", "stride_pl_n"}


def _signature(fn, case: KernelCase, dtype: str) -> tuple[dict, dict, dict]:
    """The types, constants and alignment facts the JIT would specialise a launch on:
    tensors (torch allocations) are 16-byte aligned; integers that are multiples of 16 at
    run time (head_dim-sized strides, vocabulary and hidden sizes, split lengths) are
    marked divisible, as the launcher's arguments would be."""
    constexprs = dict(case.constexprs)
    if "PRECISION" in fn.arg_names:
        constexprs["PRECISION"] = "tf32"  # half-precision inputs: tensor-core dots either way
    heads = SHAPES[case.shape][1]
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            kind = case.pointers.get(name, "model")
            signature[name] = "*" + (DTYPES[dtype] if kind == "model" else kind)
            aligned = True
        elif name.startswith("scale"):
            signature[name] = "fp32"
            aligned = False
        else:
            signature[name] = "i32"
            aligned = (name not in _UNALIGNED_INTS
                       and (name not in _HEAD_COUNT_STRIDES or heads % 16 == 0))
        if aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def compile_case(case: KernelCase, arch: int, dtype: str) -> KernelRecord:
    """Compile one case for ``arch`` (80 or 90) and ``dtype``; a failure is a record with
    ``error``, never an exception."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    record = KernelRecord(case.kernel, arch, dtype, case.config, uses_dot=case.uses_dot,
                          shared_limit=SHARED_LIMIT[arch])
    try:
        fn = getattr(importlib.import_module(f"erank_fast.kernels.{case.module}"), case.kernel)
        signature, constexprs, attrs = _signature(fn, case, dtype)
        start = time.perf_counter()
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                                            attrs=attrs),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": case.num_warps,
                                           "num_stages": case.num_stages})
        record.compile_seconds = round(time.perf_counter() - start, 2)
        record.shared_bytes = int(compiled.metadata.shared)
        tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        with tempfile.TemporaryDirectory() as tmp:
            cubin, ptx = os.path.join(tmp, "k.cubin"), os.path.join(tmp, "k.ptx")
            with open(cubin, "wb") as f:
                f.write(compiled.asm["cubin"])
            with open(ptx, "w") as f:
                f.write(compiled.asm["ptx"])
            usage = _run(os.path.join(tools, "cuobjdump"), "-res-usage", cubin)
            sass = _run(os.path.join(tools, "cuobjdump"), "-sass", cubin)
            gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
            ptxas = _run(get_ptxas(arch).path, f"-arch={gpu}", "-v", ptx,
                         "-o", os.path.join(tmp, "v.cubin"))
        record.registers = int(re.search(r"REG:(\d+)", usage).group(1))
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
        record.spill_bytes = sum(int(s) + int(ld) for s, ld in spills)
        ops = r"\bHGMMA\b|\bHMMA\b" if arch >= 90 else r"\bHMMA\b"
        record.tensor_core_instructions = len(re.findall(ops, sass))
    except Exception as e:  # reported, not raised: one bad kernel must not hide the others
        record.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}"
    return record


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def _compile_star(args) -> KernelRecord:
    return compile_case(*args)


def _compiler_process() -> None:
    # The Triton interpreter (TRITON_INTERPRET=1, e.g. in the CPU test suite) replaces compiled
    # kernels; workers start fresh (spawned) and compile for real.
    os.environ.pop("TRITON_INTERPRET", None)


def compile_all(archs=(80, 90), dtypes=tuple(DTYPES), shapes=tuple(SHAPES),
                processes: int | None = None, cases: list[KernelCase] | None = None
                ) -> list[KernelRecord]:
    """Every case × arch × dtype, compiled in fresh worker processes (one per core by
    default), in order."""
    import multiprocessing

    jobs = [(c, a, d) for c in (cases or kernel_cases(shapes)) for a in archs for d in dtypes]
    processes = processes or os.cpu_count() or 1
    with concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_compiler_process) as pool:
        return list(pool.map(_compile_star, jobs))


def format_table(records: list[KernelRecord]) -> str:
    head = (f"{'kernel':<32}{'arch':>6}{'dtype':>10}{'shape':>14}{'config':>22}{'regs':>6}"
            f"{'spill':>7}{'shared':>9}{'tc ops':>8}{'s':>7}  status")
    lines = [head, "-" * len(head)]
    for r in records:
        c = r.config
        config = " ".join(f"{k[6:] if k.startswith('BLOCK_') else k}={v}" for k, v in c.items()
                          if k.startswith("BLOCK_") and k != "BLOCK_D" or k == "SPLITS")
        config += f" w{c['num_warps']}s{c['num_stages']}"
        status = "; ".join(r.problems()) or "ok"
        lines.append(f"{r.kernel:<32}{'sm_' + str(r.arch) + ('a' if r.arch == 90 else ''):>6}"
                     f"{r.dtype:>10}{c['shape']:>14}{config:>22}{_n(r.registers):>6}"
                     f"{_n(r.spill_bytes):>7}{_n(r.shared_bytes):>9}"
                     f"{_n(r.tensor_core_instructions):>8}{_n(r.compile_seconds):>7}  {status}")
    return "\n".join(lines)


def _n(value) -> str:
    return "-" if value is None else str(value)


def records_json(records: list[KernelRecord]) -> list[dict]:
    return [asdict(r) for r in records]
