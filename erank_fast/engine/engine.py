"""The engine: one scheduler for every document of every call (continuous batching), a K/V arena
from a memory budget, shared-prefix prefill, and early-stopping decode read through the
vocabulary-streaming score head.

A document's life: it waits until its K/V fits the arena and its prefill fits the step's token
budget; its query's prefix is prefilled once when the query's first document is admitted; its
suffix is prefilled (think="off": up to the answer position plus a teacher-forced "1", read
in that step); in thinking modes it then decodes one token per step, joined by newly admitted
documents, until the ``AnswerDetector`` finds or forces the answer position, still one token per
step (forced tokens, then "1"), so that every pure decode step has one shape and can be replayed
from a CUDA graph; once its score is read, its K/V rows are freed (the prefix's when the query's
last document is done).

Calls from several threads share the loop: whichever thread finds it idle drives it until all
submitted work is done; the others wait for their own results.
"""

from __future__ import annotations

import collections
import threading

import torch

from erank_fast.engine.attention import PrefixPrefillAttention, SharedPrefixAttention, StepMeta
from erank_fast.engine.decode_graphs import DecodeGraphs, graph_mode
from erank_fast.engine.kv_pool import KVPool, RangeAllocator
from erank_fast.engine.sampling import SamplingParams, sample_rows
from erank_fast.engine.work import Doc, EngineStats, Group, Request, Sample, SamplerState
from erank_fast.models.decoder import Decoder
from erank_fast.ops.score_head import score_head
from erank_fast.prompt import QueryPrompts
from erank_fast.scoring import AnswerDetector, Readout, ScoreTokens

DEFAULT_CPU_KV_MEMORY = 2 * 2**30
DEFAULT_GPU_KV_FRACTION = 0.9
# Tokens per forward pass: large on GPUs; on CPUs smaller steps stay in cache (measured on
# SmolLM2-135M, 2 cores: 2048 tokens per step 1.15x faster than 8192).
DEFAULT_MAX_BATCH_TOKENS = {"cuda": 8192, "cpu": 2048}


