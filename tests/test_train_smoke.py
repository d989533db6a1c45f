"""CI smoke runs of the real launch path: ``DS_ACCELERATOR=cpu deepspeed --num_gpus 1
train/sft.py`` and ``train/rl.py`` with ZeRO-2 on a tiny Qwen3 with the real Qwen3 tokenizer,
a few steps each on DL21 data: finite losses, checkpoints written, a resumed run continuing
from one; plus one ZeRO-3 run."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    shutil.which("deepspeed") is None or any(
        __import__("importlib").util.find_spec(m) is None for m in ("trl", "peft", "datasets")),
    reason="training extras are not installed (pip install -e '.[train]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: str, *args: str) -> str:
    env = dict(os.environ, DS_ACCELERATOR="cpu", TRL_EXPERIMENTAL_SILENCE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("TRITON_INTERPRET", None)
    port = _free_port()
    cmd = [shutil.which("deepspeed"), "--master_port", str(port), "--num_gpus", "1",
           f"train/{script}", *args, "--bf16", "false", "--report_to", "none"]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        _remove_shared_memory_buffers(port)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _remove_shared_memory_buffers(port: int) -> None:
    """DeepSpeed's CPU accelerator leaves a 66 MB all-reduce buffer per run in /dev/shm, named
    after the master port; a test suite of runs would fill the machine's shared memory."""
    for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
        path.unlink(missing_ok=True)


def _log_history(output_dir: Path) -> list[dict]:
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]


