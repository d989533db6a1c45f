"""Checks of model files before they are loaded, so a wrong or damaged file is a clear error
naming the file and what is wrong (not a deep traceback, and never a half-loaded model)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

CHECKPOINT_HINT = "a checkpoint directory holds config.json, *.safetensors and the tokenizer files"


def check_checkpoint_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json ({CHECKPOINT_HINT})")
    try:
        config = json.loads((path / "config.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path / 'config.json'}: not a JSON object")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights ({CHECKPOINT_HINT})")
    for file in files:
        check_safetensors(file)


def check_safetensors(file: Path) -> None:
    """The header parses and the file holds every byte it promises (a truncated download or
    copy is caught here, not as a failed tensor read later)."""
    size = file.stat().st_size
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{file}: not a safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 * 2**20):
            raise ValueError(f"{file}: not a safetensors file, or truncated (its header claims "
                             f"{n} bytes; the file has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{file}: corrupt safetensors header ({e})") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
              default=0)
    if 8 + n + end > size:
        raise ValueError(f"{file}: truncated: its tensors need {8 + n + end} bytes, the file has "
                         f"{size}")


def check_gguf(file: Path) -> None:
    with file.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{file}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")


def check_chat_template(tokenizer, name: str) -> None:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"{name}: the tokenizer has no chat template (chat_template in tokenizer_config.json "
            "or chat_template.jinja): ERank prompts are the model's chat turn, so a tokenizer "
            "without its template would score prompts the model was never trained on")
