"""A W8A8 int8 copy of a Hugging Face model directory, for vLLM's int8 system (``vllm_int8``):
llm-compressor's ``W8A8`` scheme (compressed-tensors format) on every decoder linear layer, the
output projection left in the model's dtype. Weights int8 with one scale per output channel,
rounded to nearest (no calibration data: the scheme's activations are quantised at run time, one
symmetric int8 scale per token), which is the arithmetic of erank_fast's ``quantize="int8"``, so
the two int8 systems are compared on the same rounding. Runs in its own venv (``setup.sh
llmcompressor``); made once per work folder by ``run_peers.py``:

    bench/peers/.venv-llmcompressor/bin/python bench/peers/w8a8_copy.py SOURCE_DIR TARGET_DIR
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main(source: Path, target: Path) -> None:
    if target.exists():  # only ever renamed from a finished copy
        print(f"{target} exists")
        return
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    oneshot(model=model,
            recipe=QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]))
    partial = target.with_name(target.name + ".partial")  # a killed run leaves no copy to trust
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, save_compressed=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(partial)
    partial.rename(target)
    print(f"W8A8 copy of {source} -> {target}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args()
    main(args.source, args.target)
