"""Loading models for training (float32 transformers models, LoRA placement, adapters), the
train-then-save step every trainer ends with, and the training precision."""

from __future__ import annotations


def load_float32_model(name: str):
    """(transformers causal LM in float32, tokenizer) from a checkpoint directory, a ``.gguf``
    or an offline name (``smollm2-135m-instruct``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from erank_fast.models.loading import resolve_model_path

    path = resolve_model_path(name) or name
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tokenizer


def load_policy(name: str, adapter: str | None = None, train_adapter: bool = False):
    """The model to train: ``adapter`` merged into it (every weight trainable, as without one),
    or, with ``train_adapter``, kept as a trainable LoRA adapter (a peft model)."""
    if train_adapter and not adapter:
        raise ValueError("train_adapter needs an adapter to continue training")
    model, tokenizer = load_float32_model(name)
    if adapter:
        from peft import PeftModel

        if train_adapter:
            model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        else:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            model.requires_grad_(True)  # peft froze the base weights it was loaded on
    return model, tokenizer


def lora_targets(model, layers_from: int) -> dict:
    """peft target arguments: every linear layer of the decoder, or only those of decoder
    layers ``layers_from`` and above (the frozen layers below need no backward pass)."""
    if layers_from == 0:
        return {"target_modules": "all-linear"}
    import torch

    layers = model.model.layers
    if not 0 < layers_from < len(layers):
        raise ValueError(f"lora_layers_from must be in 0..{len(layers) - 1}, got {layers_from}")
    names = sorted({name.rsplit(".", 1)[-1] for name, m in layers.named_modules()
                    if isinstance(m, torch.nn.Linear)})
    return {"target_modules": names, "layers_to_transform": list(range(layers_from, len(layers))),
            "layers_pattern": "layers"}


PRECISIONS = ("auto", "float32", "bf16")


def apply_precision(config, precision: str) -> str:
    """Set the trainer's mixed precision from ``precision`` and return what was chosen.

    ``"auto"``: bfloat16 autocast where this device runs it fast (a CUDA device with bf16, or a
    CPU where ``erank_fast.cpu.fast_bf16()`` measures bf16 matmuls at least 2x float32), float32
    otherwise. ``"bf16"`` and ``"float32"`` force it; ``"bf16"`` on a CPU that multiplies it
    slower than float32 is logged as a warning with both rates. It replaces the config's
    ``bf16`` (TRL defaults that to true, which a CPU-only setup refuses, so the configs parse
    with false); a config asking for ``fp16`` keeps it. Weights stay float32 (the optimizer's
    master copy)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    cuda = torch.cuda.is_available() and not getattr(config, "use_cpu", False)
    if config.fp16:
        return "fp16"
    if precision == "auto":
        if cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "float32"
        else:
            from erank_fast.cpu import fast_bf16

            precision = "bf16" if fast_bf16() else "float32"
    config.bf16 = precision == "bf16"
    if hasattr(config, "mixed_precision"):
        # transformers derives the Accelerator's mixed precision from bf16 when the arguments
        # are parsed; set after that, bf16 alone leaves autocast off (float32 in all but name)
        config.mixed_precision = "bf16" if config.bf16 else "no"
        if config.bf16 and getattr(config, "deepspeed_plugin", None) is not None:
            config.deepspeed_plugin.set_mixed_precision("bf16")
    if config.bf16 and not cuda:
        config.use_cpu = True  # transformers refuses bf16 on a CPU-only setup without it
        from erank_fast.cpu import warn_if_slower_than_float32

        warn_if_slower_than_float32(torch.bfloat16)
    return precision


def train_and_save(trainer, tokenizer, output_dir: str, resume: bool) -> None:
    """Train (from the last checkpoint in output_dir when resuming), then save the result."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = get_last_checkpoint(output_dir) if resume else None
    if resume and checkpoint is None:
        raise ValueError(f"resume: no checkpoint in {output_dir}")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