class Engine:
    def __init__(self, decoder: Decoder, tokens: ScoreTokens, detector: AnswerDetector, *,
                 max_batch_tokens: int | None = None, impl: str = "auto",
                 kv_memory: int | None = None, cuda_graphs: str = "auto"):
        """impl: "auto" (Triton kernels on CUDA, PyTorch elsewhere), "torch" or "triton".
        max_batch_tokens: tokens per forward pass (default 8192 on CUDA, 2048 on CPU).
        kv_memory: bytes for the K/V arena (default: 90% of free GPU memory, 2 GiB on CPU).
        cuda_graphs: decode steps replayed from CUDA graphs: "auto" (on CUDA with the Triton
        kernels), "on", "off", or "padded" (the padded steps the graphs replay, run eagerly:
        for checking the padding on any device). Graphs record the addresses of the weights
        and the arena: weights may change in place (training), not be reallocated."""
        self.cuda_graphs = graph_mode(cuda_graphs, decoder, impl)
        self._graphs: DecodeGraphs | None = None
        self.decoder, self.tokens, self.detector, self.impl = decoder, tokens, detector, impl
        self.max_batch_tokens = max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS.get(
            decoder.lm_head_weight.device.type, 2048)
        self.kv_memory = kv_memory
        self.scale = decoder.config.head_dim**-0.5
        self.digit_ids = torch.tensor(tokens.digits, dtype=torch.int64, device=self.device)
        self._pool: KVPool | None = None
        self._max_tokens: int | None = None
        self._waiting: collections.deque[Doc] = collections.deque()
        self._active: list[Doc] = []
        self._order = 0
        self._state_lock = threading.Lock()
        self._driver = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.decoder.lm_head_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.lm_head_weight.dtype

    @property
    def max_kv_tokens(self) -> int:
        """K/V rows the memory budget allows for prompts and generated tokens (the budget also
        holds the arena's scratch row)."""
        if self._max_tokens is None:
            memory = self.kv_memory
            if memory is None:
                if self.device.type == "cuda":
                    memory = int(torch.cuda.mem_get_info(self.device)[0] * DEFAULT_GPU_KV_FRACTION)
                else:
                    memory = DEFAULT_CPU_KV_MEMORY
            rows = memory // KVPool.bytes_per_token(self.decoder.config, self.dtype)
            self._max_tokens = max(0, rows - KVPool.SCRATCH_ROWS)
        return self._max_tokens

    # ---- public entry points -------------------------------------------------------------

    def run(self, prompts: list[QueryPrompts], budget: int | None
            ) -> tuple[list[list[Readout]], EngineStats]:
        """Score every document of every query. ``budget``: None for think="off" (the prompts
        end at the answer position), else the most reasoning tokens a document may write."""
        request = Request()
        docs = []
        extra = 1 if budget is None else budget + self.detector.max_forced_tokens + 1
        for p in prompts:
            group = request.add_group(p.prefix)
            for i, suffix in enumerate(p.suffixes):
                pending = suffix + [self.tokens.one] if budget is None else list(suffix)
                docs.append(Doc(group=group, index=i, pending=pending,
                                reserve=len(suffix) + extra, reading=budget is None, budget=budget))
        return self._submit(request, docs)

    def sample(self, prompts: list[list[int]], params: SamplingParams
               ) -> tuple[list[list[Sample]], EngineStats]:
        """``params.n`` samples per prompt; the n samples of a prompt share its prefill."""
        request = Request()
        docs = []
        for p, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {p} is empty")
            group = request.add_group(list(prompt[:-1]))
            for i in range(params.n):
                state = SamplerState(params, params.generator(p, i), prompt[-1])
                docs.append(Doc(group=group, index=i, pending=[prompt[-1]],
                                reserve=1 + params.max_new_tokens, sampler=state))
        return self._submit(request, docs)

    # ---- scheduling ----------------------------------------------------------------------

    @torch.inference_mode()
    def _submit(self, request: Request, docs: list[Doc]):
        for d in docs:
            need = len(d.group.prefix) + d.reserve
            if need > self.max_kv_tokens:
                raise ValueError(
                    f"query {d.group.index}, document {d.index} needs {need} K/V tokens (prefix "
                    f"{len(d.group.prefix)} + own {d.reserve}) but the K/V memory budget holds "
                    f"{self.max_kv_tokens}; raise kv_memory or lower max_doc_tokens / "
                    "max_think_tokens")
            d.group.docs_left += 1
            request.results[d.group.index].append(None)
        request.docs_left = len(docs)
        if not docs:
            return request.results, request.stats()
        with self._state_lock:
            for g in request.groups:
                g.order, self._order = self._order, self._order + 1
            self._waiting.extend(docs)
        while not request.done.is_set():
            if self._driver.acquire(blocking=False):
                try:
                    self._drive()
                finally:
                    self._driver.release()
            else:
                request.done.wait(0.005)
        if request.error is not None:
            raise request.error
        return request.results, request.stats()

    def _drive(self) -> None:
        try:
            while self._active or self._waiting:
                self._ensure_pool()
                admitted, new_groups = self._admit()
                if new_groups:
                    self._prefill_prefixes(new_groups)
                docs = sorted(self._active + admitted, key=lambda d: d.group.order)
                if not docs:
                    raise RuntimeError("the scheduler could not admit any document")
                self._step(docs)
                self._active = [d for d in docs if d.readout is None]
        except BaseException as error:
            self._fail_all(error)

    def _fail_all(self, error: BaseException) -> None:
        """An engine failure (e.g. out of memory) ends every call in flight with that error and
        leaves the engine empty and usable."""
        with self._state_lock:
            docs = self._active + list(self._waiting)
            self._active, self._waiting = [], collections.deque()
        for d in docs:
            d.group.kv_start = None
            d.group.request.error = error
            d.group.request.done.set()
        if self._pool is not None:
            self._pool.ranges = RangeAllocator(self._pool.tokens)

    def _ensure_pool(self) -> None:
        """Allocate the arena at first use: the whole budget on CUDA; on CPU what the waiting
        work needs (within the budget), grown only while the arena is empty."""
        if self._pool is not None and (self._pool.ranges.in_use or self._active):
            return
        if self.device.type == "cuda":
            want = self.max_kv_tokens
        else:
            with self._state_lock:
                groups = {id(d.group): len(d.group.prefix) for d in self._waiting}
                want = sum(d.reserve for d in self._waiting) + sum(groups.values())
            want = min(self.max_kv_tokens, want)
        if self._pool is None or self._pool.tokens < want:
            self._pool = None  # free the old arena before allocating the new one
            self._pool = KVPool(self.decoder.config, want, self.dtype, self.device)

    def _admit(self) -> tuple[list[Doc], list[Group]]:
        """Waiting documents, in arrival order, while their K/V fits and the step's tokens fit."""
        ranges = self._pool.ranges
        tokens = sum(len(d.pending) for d in self._active)
        admitted, new_groups = [], []
        with self._state_lock:
            while self._waiting:
                d = self._waiting[0]
                n = len(d.pending)
                if (admitted or self._active) and tokens + n > self.max_batch_tokens:
                    break
                g = d.group
                fresh = g.kv_start is None
                if fresh:
                    g.kv_start = ranges.alloc(len(g.prefix))
                    if g.kv_start is None:
                        break
                d.kv_start = ranges.alloc(d.reserve)
                if d.kv_start is None:
                    if fresh:
                        ranges.release(g.kv_start, len(g.prefix))
                        g.kv_start = None
                    break
                if fresh:
                    new_groups.append(g)
                admitted.append(self._waiting.popleft())
                tokens += n
        return admitted, new_groups

    def _finish(self, d: Doc, result) -> None:
        d.readout = result
        ranges = self._pool.ranges
        ranges.release(d.kv_start, d.reserve)
        g, request = d.group, d.group.request
        g.docs_left -= 1
        if g.docs_left == 0:
            ranges.release(g.kv_start, len(g.prefix))
            g.kv_start = None
        request.results[g.index][d.index] = result
        request.docs_left -= 1
        if request.docs_left == 0:
            request.done.set()

    # ---- model steps ---------------------------------------------------------------------

    def _prefill_prefixes(self, groups: list[Group]) -> None:
        g0 = 0
        while g0 < len(groups):
            g1, tokens = g0 + 1, len(groups[g0].prefix)
            while g1 < len(groups) and tokens + len(groups[g1].prefix) <= self.max_batch_tokens:
                tokens += len(groups[g1].prefix)
                g1 += 1
            chunk = [g for g in groups[g0:g1] if g.prefix]
            if chunk:
                cu = [0]
                for g in chunk:
                    cu.append(cu[-1] + len(g.prefix))
                    g.request.prefill_tokens += len(g.prefix)
                rows = self._tensor([g.kv_start + j for g in chunk for j in range(len(g.prefix))])
                attention = PrefixPrefillAttention(self._pool, rows, cu, self.scale)
                self.decoder(self._tensor([t for g in chunk for t in g.prefix]),
                             self._tensor([j for g in chunk for j in range(len(g.prefix))]),
                             attention)
            g0 = g1

    def _step(self, docs: list[Doc]) -> None:
        """Feed every document's pending tokens, then advance each one's state."""
        group_index: dict[int, int] = {}
        for d in docs:
            group_index.setdefault(id(d.group), len(group_index))
        prefixes = list({id(d.group): (d.group.kv_start, len(d.group.prefix)) for d in docs}.values())
        lens = [len(d.pending) for d in docs]
        ids = [t for d in docs for t in d.pending]
        positions = [len(d.group.prefix) + d.own_len + j for d, n in zip(docs, lens)
                     for j in range(n)]
        graphs = self._decode_graphs() if max(lens) == 1 else None
        if graphs is not None and graphs.fits(len(docs)):
            hidden = graphs.run(ids, positions, [d.kv_start for d in docs],
                                [d.own_len for d in docs],
                                [group_index[id(d.group)] for d in docs], prefixes)
        else:
            meta = StepMeta.build(lens, [d.kv_start for d in docs], [d.own_len for d in docs],
                                  [group_index[id(d.group)] for d in docs], prefixes,
                                  self.device)
            hidden = self.decoder(self._tensor(ids), self._tensor(positions),
                                  SharedPrefixAttention(self._pool, meta, self.scale, self.impl))
        requests = {}
        for d, n in zip(docs, lens):
            request = d.group.request
            requests[id(request)] = request
            if d.started:
                request.decode_tokens += n
            else:
                request.prefill_tokens += n
                d.started = True
            d.own_len += n
        for request in requests.values():
            request.steps += 1
        self._read_scores(docs, lens, hidden)
        self._sample(docs, lens, hidden)

    def _decode_graphs(self) -> DecodeGraphs | None:
        """The decode-step graphs over the current arena (None when off)."""
        if self.cuda_graphs == "off":
            return None
        if self._graphs is None or self._graphs.pool is not self._pool:
            self._graphs = DecodeGraphs(self.decoder, self._pool, self.scale, self.impl,
                                        capture=self.cuda_graphs == "on")
        return self._graphs

    def _read_scores(self, docs: list[Doc], lens: list[int], hidden: torch.Tensor) -> None:
        # Rows whose next-token distribution is needed: the last one of a decoding document;
        # the answer position and the position after "1" of a think="off" document.
        rows, owners, end = [], [], 0
        for d, n in zip(docs, lens):
            end += n
            if d.sampler is None:
                rows += [end - 2, end - 1] if d.reading else [end - 1]
                owners.append(d)
        if not owners:
            return
        _, argmax, lse, digit_logits = score_head(hidden[self._tensor(rows)],
                                                  self.decoder.lm_head_weight, self.digit_ids,
                                                  impl=self.impl)
        argmax, logprobs = argmax.tolist(), (digit_logits - lse[:, None]).tolist()
        r = 0
        for d in owners:
            if d.reading:
                self._finish(d, Readout(
                    digit_logprobs=tuple(logprobs[r]), zero_after_one_logprob=logprobs[r + 1][0],
                    argmax_answer=argmax[r], argmax_after_one=argmax[r + 1],
                    generated=tuple(d.generated), forced=d.forced))
                r += 2
            else:
                self._advance(d, argmax[r], logprobs[r])
                r += 1

    def _advance(self, d: Doc, token: int, digit_logprobs: list[float]) -> None:
        """One decode row of a scored document: the argmax token and the digits' log-probs of
        the distribution after its last fed token. Decoding documents are fed exactly one token
        per step (the forced answer and the "1" too), so decode steps keep one shape."""
        if d.phase == "think":
            d.generated.append(token)
            decision = self.detector.decide(d.generated, d.budget)
            if decision.kind == "continue":
                d.pending = [token]
                return
            if decision.drop_last:
                d.generated.pop()
            d.forced = decision.forced
            d.queue = ([] if decision.drop_last else [token]) + list(decision.forced)
            d.phase = "force"
        elif d.phase == "answer":
            d.answer = (tuple(digit_logprobs), token)
            d.pending, d.phase = [self.tokens.one], "one"
            return
        elif d.phase == "one":
            (answer_logprobs, answer_argmax) = d.answer
            self._finish(d, Readout(
                digit_logprobs=answer_logprobs, zero_after_one_logprob=digit_logprobs[0],
                argmax_answer=answer_argmax, argmax_after_one=token,
                generated=tuple(d.generated), forced=d.forced))
            return
        # "force": feed the next token of the answer's opening; after the last, the answer position
        d.pending = [d.queue.pop(0)]
        if not d.queue:
            d.phase = "answer"

    def _sample(self, docs: list[Doc], lens: list[int], hidden: torch.Tensor) -> None:
        by_params: dict[SamplingParams, list[tuple[Doc, int]]] = {}
        end = 0
        for d, n in zip(docs, lens):
            end += n
            if d.sampler is not None:
                by_params.setdefault(d.sampler.params, []).append((d, end - 1))
        for params, items in by_params.items():
            rows = hidden[self._tensor([r for _, r in items])]
            tokens, logprobs = sample_rows(rows, self.decoder.lm_head_weight, params,
                                           [d.sampler.generator for d, _ in items],
                                           [not d.generated for d, _ in items])
            for (d, _), token, logprob in zip(items, tokens, logprobs):
                d.generated.append(token)
                d.logprobs.append(logprob)
                if token in self.detector.eos_ids or len(d.generated) >= params.max_new_tokens:
                    self._finish(d, Sample(
                        prompt_ids=d.group.prefix + [d.sampler.last_prompt_token],
                        completion_ids=list(d.generated), logprobs=list(d.logprobs)))
                else:
                    d.pending = [token]

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)
