"""Device facts for roofline fractions (dense bf16/fp16 peak and memory bandwidth)."""

from __future__ import annotations

import platform
import time

import torch

# name fragment -> (peak dense bf16 FLOP/s, memory bytes/s), vendor datasheet figures.
_GPUS = {
    "H200": (989e12, 4.8e12),
    "H100": (989e12, 3.35e12),
    "A100": (312e12, 2.0e12),
    "L40S": (362e12, 0.864e12),
}

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name() -> str:
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peaks() -> tuple[float | None, float | None]:
    """(FLOP/s, bytes/s) of this device, or (None, None) when unknown (CPU)."""
    if DEVICE.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name()
    for key, value in _GPUS.items():
        if key in name:
            return value
    return None, None


def roofline_info(seconds: float, flops: float, bytes_moved: float) -> dict:
    """extra_info entries: achieved TFLOP/s and GB/s, and the fraction of the roofline floor."""
    peak_flops, peak_bw = peaks()
    info = {"device": device_name(), "torch": torch.__version__, "seconds": seconds,
            "tflops": flops / seconds / 1e12, "gbps": bytes_moved / seconds / 1e9}
    if peak_flops:
        floor = max(flops / peak_flops, bytes_moved / peak_bw)
        info["roofline_floor_s"] = floor
        info["roofline_fraction"] = floor / seconds
    return info


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def bench(benchmark, fn, rounds: int = 20, warmup: int = 3):
    """Time fn with the device synchronised; compilation/autotune stay in the warm-up."""

    def run():
        fn()
        sync()

    benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable (the CI smoke run): one untimed call
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    return benchmark.stats.stats.median
