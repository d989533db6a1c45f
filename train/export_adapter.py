"""Turn a trained LoRA adapter into a packaged erank_fast reranker directory.

    python train/export_adapter.py runs/erank-smol erank_fast/models/erank_smol \\
        --base smollm2-135m-instruct --score-mode expected --max-doc-tokens 256 \\
        --recipe train/RESULTS.md

Writes adapter_model.safetensors (float16: half the size, well within LoRA's precision),
a minimal peft-compatible adapter_config.json, and erank_fast.json (the base model and the
reranker settings the adapter was trained for; see erank_fast/models/packaged.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from erank_fast.models.lora import CONFIG_FILE, WEIGHTS_FILE, read_adapter
from erank_fast.models.packaged import SETTINGS_FILE

CONFIG_KEYS = ("peft_type", "task_type", "r", "lora_alpha", "target_modules", "use_rslora")


def export(source: str | Path, target: str | Path, *, base: str, think="off",
           score_mode: str = "expected", extra: dict | None = None) -> Path:
    config, tensors = read_adapter(source)  # refuses what erank_fast cannot merge
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in sorted(tensors.items())},
              str(target / WEIGHTS_FILE))
    minimal = {k: config[k] for k in CONFIG_KEYS if k in config}
    minimal.update(base_model_name_or_path=base, bias="none", lora_dropout=0.0,
                   fan_in_fan_out=False, use_dora=False, inference_mode=True)
    if isinstance(minimal.get("target_modules"), list):
        minimal["target_modules"] = sorted(minimal["target_modules"])
    (target / CONFIG_FILE).write_text(json.dumps(minimal, indent=1) + "\n", encoding="utf-8")
    settings = {"base": base, "think": think, "score_mode": score_mode, **(extra or {})}
    (target / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="adapter directory written by train/sft.py or train/rl.py")
    parser.add_argument("target", help="packaged reranker directory to write")
    parser.add_argument("--base", required=True, help="offline name of the base model")
    parser.add_argument("--think", default="off")
    parser.add_argument("--score-mode", default="expected", choices=["erank", "expected"])
    parser.add_argument("--max-doc-tokens", type=int, default=None,
                        help="the document truncation the adapter was trained with")
    parser.add_argument("--recipe", default=None, help="where the training run is recorded")
    args = parser.parse_args(argv)
    think = args.think if args.think in ("off", "full") else int(args.think)
    extra = {}
    if args.max_doc_tokens is not None:
        extra["max_doc_tokens"] = args.max_doc_tokens
    if args.recipe:
        extra["recipe"] = args.recipe
    out = export(args.source, args.target, base=args.base, think=think,
                 score_mode=args.score_mode, extra=extra)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"wrote {out} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
