"""Packaging a trained LoRA adapter as a named reranker: float16 weights, a minimal peft config,
and the settings it was trained with (``erank_fast/models/packaged.py`` reads them)."""

from __future__ import annotations

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
