#!/usr/bin/env bash
# The one check for a CPU with fast bfloat16 (AMX, or AVX512-BF16 where bf16 matmuls run at least
# 2x float32): the figures only such a CPU can give, in one call, alone on the machine.
#   bash bench/bf16_cpu_check.sh                 # ~1 hour on 2 cores, both peers installed
#   PLAN_ONLY=1 bash bench/bf16_cpu_check.sh     # the CPU, the dtype chosen here, the plan
# 1. the CPU, its float32 and bfloat16 matmul rates and the dtype erank_fast chooses; on an AMX
#    CPU also with AMX hidden from oneDNN (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16: the fallback)
# 2. the bfloat16 tolerance test on SmolLM2-135M-Instruct's real weights (pytest -m slow)
# 3. `erank-fast eval --model erank-smol` on DL19 in bfloat16 and in float32: docs/s, and nDCG@10
#    (the bfloat16 path promises it within 0.005 of float32)
# 4. the peers table (bench/peers/README.md), think off and 64: every system whose venv exists
# Where the CPU check picks float32 it says so and stops: nothing here would measure the fast path.
# Results (JSON, logs, plots) go to $OUT (default bench/results); $DATA is the TREC data folder.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
DATA=${DATA:-../shared/data}
PEERS=${PEERS:-erank_fast,erank_fast_fp32,vllm,vllm_fp32,llamacpp_bf16,llamacpp_f32,llamacpp_q8_0}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

capability() {  # prints the CPU facts as JSON; its last line: the chosen dtype, the CPU's slug
  python - <<'EOF'
import json
import torch
from erank_fast import cpu
info = cpu.cpu_info()
print(json.dumps({"cpu": info, "matmul_gflops": cpu.gemm_gflops(),
                  "torch": torch.__version__}, indent=1))
print("bfloat16" if cpu.default_cpu_dtype() == torch.bfloat16 else "float32", info["slug"])
EOF
}

echo "== 1. the CPU and the dtype chosen here =="
facts=$(capability) || exit 1
read -r dtype slug <<< "$(echo "$facts" | tail -n 1)"
day=$(date +%Y-%m-%d)
echo "$facts" | head -n -1 | tee "$OUT/$day-bf16-check-cpu-$slug.json"
echo "dtype chosen: $dtype ($slug)"
if grep -qw amx_bf16 /proc/cpuinfo; then
  echo "-- with AMX hidden from oneDNN"
  ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 capability | tail -n 1 | cut -d' ' -f1 | sed 's/^/dtype chosen without AMX: /'
fi
if [ "$dtype" != bfloat16 ]; then
  echo "this CPU multiplies bfloat16 less than 2x faster than float32: the default stays float32"
  echo "and there is no fast bfloat16 path to check here."
  exit 0
fi
if [ -n "${PLAN_ONLY:-}" ]; then
  echo "plan: tolerance test; DL19 eval in bfloat16 and float32 ($DATA); peers: $PEERS"
  exit 0
fi

echo "== 2. the bfloat16 tolerance test =="
timeout 1800 python -m pytest -q -m slow tests/test_bf16_tolerance.py 2>&1 | tail -5

echo "== 3. DL19 in bfloat16 and float32 =="
for d in bfloat16 float32; do
  timeout 3000 erank-fast eval --model erank-smol --dtype "$d" \
    --data "$DATA/dl19-bm25-top100.jsonl" --qrels "$DATA/dl19-bm25-top100.qrels" \
    --out "$OUT/$day-dl19-erank-smol-$d-$slug.json" 2>&1 | tail -3
done
bf16_json="$OUT/$day-dl19-erank-smol-bfloat16-$slug.json"
fp32_json="$OUT/$day-dl19-erank-smol-float32-$slug.json"
if [ -f "$bf16_json" ] && [ -f "$fp32_json" ]; then python - "$bf16_json" "$fp32_json" <<'EOF'
import json
import sys
bf16, fp32 = (json.load(open(p)) for p in sys.argv[1:])
for name, r in (("bfloat16", bf16), ("float32", fp32)):
    print(f"{name:9} {r['docs_per_second']:6.2f} docs/s  nDCG@10 {r['reranked']['ndcg@10']:.4f}"
          f"  hybrid {r['hybrid']['ndcg@10']:.4f}")
gap = bf16["reranked"]["ndcg@10"] - fp32["reranked"]["ndcg@10"]
print(f"bfloat16 - float32 nDCG@10: {gap:+.4f} ({'within' if abs(gap) <= 0.005 else 'OVER'} 0.005);"
      f" speed {bf16['docs_per_second'] / fp32['docs_per_second']:.2f}x")
EOF
else echo "an evaluation did not finish (its output is above): no comparison"; fi

echo "== 4. the peers =="
timeout 3600 python bench/peers/run_peers.py --data "$DATA/dl19-bm25-top100.jsonl" \
  --queries 3 --docs 100 --think off 64 --systems "$PEERS" --out "$OUT" 2>&1 | tail -30
