"""Sampling for RL rollouts: temperature, top-k, top-p, a seed per sample.

Rows are processed a few at a time, so the largest logits tensor is [ROW_CHUNK, vocab], never
[batch, vocab]. Each sample draws from its own generator (seeded from the request seed, the
prompt index and the sample index), so results do not depend on batch composition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erank_fast.engine.work import Doc
from erank_fast.validation import positive_int

ROW_CHUNK = 8


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 disable those filters.
    ``first_token_ids``: if given, the first generated token is drawn from these ids only
    (e.g. the score digits after ``<answer>``), the filters applying within them; its
    reported log-probability is still the policy's over the whole vocabulary."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int = 0
    first_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.first_token_ids is not None:
            ids = self.first_token_ids
            if (not isinstance(ids, tuple) or not ids
                    or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids)):
                raise ValueError(
                    f"first_token_ids must be a non-empty tuple of token ids, got {ids!r}")
        positive_int("n", self.n)
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative int, got {self.top_k!r}")
        positive_int("max_new_tokens", self.max_new_tokens)

    def generator(self, prompt: int, sample: int) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed((self.seed * 1_000_003 + prompt) * 1_000_003 + sample)
        return g


def sample_rows(hidden: torch.Tensor, weight: torch.Tensor, params: SamplingParams,
                generators: list[torch.Generator], first: list[bool] | None = None
                ) -> tuple[list[int], list[float]]:
    """hidden [R, H] final hidden states, weight [V, H] lm_head -> (token ids, log-probs),
    ``ROW_CHUNK`` rows of logits at a time (``sample_logits`` on each chunk)."""
    tokens, logprobs = [], []
    for r0 in range(0, hidden.shape[0], ROW_CHUNK):
        t, lp = sample_logits(hidden[r0 : r0 + ROW_CHUNK] @ weight.T, params,
                              generators[r0 : r0 + ROW_CHUNK],
                              None if first is None else first[r0 : r0 + ROW_CHUNK])
        tokens += t
        logprobs += lp
    return tokens, logprobs


def sample_logits(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator],
                  first: list[bool] | None = None) -> tuple[list[int], list[float]]:
    """logits [R, V] -> (token ids, log-probs). ``first[r]``: row r draws its sample's first
    token (``params.first_token_ids`` apply).

    The log-probability is that of the sampled token under log_softmax(logits / temperature)
    over the whole vocabulary (greedy: temperature 1), i.e. the policy's own distribution
    before the top-k / top-p filters, as RL importance ratios need."""
    logits = logits.float()
    scaled = logits / params.temperature if params.temperature > 0 else logits
    full = torch.log_softmax(scaled, dim=-1)
    tokens, logprobs = [], []
    for i in range(logits.shape[0]):
        allowed = params.first_token_ids if first is not None and first[i] else None
        token = _token(full[i], logits[i], params, generators[i], allowed)
        tokens.append(token)
        logprobs.append(float(full[i, token]))
    return tokens, logprobs


def _token(logprobs: torch.Tensor, logits: torch.Tensor, params: SamplingParams,
           generator: torch.Generator, allowed: tuple[int, ...] | None) -> int:
    if allowed is None:
        return (_draw(logprobs, params, generator) if params.temperature > 0
                else int(logits.argmax()))
    ids = torch.tensor(allowed, device=logprobs.device)
    if params.temperature == 0:
        return allowed[int(logits[ids].argmax())]
    return allowed[_draw(torch.log_softmax(logprobs[ids], -1), params, generator)]


def _draw(logprobs: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Inverse-CDF draw from the top-k / top-p filtered distribution, one uniform per token."""
    sorted_lp, order = torch.sort(logprobs, descending=True, stable=True)
    if params.top_k:
        sorted_lp, order = sorted_lp[: params.top_k], order[: params.top_k]
    probs = sorted_lp.exp()
    if params.top_p < 1.0:
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep = int((torch.cumsum(probs, 0) - probs < params.top_p).sum())
        probs, order = probs[: max(keep, 1)], order[: max(keep, 1)]
    cdf = torch.cumsum(probs, 0)
    u = torch.rand((), generator=generator).item() * cdf[-1].item()
    index = min(int(torch.searchsorted(cdf, torch.tensor(u))), len(order) - 1)
    return int(order[index])


def sample_step(docs: list, lens: list[int], hidden: torch.Tensor, weight: torch.Tensor,
                eos_ids: frozenset[int]) -> list:
    """Advance every sampling document of an engine step by one token; returns
    [(doc, Sample)] for those that finished (end of sequence or ``max_new_tokens``)."""
    by_params: dict[SamplingParams, list] = {}
    end = 0
    for d, n in zip(docs, lens):
        end += n
        if isinstance(d, SampledDoc):
            by_params.setdefault(d.sampler.params, []).append((d, end - 1))
    done = []
    for params, items in by_params.items():
        rows = hidden[torch.tensor([r for _, r in items], device=hidden.device)]
        tokens, logprobs = sample_rows(rows, weight, params,
                                       [d.sampler.generator for d, _ in items],
                                       [not d.generated for d, _ in items])
        for (d, _), token, logprob in zip(items, tokens, logprobs):
            d.generated.append(token)
            d.logprobs.append(logprob)
            if token in eos_ids or len(d.generated) >= params.max_new_tokens:
                done.append((d, Sample(prompt_ids=d.group.prefix + [d.sampler.last_prompt_token],
                                       completion_ids=list(d.generated),
                                       logprobs=list(d.logprobs))))
            else:
                d.pending = [token]
    return done


@dataclass(frozen=True)
class Sample:
    """One sampled completion: token ids and log-probabilities of the sampled tokens under the
    full-vocabulary distribution (temperature-scaled) they were drawn from."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]


@dataclass(eq=False)
class SamplerState:
    params: SamplingParams
    generator: torch.Generator
    last_prompt_token: int


@dataclass(eq=False)
class SampledDoc(Doc):
    """A sequence being sampled: its sampler and the log-probs of the tokens drawn so far."""

    sampler: SamplerState | None = None
    logprobs: list[float] = field(default_factory=list)
