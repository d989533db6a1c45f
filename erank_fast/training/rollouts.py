"""RL rollouts on the erank_fast engine, over the live policy weights.

``RolloutEngine`` builds one engine (K/V arena, CUDA graphs) for a trainer and reuses it for
every rollout call: the decoder holds the policy's own parameter tensors, so optimizer updates
made in place are seen without a copy. It is rebuilt only when the parameters themselves are
replaced (ZeRO-3 gathers them into fresh tensors per call, or a trainer reallocates them).
"""

from __future__ import annotations

import contextlib

from erank_fast.config import RerankerConfig
from erank_fast.engine.backend import make_backend, score_parts
from erank_fast.engine.sampling import SamplingParams
from erank_fast.models.sources import load_model
from erank_fast.scoring import ScoreTokens


@contextlib.contextmanager
def merged_adapters(model):
    """The policy with its active LoRA adapter (if any) merged into the base weights, so that
    the engine reads the weights it trains; unmerged on exit (peft's in-place merge, no copy)."""
    if not hasattr(model, "merge_adapter"):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


class RolloutEngine:
    """One engine over a policy's parameters, reused across calls while they stay in place.
    Built by the Reranker's factory (``engine.backend.make_backend``) from the in-memory model;
    ``options``: ``RerankerConfig`` fields (kv_memory, max_batch_tokens, cuda_graphs, ...)."""

    def __init__(self, tokenizer, **options):
        self.tokens = ScoreTokens.from_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.config = RerankerConfig(**options)
        self.engine = None
        self.builds = 0
        self._fingerprint: tuple | None = None

    def sample(self, model, prompts: list[list[int]], params: SamplingParams):
        """``params.n`` samples per prompt from ``model`` as it is now (LoRA merged by the caller)."""
        fingerprint = tuple((id(p), p.data_ptr()) for p in model.parameters())
        if self.engine is None or fingerprint != self._fingerprint:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            loaded = load_model(base, tokenizer=self.tokenizer, need="decoder")  # in place
            self.tokens, detector = score_parts(loaded)
            self.engine = make_backend(loaded, self.tokens, detector, self.config)
            self._fingerprint = fingerprint
            self.builds += 1
        samples, _ = self.engine.sample(prompts, params)
        return samples


def make_rollout(tokenizer, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                 prompt_ids: dict[str, list[int]] | None = None, score_first: bool = False,
                 engine: RolloutEngine | None = None):
    """rollout_func for TRL's GRPOTrainer: the erank_fast engine on the live policy parameters.
    ``prompt_ids``: token ids of known prompt texts (others are tokenized here).
    ``score_first``: the first token is drawn from the score digits (think-off prompts end
    with ``<answer>``; inference reads only the digits there, renormalised).
    ``engine``: the RolloutEngine to sample with (one is made for this rollout function)."""
    engine = engine or RolloutEngine(tokenizer)
    digits = tuple(engine.tokens.digits) if score_first else None

    def rollout(prompts, trainer):
        model = trainer.accelerator.unwrap_model(trainer.model)
        gather = contextlib.nullcontext()
        if getattr(trainer, "is_deepspeed_enabled", False):
            import deepspeed

            if trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
                gather = deepspeed.zero.GatheredParameters(list(model.parameters()))
        # The trainer repeats each prompt once per rollout; sample the repeats of a prompt
        # together so that they share its prefill.
        unique = list(dict.fromkeys(prompts))
        counts = {p: prompts.count(p) for p in unique}
        known = prompt_ids or {}
        ids = [known[p] if p in known else tokenizer.encode(p, add_special_tokens=False)
               for p in unique]
        params = SamplingParams(n=max(counts.values()), temperature=temperature, top_p=top_p,
                                top_k=top_k, max_new_tokens=max_new_tokens,
                                seed=trainer.state.global_step + 1_000 * trainer.args.seed,
                                first_token_ids=digits)
        with gather, merged_adapters(model):
            samples = engine.sample(model, ids, params)
        queues = {p: iter(s) for p, s in zip(unique, samples)}
        flat = [next(queues[p]) for p in prompts]
        return {"prompt_ids": [s.prompt_ids for s in flat],
                "completion_ids": [s.completion_ids for s in flat],
                "logprobs": [s.logprobs for s in flat]}

    rollout.engine = engine
    return rollout
