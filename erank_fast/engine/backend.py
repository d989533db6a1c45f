"""What the Reranker needs of a backend: scoring prepared prompts, and sampling over token ids.

Both backends implement it: the erank_fast ``Engine`` (shared prefixes, continuous batching,
concurrent calls batched together) and the ``ReferenceBackend`` (transformers, each document
alone, calls one at a time). ``EngineStats`` count the same work the same way on both: prompt
tokens computed before the first readout or sample are prefill (with think="off" that includes
the teacher-forced "1"); tokens fed after it are decode; forward passes are steps.
"""

from __future__ import annotations

import threading
from typing import Protocol

from erank_fast.engine.sampling import Sample, SamplingParams
from erank_fast.engine.work import BackendSnapshot, EngineStats
from erank_fast.prompt import QueryPrompts
from erank_fast.scoring import Readout


class Backend(Protocol):
    vocab_size: int

    def run(self, prompts: list[QueryPrompts], budget: int | None, *,
            cancel: threading.Event | None = None) -> tuple[list[list[Readout]], EngineStats]:
        """Readouts per query and document. ``budget``: None for think="off" (the prompts end
        at the answer position), else the most reasoning tokens a document may write.
        ``cancel``: once set (from any thread), the call raises ``Cancelled`` and its work and
        memory are released."""
        ...

    def sample(self, prompts: list[list[int]], params: SamplingParams, *,
               cancel: threading.Event | None = None) -> tuple[list[list[Sample]], EngineStats]:
        """``params.n`` samples per prompt (token ids), each from its own seeded generator."""
        ...

    def inspect(self) -> BackendSnapshot:
        """What it is doing now (steps, queued and active documents, K/V rows), the same
        fields for every backend."""
        ...


def score_parts(loaded) -> tuple:
    """(ScoreTokens, AnswerDetector) of a loaded model: the score digits and how answers are
    found, which every backend and the Reranker read the same way."""
    from erank_fast.scoring import AnswerDetector, ScoreTokens

    return ScoreTokens.from_tokenizer(loaded.tokenizer), AnswerDetector(loaded.tokenizer,
                                                                       loaded.eos_ids)


def make_backend(loaded, tokens, detector, config) -> Backend:
    """The one backend factory (the Reranker's and the RL rollouts'): the backend
    ``config.backend`` names (a ``RerankerConfig``), over a loaded model."""
    if config.backend == "reference":
        if config.quantize != "none":
            raise ValueError("quantize applies to erank_fast's engine, not the reference backend")
        from erank_fast.engine.reference_backend import ReferenceBackend

        return ReferenceBackend(loaded.hf_model, tokens, detector)
    from erank_fast.engine.engine import Engine

    impl = "auto" if config.backend == "auto" else config.backend
    pack = config.pack_weights == "on" or (config.pack_weights == "auto" and loaded.owns_weights)
    if config.quantize != "none" and not loaded.owns_weights:
        raise ValueError(f"quantize={config.quantize!r} replaces the weights by quantised copies: "
                         "load the model from a path or a packaged name, not an in-memory model")
    return Engine(loaded.decoder, tokens, detector, max_batch_tokens=config.max_batch_tokens,
                  impl=impl, kv_memory=config.kv_memory, cuda_graphs=config.cuda_graphs,
                  pack_weights=pack, quantize=config.quantize)
