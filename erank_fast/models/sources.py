"""From what the user passes (a name, a path, a transformers model) to weights and a tokenizer."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from erank_fast.models.decoder import Decoder
from erank_fast.models.file_checks import check_chat_template, check_checkpoint_dir
from erank_fast.models.loading import (
    decoder_from_hf_model,
    load_decoder,
    resolve_model_path,
)
from erank_fast.models.lora import merge_lora


@dataclass
class LoadedModel:
    """Exactly one of ``decoder`` / ``hf_model`` is needed by a backend; the other may be None."""

    tokenizer: object
    eos_ids: frozenset[int]
    decoder: Decoder | None = None
    hf_model: torch.nn.Module | None = None
    name: str = ""
    owns_weights: bool = True  # False: the caller's in-memory model, used in place


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA; on CPU bfloat16 where the CPU multiplies it fast (AMX, or a measured
    gain of at least 2x over float32: ``erank_fast.cpu.fast_bf16``), else float32. Pass
    ``dtype=torch.float32`` for the exact path."""
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu":
        from erank_fast.cpu import default_cpu_dtype

        return default_cpu_dtype()
    return torch.float32


DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype) -> torch.dtype | None:
    """A torch dtype, its name ("float32", "bfloat16", "float16"), or None / "auto" (the
    device's default, ``default_dtype``) -> a torch dtype or None."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_NAMES)} or 'auto', got {dtype!r}")
        return DTYPE_NAMES[name]
    if dtype not in DTYPE_NAMES.values():
        raise ValueError(f"dtype must be one of {sorted(DTYPE_NAMES)} or 'auto', got {dtype!r}")
    return dtype


def eos_ids(tokenizer, generation_config) -> frozenset[int]:
    """Every id generation stops at: the generation config's end-of-sequence ids (one or a list)
    and the tokenizer's. Inference and RL rollouts both stop on exactly these."""
    ids = set()
    eos = getattr(generation_config, "eos_token_id", None) if generation_config else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def load_tokenizer(source):
    """``AutoTokenizer.from_pretrained(source)``. For a local checkpoint whose
    ``tokenizer_config.json`` names its tokenizer class (and brings no code of its own),
    AutoTokenizer is handed ``config.json``'s values instead of loading the model's config class,
    whose import pulls ``torch.distributed`` (~2 s of a cold start); given a named class and no
    remote code, AutoTokenizer reads only the config's ``model_type``, ``model_name`` and
    ``_name_or_path``, so the tokenizer is the same."""
    from transformers import AutoTokenizer, PreTrainedConfig

    declared, raw = (_json_object(Path(source) / name)
                     for name in ("tokenizer_config.json", "config.json"))
    if declared and raw and declared.get("tokenizer_class") and "auto_map" not in declared:
        return AutoTokenizer.from_pretrained(source, config=PreTrainedConfig.from_dict(raw))
    return AutoTokenizer.from_pretrained(source)  # which also says what is wrong with a file


def _json_object(file: Path) -> dict | None:
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _generation_config(path):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None


def _merge_adapter(hf_model, adapter):
    return merge_lora(hf_model, adapter).eval()


def _in_memory_model(model, tokenizer, need: str, dtype, adapter) -> LoadedModel:
    """An in-memory transformers model, used in place (an adapter is merged into a copy)."""
    from transformers import PreTrainedModel  # imported here only: it takes seconds

    if not isinstance(model, PreTrainedModel):
        raise TypeError("model must be a name, a local path or a transformers model, got "
                        f"{type(model).__name__}")
    if tokenizer is None:
        raise ValueError("pass tokenizer=... together with an in-memory transformers model")
    if dtype is not None and dtype != model.dtype:
        raise ValueError(f"the model is {model.dtype}; cast it before passing it, or pass "
                         "dtype=None")
    if adapter is not None:  # merged into a copy: the caller's model stays as it was
        model = _merge_adapter(copy.deepcopy(model), adapter)
    check_chat_template(tokenizer, type(model).__name__)
    decoder = decoder_from_hf_model(model) if need == "decoder" else None
    return LoadedModel(tokenizer, eos_ids(tokenizer, model.generation_config), decoder, model,
                       name=type(model).__name__, owns_weights=adapter is not None)


def load_model(model, *, tokenizer=None, need: str, device=None, dtype=None,
               adapter=None) -> LoadedModel:
    """``need``: "decoder" (erank_fast engine) or "hf" (reference backend). ``adapter``: a
    LoRA adapter directory (peft's format) merged into the weights after loading (into a copy
    of an in-memory model)."""
    dtype = resolve_dtype(dtype)
    if not isinstance(model, (str, Path)):
        return _in_memory_model(model, tokenizer, need, dtype, adapter)

    device = torch.device(device) if device is not None else default_device()
    if dtype is not None and device.type == "cpu":
        from erank_fast.cpu import warn_if_slower_than_float32

        warn_if_slower_than_float32(dtype)
    dtype = dtype or default_dtype(device)
    name = str(model)
    path = resolve_model_path(name)
    source = str(path) if path is not None else name
    if path is not None:
        check_checkpoint_dir(path)
    try:
        tokenizer = tokenizer or load_tokenizer(source)
        check_chat_template(tokenizer, name)
        if need == "decoder" and path is not None:  # no transformers model is built
            decoder = load_decoder(path, dtype, device, adapter=adapter)
            return LoadedModel(tokenizer, eos_ids(tokenizer, _generation_config(path)), decoder,
                               name=name)
        from transformers import AutoModelForCausalLM

        if adapter is None:
            hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device).eval()
        else:  # merged in float32, then cast: merging in bfloat16 would round twice
            hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
            hf = _merge_adapter(hf, adapter).to(device=device, dtype=dtype)
    except OSError as e:
        if path is not None:
            raise
        raise OSError(
            f"could not load model {name!r}: it is not a local directory, a .gguf file or an "
            f"offline name, and the Hugging Face hub did not provide it ({type(e).__name__}). "
            "Download the checkpoint and pass its local directory."
        ) from e
    decoder = decoder_from_hf_model(hf) if need == "decoder" else None
    return LoadedModel(tokenizer, eos_ids(tokenizer, hf.generation_config), decoder, hf, name=name)
