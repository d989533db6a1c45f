"""Benchmarks: `pytest bench/ --benchmark-only`. CPU-sized shapes without CUDA, Qwen3-4B shapes
on a GPU; each records device, time, throughput and roofline fraction in extra_info."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
