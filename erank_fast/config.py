"""Reranker settings: one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from erank_fast.fusion import DEFAULT_HYBRID_ALPHA, check_alpha
from erank_fast.prompt import (
    DEFAULT_MAX_DOC_TOKENS,
    DEFAULT_MAX_QUERY_TOKENS,
    DEFAULT_TEMPLATE,
    check_template,
)
from erank_fast.scoring import SCORE_MODES
from erank_fast.validation import positive_int

BACKENDS = ("auto", "torch", "triton", "reference")
CUDA_GRAPH_MODES = ("auto", "on", "off", "padded")
PACK_WEIGHTS_MODES = ("auto", "on", "off")
QUANTIZE_MODES = ("none", "int8")
DEFAULT_MAX_THINK_TOKENS = 4096


def check_cuda_graphs(mode) -> str:
    """The one check of the ``cuda_graphs`` setting (RerankerConfig and the engine use it)."""
    if mode not in CUDA_GRAPH_MODES:
        raise ValueError(f"cuda_graphs must be one of {CUDA_GRAPH_MODES}, got {mode!r}")
    return mode


def parse_think(think) -> str | int:
    """The think setting from a value or its command-line text: "off" (score right away),
    "full" (reason until the model closes its thinking, at most max_think_tokens), or an int
    N >= 1 (at most N reasoning tokens, then forced); "16" is read as 16."""
    if think in ("off", "full"):
        return think
    if isinstance(think, str) and think.strip().isdigit():
        think = int(think)
    if isinstance(think, bool) or not isinstance(think, int) or think < 1:
        raise ValueError(f'think must be "off", "full" or a positive int, got {think!r}')
    return think


@dataclass(frozen=True)
class RerankerConfig:
    """A Reranker's settings and their defaults (``Reranker.from_pretrained`` takes each by name).

    template: the prompt's layout, "erank" (ERank's own) or "doc-last" (the same text with the
    query and document last, for models trained on it: ``erank_fast.prompt``).
    max_query_tokens / max_doc_tokens: truncation of the query and each document (tokens).
    max_think_tokens: the reasoning limit of think="full". max_batch_tokens: tokens per
    forward pass (None: 8192 on CUDA, 4096 on CPU). kv_memory: bytes for the K/V arena (None:
    90% of free GPU memory, 2 GiB on CPU). cuda_graphs: decode steps replayed from CUDA graphs,
    "auto" (on CUDA with the Triton kernels), "on", "off", or "padded" (the padded steps,
    eagerly, to check them on any device). pack_weights: on CPU, the linear layers and the
    lm_head multiply by copies of their weights packed once for oneDNN (1.2-3× faster
    matmuls; "auto": when erank_fast loaded the weights itself, from a path, so no one else
    changes them; "on" also for an in-memory model, whose later changes are then not seen;
    "off"). quantize: "none" (the default) or "int8": on a CPU with AMX-INT8, AVX512-VNNI or
    AVX2, a float32 or bfloat16 model's decoder linear layers multiply int8 weights (one scale
    per output channel; 7 bits on AVX2 alone, whose products would otherwise saturate) by int8
    activations (one scale per token) (``erank_fast.ops.int8_linear``),
    and a float32 model's prefill attention is int8 too where the CPU has AVX512-VNNI, over a
    bfloat16 K/V arena (``erank_fast.ops.arena_attention``): faster, a small score error
    (erank-smol on DL19: nDCG@10 0.5735 in bf16 and 0.5730 in float32, against 0.5755); only
    for weights erank_fast loaded itself (a path or a packaged name). hybrid_alpha: the first
    stage's weight when a call passes first-stage scores
    (``erank_fast.fusion``; ERank's 0.2). hybrid_order: calls that pass no first-stage scores
    take the documents' order as the retriever's ranking (best first) and are ranked by the
    hybrid with it, as ``first_stage_scores="order"`` asks for one call (for a service whose
    clients send documents in the retriever's order and cannot send its scores)."""

    think: str | int = "off"
    instruction: str | None = None
    template: str = DEFAULT_TEMPLATE
    score_mode: str = "erank"
    backend: str = "auto"
    max_query_tokens: int = DEFAULT_MAX_QUERY_TOKENS
    max_doc_tokens: int = DEFAULT_MAX_DOC_TOKENS
    max_think_tokens: int = DEFAULT_MAX_THINK_TOKENS
    max_batch_tokens: int | None = None  # per forward pass; None: 8192 on CUDA, 4096 on CPU
    kv_memory: int | None = None
    cuda_graphs: str = "auto"  # decode steps from CUDA graphs: "auto", "on", "off", "padded"
    pack_weights: str = "auto"  # CPU matmuls on packed weight copies: "auto", "on", "off"
    quantize: str = "none"  # "int8": int8 decoder linears on CPU (opt-in; see the docstring)
    hybrid_alpha: float = DEFAULT_HYBRID_ALPHA
    hybrid_order: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "think", parse_think(self.think))
        if self.score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        check_cuda_graphs(self.cuda_graphs)
        check_template(self.template)
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {self.quantize!r}")
        if self.pack_weights not in PACK_WEIGHTS_MODES:
            raise ValueError(f"pack_weights must be one of {PACK_WEIGHTS_MODES}, "
                             f"got {self.pack_weights!r}")
        object.__setattr__(self, "hybrid_alpha", check_alpha(self.hybrid_alpha))
        if not isinstance(self.hybrid_order, bool):
            raise ValueError(f"hybrid_order must be True or False, got {self.hybrid_order!r}")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise TypeError("instruction must be a str or None, got "
                            f"{type(self.instruction).__name__}")
        for name in ("max_query_tokens", "max_doc_tokens", "max_think_tokens"):
            positive_int(name, getattr(self, name))
        for name in ("max_batch_tokens", "kv_memory"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))

    def budget(self, think) -> int | None:
        """Reasoning-token budget for a think setting: None for "off"."""
        if think == "off":
            return None
        if think == "full":
            return self.max_think_tokens
        return think