@pytest.fixture(scope="module")
def tiny_dir(qwen_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3")
    make_tiny_model("qwen3", len(qwen_tokenizer)).save_pretrained(path)
    qwen_tokenizer.save_pretrained(path)
    return path


def _data_args(data_dir):
    return ["--data", str(data_dir / "dl21-bm25-top100.jsonl"),
            "--qrels", str(data_dir / "dl21-bm25-top100.qrels")]


def _train_then_resume(out: Path, common: list[str]) -> list[dict]:
    """sft.py for 2 steps (checkpoint at 2), then resumed to step 3; the logged steps."""
    _launch("sft.py", *common, "--max_steps", "2")
    assert (out / "checkpoint-2").is_dir() and (out / "adapter_model.safetensors").is_file()
    _launch("sft.py", *common, "--max_steps", "3", "--resume", "true")
    assert (out / "checkpoint-3").is_dir()
    steps = [h for h in _log_history(out) if "loss" in h]
    assert steps and steps[-1]["step"] == 3
    return steps


def test_sft_zero2_checkpoint_and_resume(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "sft"
    common = ["--config", "train/configs/sft.yaml", "--model", str(tiny_dir), *_data_args(data_dir),
              "--max_queries", "2", "--docs_per_query", "4", "--output_dir", str(out),
              "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
              "--save_steps", "2", "--logging_steps", "1"]
    steps = _train_then_resume(out, common)
    assert all(math.isfinite(h["loss"]) for h in steps)


def test_sft_zero3(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "sft3"
    _launch("sft.py", "--config", "train/configs/sft.yaml", "--model", str(tiny_dir),
            *_data_args(data_dir), "--max_queries", "1", "--docs_per_query", "2",
            "--output_dir", str(out), "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--max_steps", "1", "--save_steps", "1",
            "--logging_steps", "1", "--use_lora", "false",
            "--deepspeed", "train/configs/zero3.json")
    losses = [h["loss"] for h in _log_history(out) if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)


def test_sft_listwise_zero2_checkpoint_and_resume(tiny_dir, data_dir, tmp_path):
    """--objective listwise: whole queries per batch, both loss terms logged, resumable; with
    pseudo-query groups and LoRA on the upper decoder layer only."""
    from safetensors.torch import load_file

    from erank_fast.evaluation.trec import read_jsonl

    first = read_jsonl(data_dir / "dl21-bm25-top100.jsonl")[0]
    pseudo = tmp_path / "pseudo.jsonl"
    pseudo.write_text(json.dumps({"qid": first.qid, "docid": first.candidates[5].docid,
                                  "query": "what does this passage say"}) + "\n")
    out = tmp_path / "listwise"
    common = ["--config", "train/configs/sft.yaml", "--model", str(tiny_dir),
              *_data_args(data_dir), "--objective", "listwise", "--max_queries", "3",
              "--docs_per_query", "4", "--positives", "2", "--output_dir", str(out),
              "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
              "--save_steps", "2", "--logging_steps", "1", "--pseudo_queries", str(pseudo),
              "--lora_layers_from", "1"]
    steps = _train_then_resume(out, common)
    assert all(math.isfinite(h["loss_pairwise"]) and math.isfinite(h["loss_pointwise"])
               for h in steps)
    adapted = load_file(out / "adapter_model.safetensors")
    assert adapted and all(".layers.1." in k for k in adapted)


def test_sft_listwise_keeps_training_an_adapter(tiny_dir, data_dir, tmp_path):
    """--adapter A --train_adapter true: the listwise run trains A itself (same tensors, with
    its own rank and layers) and saves an adapter of the base model again."""
    import peft
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), peft.LoraConfig(
        r=2, lora_alpha=4, target_modules="all-linear")).save_pretrained(adapter)
    out = tmp_path / "listwise-adapter"
    _launch("sft.py", "--config", "train/configs/sft.yaml", "--model", str(tiny_dir),
            *_data_args(data_dir), "--objective", "listwise", "--max_queries", "2",
            "--docs_per_query", "4", "--positives", "2", "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
            "--max_steps", "2", "--learning_rate", "1e-2", "--logging_steps", "1",
            "--adapter", str(adapter), "--train_adapter", "true")
    before = load_file(adapter / "adapter_model.safetensors")
    after = load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 2


def test_rl_zero2_rollouts_on_the_engine(tiny_dir, data_dir, tmp_path):
    out = tmp_path / "rl"
    _launch("rl.py", "--config", "train/configs/rl.yaml", "--model", str(tiny_dir),
            *_data_args(data_dir), "--max_queries", "2", "--docs_per_query", "4",
            "--num_generations", "2", "--per_device_train_batch_size", "8",
            "--gradient_accumulation_steps", "1", "--max_completion_length", "6",
            "--max_steps", "2", "--save_steps", "1", "--logging_steps", "1",
            "--output_dir", str(out), "--reference", "model")
    history = _log_history(out)
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 2 and all(math.isfinite(h["loss"]) for h in steps)
    assert all("unparseable_fraction" in h and "kl" in h for h in steps)


def test_rl_think_off_keeps_training_an_adapter(tiny_dir, data_dir, tmp_path):
    """--think off --adapter A --train_adapter true: rollouts are scores drawn from the digits,
    the adapter itself is trained (KL against it as loaded) and saved as an adapter again; a
    resumed run continues from the checkpoint."""
    import peft
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), peft.LoraConfig(
        r=2, lora_alpha=4, target_modules="all-linear")).save_pretrained(adapter)
    out = tmp_path / "rl-off"
    common = ["--config", "train/configs/rl.yaml", "--model", str(tiny_dir),
              *_data_args(data_dir), "--adapter", str(adapter), "--train_adapter", "true",
              "--think", "off", "--max_queries", "2", "--docs_per_query", "4",
              "--num_generations", "2", "--per_device_train_batch_size", "8",
              "--gradient_accumulation_steps", "1", "--max_completion_length", "2",
              "--learning_rate", "1e-2", "--save_steps", "1", "--logging_steps", "1",
              "--output_dir", str(out)]
    _launch("rl.py", *common, "--max_steps", "1")
    assert (out / "checkpoint-1").is_dir()
    _launch("rl.py", *common, "--max_steps", "2", "--resume", "true")
    steps = [h for h in _log_history(out) if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2]
    assert all(h["unparseable_fraction"] == 0 for h in steps)
    before = load_file(adapter / "adapter_model.safetensors")
    after = load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)
