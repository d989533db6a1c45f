"""The torch engine: prefix prefill once per query, suffix prefill of all documents in one
varlen pass, greedy decode with early stop at the score, score read without full logits.

A document's life: its suffix is prefilled (think="off": with the answer position and a
teacher-forced "1" already in it); in thinking modes it then decodes one token per step until
the ``AnswerDetector`` says the answer position is reached or forces it; its last step feeds
the tokens up to the answer position plus "1", reads the score there, and it leaves the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from erank_fast.engine.attention import PrefixPrefillAttention, SharedPrefixAttention, StepMeta
from erank_fast.engine.kv_cache import OwnKV, PrefixKV
from erank_fast.models.decoder import Decoder
from erank_fast.ops.score_head import score_head
from erank_fast.prompt import QueryPrompts
from erank_fast.scoring import AnswerDetector, Readout, ScoreTokens

# Initial own-KV room for generated tokens; it doubles on demand.
_INITIAL_DECODE_ROOM = 32


@dataclass(frozen=True)
class EngineStats:
    prefill_tokens: int
    decode_tokens: int
    steps: int


@dataclass
class _Doc:
    group: int
    index: int
    slot: int
    pending: list[int]          # tokens fed at the next step
    reading: bool               # pending ends with [answer-tag end, "1"]: read the score
    own_len: int = 0
    generated: list[int] = field(default_factory=list)
    forced: tuple[int, ...] = ()
    readout: Readout | None = None


class Engine:
    def __init__(self, decoder: Decoder, tokens: ScoreTokens, detector: AnswerDetector,
                 max_batch_tokens: int, impl: str = "auto"):
        """impl: "auto" (Triton kernels on CUDA, PyTorch elsewhere), "torch" or "triton"."""
        self.decoder = decoder
        self.impl = impl
        self.tokens = tokens
        self.detector = detector
        self.max_batch_tokens = max_batch_tokens
        cfg = decoder.config
        self.scale = cfg.head_dim**-0.5
        self.digit_ids = torch.tensor(tokens.digits, dtype=torch.int64)

    @property
    def device(self) -> torch.device:
        return self.decoder.lm_head_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.lm_head_weight.dtype

    @torch.inference_mode()
    def run(self, prompts: list[QueryPrompts], budget: int | None
            ) -> tuple[list[list[Readout]], EngineStats]:
        """Score every document of every query. ``budget``: None for think="off" (the prompts
        end at the answer position), else the most reasoning tokens a document may write."""
        counters = {"prefill": 0, "decode": 0, "steps": 0}
        prefix = self._prefill_prefixes(prompts, counters)
        results: list[list[Readout | None]] = [[None] * len(p.suffixes) for p in prompts]
        for batch in self._batches(prompts):
            self._run_batch(prompts, prefix, batch, budget, results, counters)
        stats = EngineStats(counters["prefill"], counters["decode"], counters["steps"])
        return results, stats

    def _batches(self, prompts: list[QueryPrompts]):
        """Documents in query order, cut so each batch's prefill fits the token budget."""
        batch, tokens = [], 0
        for g, p in enumerate(prompts):
            for i, suffix in enumerate(p.suffixes):
                n = len(suffix) + 1
                if batch and tokens + n > self.max_batch_tokens:
                    yield batch
                    batch, tokens = [], 0
                batch.append((g, i))
                tokens += n
        if batch:
            yield batch

    def _prefill_prefixes(self, prompts: list[QueryPrompts], counters) -> PrefixKV:
        lens = [len(p.prefix) for p in prompts]
        prefix = PrefixKV(self.decoder.config, lens, self.dtype, self.device)
        g0 = 0
        while g0 < len(prompts):
            g1, tokens = g0 + 1, lens[g0]
            while g1 < len(prompts) and tokens + lens[g1] <= self.max_batch_tokens:
                tokens += lens[g1]
                g1 += 1
            ids = [t for p in prompts[g0:g1] for t in p.prefix]
            if ids:
                positions = [j for n in lens[g0:g1] for j in range(n)]
                cu = [c - prefix.cu[g0] for c in prefix.cu[g0 : g1 + 1]]
                attention = PrefixPrefillAttention(
                    prefix, slice(prefix.cu[g0], prefix.cu[g1]), cu, self.scale)
                self.decoder(self._tensor(ids), self._tensor(positions), attention)
                counters["prefill"] += len(ids)
            g0 = g1
        return prefix

    def _run_batch(self, prompts, prefix: PrefixKV, batch, budget, results, counters) -> None:
        think_off = budget is None
        one = self.tokens.one
        docs = [
            _Doc(group=g, index=i, slot=s,
                 pending=prompts[g].suffixes[i] + ([one] if think_off else []),
                 reading=think_off)
            for s, (g, i) in enumerate(batch)
        ]
        room = max(len(d.pending) for d in docs) + (0 if think_off else _INITIAL_DECODE_ROOM)
        own = OwnKV(self.decoder.config, len(docs), room, self.dtype, self.device)
        active, first = docs, True
        while active:
            fed = self._step(prefix, own, active, budget, len(prompts))
            counters["prefill" if first else "decode"] += fed
            counters["steps"] += 1
            for d in active:
                if d.readout is not None:
                    results[d.group][d.index] = d.readout
            active = [d for d in active if d.readout is None]
            first = False

    def _step(self, prefix: PrefixKV, own: OwnKV, docs: list[_Doc], budget, num_groups) -> int:
        """Feed every document's pending tokens; returns how many tokens were fed."""
        lens = [len(d.pending) for d in docs]
        own.ensure_capacity(max(d.own_len + n for d, n in zip(docs, lens)))
        ids = [t for d in docs for t in d.pending]
        positions = [prefix.length(d.group) + d.own_len + j for d, n in zip(docs, lens)
                     for j in range(n)]
        meta = StepMeta.build(lens, [d.slot for d in docs], [d.own_len for d in docs],
                              [d.group for d in docs], num_groups, self.device)
        attention = SharedPrefixAttention(prefix, own, meta, self.scale, self.impl)
        hidden = self.decoder(self._tensor(ids), self._tensor(positions), attention)

        # Rows whose next-token distribution is needed: the last one of a decoding document;
        # the answer position and the position after "1" of a document being read.
        rows, end = [], 0
        for d, n in zip(docs, lens):
            end += n
            rows += [end - 2, end - 1] if d.reading else [end - 1]
        _, argmax, lse, digit_logits = score_head(
            hidden[self._tensor(rows)], self.decoder.lm_head_weight, self.digit_ids.to(self.device),
            impl=self.impl)
        argmax, logprobs = argmax.tolist(), (digit_logits - lse[:, None]).tolist()

        r = 0
        for d, n in zip(docs, lens):
            d.own_len += n
            if d.reading:
                d.readout = Readout(
                    digit_logprobs=tuple(logprobs[r]), zero_after_one_logprob=logprobs[r + 1][0],
                    argmax_answer=argmax[r], argmax_after_one=argmax[r + 1],
                    generated=tuple(d.generated), forced=d.forced)
                r += 2
            else:
                self._advance(d, argmax[r], budget)
                r += 1
        return len(ids)

    def _advance(self, d: _Doc, token: int, budget: int) -> None:
        d.generated.append(token)
        decision = self.detector.decide(d.generated, budget)
        if decision.kind == "continue":
            d.pending = [token]
            return
        if decision.drop_last:
            d.generated.pop()
        d.forced = decision.forced
        d.pending = ([] if decision.drop_last else [token]) + list(decision.forced) + [self.tokens.one]
        d.reading = True

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)
