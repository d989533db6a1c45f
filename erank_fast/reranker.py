"""The Reranker: load a model once, then rerank documents for one or many queries."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence

from erank_fast.config import RerankerConfig, parse_think
from erank_fast.engine.backend import make_backend, score_parts
from erank_fast.engine.sampling import Sample, SamplingParams
from erank_fast.fusion import FIRST_STAGE_ORDER, check_first_stage_scores, fuse
from erank_fast.models.packaged import packaged_reranker
from erank_fast.models.sources import LoadedModel, load_model
from erank_fast.prompt import PromptBuilder, valid_unicode
from erank_fast.results import CallStats, RerankResult, RerankResults
from erank_fast.scoring import score_document
from erank_fast.validation import positive_int


class Reranker:
    """A generative pointwise reranker (ERank prompt and scoring) on the erank_fast engine.

    Safe to share between threads: concurrent calls are batched together by the engine.
    """

    def __init__(self, loaded: LoadedModel, config: RerankerConfig):
        self.config = config
        self.tokenizer = loaded.tokenizer
        self.name = loaded.name
        self.tokens, self.answer_detector = score_parts(loaded)
        self._prompts = PromptBuilder(loaded.tokenizer, config.max_query_tokens,
                                      config.max_doc_tokens, config.template)
        self._backend = make_backend(loaded, self.tokens, self.answer_detector, config)
        self._prompt_lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, model, *, tokenizer=None, adapter=None, device=None, dtype=None,
                        think=None, instruction=None, score_mode=None, backend="auto",
                        **options) -> "Reranker":
        """Load a reranker.

        model: a packaged reranker ("erank-smol": SmolLM2-135M-Instruct with the LoRA adapter
            shipped in erank_fast, offline), a checkpoint directory (config.json + safetensors
            + tokenizer), a ``.gguf`` file, an offline base model ("smollm2-135m-instruct"), a
            hub id (needs network access), or an in-memory transformers model (then pass
            ``tokenizer``; its parameters are used in place, not copied).
        adapter: a LoRA adapter directory (peft), merged into the weights at load.
        device / dtype: default CUDA + bfloat16 when available; on CPU, the dtype a start-up
            check finds fast on this machine (``erank_fast.cpu``: bfloat16 where the CPU
            multiplies it fast, else float32). dtype: a torch dtype, "float32", "bfloat16",
            "float16" or "auto" (the default).
        think: "off" (default: one forward pass per document), an int N (at most N reasoning
            tokens, then the answer is forced) or "full" (until the model closes its reasoning,
            at most ``max_think_tokens``).
        score_mode: "erank" (s × p(s), the paper's; the default) or "expected" (Σ s·p(s)).
            A packaged reranker brings its own defaults for think, score_mode and the token
            limits (erank-smol: think "off", score_mode "expected"); what is passed here wins.
        backend: the erank_fast engine with "auto" (Triton kernels on CUDA, PyTorch ops
            elsewhere), "torch" or "triton" (on CPU only under TRITON_INTERPRET=1), or
            "reference" (transformers, each document alone).
        options: any other field of ``erank_fast.config.RerankerConfig`` (where the defaults
            are documented): max_query_tokens, max_doc_tokens, max_think_tokens,
            max_batch_tokens, kv_memory, cuda_graphs, pack_weights, hybrid_alpha, hybrid_order,
            template.
        """
        packaged = packaged_reranker(model)
        settings = {}
        if packaged is not None:
            if adapter is not None:
                raise ValueError(f"{packaged.name!r} already includes its adapter; to apply another, "
                                 f"pass the base model {packaged.base!r}")
            model, adapter, settings = packaged.base, packaged.adapter, packaged.settings
        given = dict(think=think, instruction=instruction, score_mode=score_mode, **options)
        # unset arguments take the packaged reranker's settings, then RerankerConfig's defaults
        config = RerankerConfig(backend=backend, **{
            **settings, **{k: v for k, v in given.items() if v is not None}})
        need = "hf" if backend == "reference" else "decoder"
        loaded = load_model(model, tokenizer=tokenizer, need=need, device=device, dtype=dtype,
                            adapter=adapter)
        if packaged is not None:
            loaded.name = packaged.name
        return cls(loaded, config)

    def rerank(self, query: str, documents: Sequence, *, top_k: int | None = None,
               instruction: str | None = None, return_reasoning: bool = False,
               think=None, cancel: threading.Event | None = None,
               max_doc_tokens: int | None = None,
               first_stage_scores: Sequence[float] | None = None) -> RerankResults:
        """Documents (strings, or mappings with a "text" key) sorted by score, best first;
        ``top_k`` keeps the best k. ``think`` overrides the reranker's setting for this call.
        ``cancel``: an event that, once set from another thread, abandons the call: it raises
        ``erank_fast.Cancelled`` and its documents' memory is released. ``max_doc_tokens``
        truncates documents further for this call (never beyond the reranker's own limit).
        ``first_stage_scores``: the retriever's score of each document (BM25's, say; higher is
        more relevant): the results are then sorted by the hybrid of both (``hybrid_alpha`` ·
        z(first stage) + (1 − ``hybrid_alpha``) · z(model), ``erank_fast.fusion``), each
        result's ``model_score`` keeping the model's own. ``first_stage_scores="order"``: the
        documents are in the retriever's order, best first, and that order stands in for its
        scores (``erank_fast.fusion.order_scores``); the reranker's ``hybrid_order`` setting
        makes that the default of calls that pass no first-stage scores."""
        return self.rerank_many([query], [documents], top_k=top_k, instruction=instruction,
                                return_reasoning=return_reasoning, think=think, cancel=cancel,
                                max_doc_tokens=max_doc_tokens,
                                first_stage_scores=None if first_stage_scores is None
                                else [first_stage_scores])[0]

    def score(self, query: str, documents: Sequence, *, instruction: str | None = None,
              think=None) -> list[float]:
        """Rank scores in input order."""
        results = self.rerank(query, documents, instruction=instruction, think=think)
        scores = [0.0] * len(results)
        for r in results:
            scores[r.index] = r.score
        return scores

    def rerank_many(self, queries: Sequence[str], documents_per_query: Sequence[Sequence], *,
                    top_k: int | None = None, instruction: str | None = None,
                    return_reasoning: bool = False, think=None,
                    cancel: threading.Event | None = None,
                    max_doc_tokens: int | None = None,
                    first_stage_scores: Sequence[Sequence[float]] | None = None,
                    ) -> list[RerankResults]:
        """Rerank several queries in one engine call (their documents are batched together);
        ``cancel``, ``max_doc_tokens`` and ``first_stage_scores`` (here one list per query) as
        in ``rerank`` (``"order"`` here for every query, or in place of one query's list)."""
        if isinstance(queries, str) or len(queries) != len(documents_per_query):
            raise ValueError("queries and documents_per_query must be sequences of equal length")
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise TypeError(f"query {i} must be a str, got {type(q).__name__}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
            raise ValueError(f"top_k must be a non-negative int or None, got {top_k!r}")
        think = self.config.think if think is None else parse_think(think)
        instruction = instruction if instruction is not None else self.config.instruction
        texts = [_document_texts(docs) for docs in documents_per_query]
        if first_stage_scores is None and self.config.hybrid_order:
            first_stage_scores = FIRST_STAGE_ORDER
        if isinstance(first_stage_scores, str) and first_stage_scores == FIRST_STAGE_ORDER:
            first_stage_scores = [FIRST_STAGE_ORDER] * len(texts)
        if first_stage_scores is not None:
            if isinstance(first_stage_scores, (str, bytes)) or \
                    len(first_stage_scores) != len(texts):
                raise ValueError("first_stage_scores must hold one list of scores per query")
            first_stage_scores = [check_first_stage_scores(s, len(t))
                                  for s, t in zip(first_stage_scores, texts)]

        start = time.perf_counter()
        asked = [i for i, t in enumerate(texts) if t]
        builder = self._prompts
        if max_doc_tokens is not None:
            positive_int("max_doc_tokens", max_doc_tokens)
            builder = PromptBuilder(self.tokenizer, self.config.max_query_tokens,
                                    min(max_doc_tokens, self.config.max_doc_tokens),
                                    self.config.template)
        with self._prompt_lock:  # tokenizers are not guaranteed to be thread-safe
            prompts = [builder.segment(queries[i], texts[i], instruction, think == "off")
                       for i in asked]
        readouts, engine_stats = ([], None)
        if prompts:
            readouts, engine_stats = self._backend.run(prompts, self.config.budget(think),
                                                       cancel=cancel)
        seconds = time.perf_counter() - start
        stats = CallStats(
            seconds=seconds, documents=sum(len(t) for t in texts),
            prefill_tokens=engine_stats.prefill_tokens if engine_stats else 0,
            decode_tokens=engine_stats.decode_tokens if engine_stats else 0,
            steps=engine_stats.steps if engine_stats else 0, dtype=self.dtype,
        )
        by_query = dict(zip(asked, readouts))
        out = []
        for qi, docs in enumerate(documents_per_query):
            results = [self._result(i, doc, r, return_reasoning)
                       for i, (doc, r) in enumerate(zip(docs, by_query.get(qi, [])))]
            if first_stage_scores is not None and results:
                fused = fuse(first_stage_scores[qi], [r.score for r in results],
                             self.config.hybrid_alpha)
                results = [dataclasses.replace(r, score=f) for r, f in zip(results, fused)]
            results.sort(key=lambda r: (-r.score, r.index))
            out.append(RerankResults(results[:top_k] if top_k is not None else results, stats))
        return out

    def sample(self, prompts: Sequence[Sequence[int]], *, n: int = 1, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 256, seed: int = 0,
               first_token_ids: Sequence[int] | None = None) -> list[list[Sample]]:
        """``n`` sampled completions per prompt (token ids), for RL rollouts. The n samples of a
        prompt share its prefill; each has its own generator seeded from (seed, prompt, sample),
        so results do not depend on batching. Each Sample has prompt_ids, completion_ids (ending
        with end-of-sequence when the model stopped) and the log-probability of every sampled
        token under the full temperature-scaled distribution. ``first_token_ids`` restricts
        the first sampled token to those ids (e.g. the score digits after ``<answer>``)."""
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                                max_new_tokens=max_new_tokens, seed=seed,
                                first_token_ids=None if first_token_ids is None
                                else tuple(first_token_ids))
        prompts = [list(p) for p in prompts]
        for i, p in enumerate(prompts):
            if not p or not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in p):
                raise ValueError(f"prompt {i} must be a non-empty list of token ids < {self.vocab_size}")
        samples, _ = self._backend.sample(prompts, params)
        return samples

    @property
    def backend(self):
        """The backend scoring this reranker's calls (an ``Engine`` or ``ReferenceBackend``),
        for inspection; calls go through the Reranker."""
        return self._backend

    def inspect(self):
        """A snapshot of the backend now (``erank_fast.engine.work.BackendSnapshot``): forward
        passes run, documents queued and active, K/V rows in use and allowed (None for the
        reference backend, which has no K/V arena). Public and the same for every backend, for
        gauges and tests."""
        return self._backend.inspect()

    @property
    def dtype(self) -> str:
        """The dtype the model computes in ("bfloat16", "float32", ...)."""
        return str(self._backend.dtype).removeprefix("torch.")

    @property
    def device(self) -> str:
        return str(self._backend.device)

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size

    @property
    def eos_ids(self) -> frozenset[int]:
        """The end-of-sequence ids generation stops at (generation config and tokenizer)."""
        return self.answer_detector.eos_ids

    def prompt_ids(self, query: str, document: str, *, instruction: str | None = None,
                   think_off: bool = False) -> list[int]:
        """Token ids of one document's full prompt exactly as this reranker builds it
        (truncation included; with ``think_off`` it ends at the answer position)."""
        with self._prompt_lock:
            return self._prompts.prompt_ids(query, document, instruction, think_off)

    def document_tokens(self, document: str) -> int:
        """Tokens a document's text takes in the prompt before truncation (documents over
        ``config.max_doc_tokens`` are cut to it)."""
        with self._prompt_lock:
            return len(self._prompts.encode_text(valid_unicode(document)))

    def segment(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
                think_off: bool = False):
        """The query's prompts as one shared prefix and per-document suffixes
        (``erank_fast.prompt.QueryPrompts``), as the engine receives them."""
        with self._prompt_lock:
            return self._prompts.segment(query, list(documents), instruction, think_off)

    def _result(self, index, document, readout, return_reasoning) -> RerankResult:
        s = score_document(readout, self.tokens, self.config.score_mode)
        reasoning = (self.tokenizer.decode(list(readout.generated), skip_special_tokens=False)
                     if return_reasoning else None)
        return RerankResult(index=index, score=s.score, answer=s.answer, probability=s.probability,
                            distribution=s.distribution,
                            num_generated_tokens=len(readout.generated),
                            reasoning=reasoning, document=document, model_score=s.score)


def _document_texts(documents) -> list[str]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError(
            f"documents must be a list of strings or of mappings with a 'text' key, "
            f"got {type(documents).__name__}")
    texts = []
    for i, doc in enumerate(documents):
        text = doc.get("text") if isinstance(doc, Mapping) else doc
        if not isinstance(text, str):
            what = "its 'text'" if isinstance(doc, Mapping) else "it"
            raise TypeError(
                f"document {i}: expected a str or a mapping with a str 'text', but {what} is "
                f"{type(text).__name__}")
        texts.append(text)
    return texts
