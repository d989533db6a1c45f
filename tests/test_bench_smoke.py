"""Every benchmark runs: `pytest bench/ --benchmark-disable` at the smallest cases
(ERANK_BENCH_SMOKE=1), so a broken call or signature in bench/ fails CI. Triton-only benchmarks
skip without CUDA, each with its one-line reason."""

from __future__ import annotations

import json
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


def test_bf16_cpu_check_names_the_cpu_and_its_choice(tmp_path):
    """bench/bf16_cpu_check.sh's first step, then its plan (PLAN_ONLY): it runs on any CPU and
    stops, saying so, where the CPU check picks float32."""
    env = {**os.environ, "PLAN_ONLY": "1", "OUT": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "bench/bf16_cpu_check.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    written = list(tmp_path.glob("*-bf16-check-cpu-*.json"))  # dated, named by the CPU
    assert len(written) == 1, written
    facts = json.loads(written[0].read_text())
    assert facts["matmul_gflops"]["float32"] > 0 and facts["cpu"]["cores"] >= 1
    chosen = [line.split()[2] for line in done.stdout.splitlines()
              if line.startswith("dtype chosen:")]
    assert chosen in (["float32"], ["bfloat16"])
    expected = "plan: tolerance test" if chosen == ["bfloat16"] else "the default stays float32"
    assert expected in done.stdout
