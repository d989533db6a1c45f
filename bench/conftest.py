"""Benchmarks: `pytest bench/ --benchmark-only`. CPU-sized shapes without CUDA, Qwen3-4B shapes
on a GPU (tests/kernels/kernel_cases.py holds both, and the baselines); each records device,
time, throughput and roofline fraction in extra_info. ERANK_BENCH_SMOKE=1 shrinks every case
(CI runs each benchmark once that way, with --benchmark-disable)."""

# the peers harness's work folder (workloads, and git worktrees of earlier commits for --before)
# holds copies of bench/ that are not this checkout's benchmarks
collect_ignore = ["peers/work"]

