"""Every benchmark runs: `pytest bench/ --benchmark-disable` at the smallest cases
(ERANK_BENCH_SMOKE=1), so a broken call or signature in bench/ fails CI. Triton-only benchmarks
skip without CUDA, each with its one-line reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_benchmark_runs_once():
    pytest.importorskip("pytest_benchmark")
    env = {**os.environ, "ERANK_BENCH_SMOKE": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "bench/", "--benchmark-disable",
                           "-p", "no:cacheprovider", "-rs"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout.splitlines()[-1]
