"""The scheduler: which documents run in the next step.

Documents wait in arrival order until their K/V fits the arena (admission reserves the most
rows a document can ever need, plus its query's prefix once) and their tokens fit the step's
budget. On CPU the arena starts at what the first work needs and grows, rows in flight kept,
when later work does not fit, up to the memory budget (on CUDA it is the budget from the
start). Finished documents release their rows at once (the prefix's when its query's last
document is done). Calls whose cancel event is set lose their documents at the next step
boundary, waiting or running, and their rows are released; an engine failure ends every call
in flight and empties the arena.
"""

from __future__ import annotations

import collections
import threading

import torch

from erank_fast.engine.kv_pool import KVPool, RangeAllocator
from erank_fast.engine.work import Cancelled, Doc, Group, Request
from erank_fast.models.decoder_config import DecoderConfig

DEFAULT_CPU_KV_MEMORY = 2 * 2**30
DEFAULT_GPU_KV_FRACTION = 0.9


class Scheduler:
    def __init__(self, config: DecoderConfig, dtype: torch.dtype, device: torch.device, *,
                 kv_memory: int | None, max_batch_tokens: int):
        self.config, self.dtype, self.device = config, dtype, device
        self.kv_memory, self.max_batch_tokens = kv_memory, max_batch_tokens
        self.pool: KVPool | None = None
        self.waiting: collections.deque[Doc] = collections.deque()
        self.active: list[Doc] = []
        self.lock = threading.Lock()
        self._cancellable: list[Request] = []  # calls in flight that carry a cancel event
        self._order = 0
        self._max_tokens: int | None = None

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
            rows = memory // KVPool.bytes_per_token(self.config, self.dtype)
            self._max_tokens = max(0, rows - KVPool.SCRATCH_ROWS)
        return self._max_tokens

    @property
    def kv_tokens_in_use(self) -> int:
        return self.pool.ranges.in_use if self.pool is not None else 0

    def add(self, request: Request, docs: list[Doc]) -> None:
        """Queue a call's documents; refuses (ValueError) a document that could never fit."""
        for d in docs:
            need = len(d.group.prefix) + d.reserve
            if need > self.max_kv_tokens:
                raise ValueError(
                    f"query {d.group.index}, document {d.index} needs {need} K/V tokens (prefix "
                    f"{len(d.group.prefix)} + own {d.reserve}) but the K/V memory budget holds "
                    f"{self.max_kv_tokens}; raise kv_memory or lower max_doc_tokens / "
                    "max_think_tokens")
        for d in docs:
            d.group.docs_left += 1
            request.results[d.group.index].append(None)
        request.docs_left = len(docs)
        if not docs:
            request.done.set()
            return
        with self.lock:
            for g in request.groups:
                g.order, self._order = self._order, self._order + 1
            self.waiting.extend(docs)
            if request.cancel is not None:
                self._cancellable.append(request)

    def has_work(self) -> bool:
        return bool(self.active or self.waiting)

    def schedule(self) -> tuple[list[Doc], list[Group]] | None:
        """The next step's documents (running ones, then newly admitted, each query's
        contiguous) and the groups whose prefix must be prefilled first; None when no work
        is left."""
        self._drop_cancelled()
        if not self.has_work():
            return None
        self._ensure_pool()
        admitted, new_groups = self._admit()
        docs = sorted(self.active + admitted, key=lambda d: d.group.order)
        if not docs:
            raise RuntimeError("the scheduler could not admit any document")
        return docs, new_groups

    def account(self, new_groups: list[Group], docs: list[Doc], lens: list[int]) -> None:
        """Count a step's tokens on the calls that own them."""
        for g in new_groups:
            g.request.prefill_tokens += len(g.prefix)
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

    def finish(self, d: Doc, result) -> None:
        """A document's result is ready: release its rows and deliver it."""
        d.readout = result
        self._release(d)
        request = d.group.request
        request.results[d.group.index][d.index] = result
        request.docs_left -= 1
        if request.docs_left == 0:
            request.done.set()

    def retire(self, docs: list[Doc]) -> None:
        """After a step: the documents still running."""
        self.active = [d for d in docs if d.readout is None]

    def fail_all(self, error: BaseException, step: list[Doc] = ()) -> None:
        """An engine failure (e.g. out of memory) ends every call in flight with that error and
        leaves the engine empty and usable. step: the failed step's documents (those admitted
        for it are neither waiting nor active yet)."""
        with self.lock:
            docs = self.active + list(self.waiting)
            self.active, self.waiting = [], collections.deque()
        seen = {id(d) for d in docs}
        docs += [d for d in step if id(d) not in seen and d.readout is None]
        for d in docs:
            d.group.kv_start = None
            d.group.request.error = error
            d.group.request.done.set()
        if self.pool is not None:
            self.pool.ranges = RangeAllocator(self.pool.tokens)

    def _release(self, d: Doc) -> None:
        ranges = self.pool.ranges
        if d.kv_start >= 0:
            ranges.release(d.kv_start, d.reserve)
            d.kv_start = -1
        g = d.group
        g.docs_left -= 1
        if g.docs_left == 0 and g.kv_start is not None:
            ranges.release(g.kv_start, len(g.prefix))
            g.kv_start = None

    def _drop_cancelled(self) -> None:
        # Per step only the few calls with a cancel event are checked, not every document.
        with self.lock:
            self._cancellable = [r for r in self._cancellable if not r.done.is_set()]
            if not any(r.cancelled for r in self._cancellable):
                return
            doomed = [d for d in self.active + list(self.waiting) if d.group.request.cancelled]
            if not doomed:
                return
            self.waiting = collections.deque(d for d in self.waiting
                                             if not d.group.request.cancelled)
            self.active = [d for d in self.active if not d.group.request.cancelled]
        requests = {}
        for d in doomed:
            if self.pool is not None:
                self._release(d)
            requests[id(d.group.request)] = d.group.request
        for request in requests.values():
            request.error = Cancelled("the call was cancelled")
            request.done.set()

    def _ensure_pool(self) -> None:
        """Allocate the arena at first use: the whole budget on CUDA; on CPU what the waiting
        work needs (within the budget), allocated afresh when it is empty and too small, then
        at least 1.5× the old one as ``_grow`` gives (while it holds rows, ``_grow`` enlarges
        it): calls a little larger each time do not each zero a new arena (~0.3 s for 100
        SmolLM2 documents in float32 on a 2-core Zen 3)."""
        if self.pool is not None and (self.pool.ranges.in_use or self.active):
            return
        if self.device.type == "cuda":
            want = self.max_kv_tokens
        else:
            with self.lock:
                want = min(self.max_kv_tokens, self._waiting_rows())
        if self.pool is None or self.pool.tokens < want:
            if self.pool is not None:
                want = min(self.max_kv_tokens, max(want, self.pool.tokens * 3 // 2))
            self.pool = None  # free the old arena before allocating the new one
            self.pool = KVPool(self.config, want, self.dtype, self.device)

    def _admit(self) -> tuple[list[Doc], list[Group]]:
        """Waiting documents, in arrival order, while their K/V fits and the step's tokens fit
        (on CPU the arena grows first, within the budget, when the next one's rows do not)."""
        tokens = sum(len(d.pending) for d in self.active)
        admitted, new_groups = [], []
        with self.lock:
            while self.waiting:
                d = self.waiting[0]
                n = len(d.pending)
                if (admitted or self.active) and tokens + n > self.max_batch_tokens:
                    break
                fresh = d.group.kv_start is None
                if not self._place(d) and not (self._grow() and self._place(d)):
                    break
                if fresh:
                    new_groups.append(d.group)
                admitted.append(self.waiting.popleft())
                tokens += n
        return admitted, new_groups

    def _place(self, d: Doc) -> bool:
        """Rows for a document (and its query's prefix, the first time), or False and nothing
        held when they do not fit."""
        ranges, g = self.pool.ranges, d.group
        fresh = g.kv_start is None
        if fresh:
            g.kv_start = ranges.alloc(len(g.prefix))
            if g.kv_start is None:
                return False
        d.kv_start = ranges.alloc(d.reserve)
        if d.kv_start is None:
            d.kv_start = -1
            if fresh:
                ranges.release(g.kv_start, len(g.prefix))
                g.kv_start = None
            return False
        return True

    def _grow(self) -> bool:
        """On CPU, where the arena was sized for the work waiting when it was last empty: grow
        it (keeping the rows in flight) to what every waiting document needs, at least 1.5×,
        within the budget. Without this, a server whose first call was small would run every
        later call with that call's few documents in flight for as long as it stays busy.
        Caller holds the lock."""
        pool = self.pool
        if self.device.type == "cuda" or pool.tokens >= self.max_kv_tokens:
            return False
        need = pool.ranges.in_use + self._waiting_rows()
        pool.grow(min(self.max_kv_tokens, max(need, pool.tokens * 3 // 2)))
        return True

    def _waiting_rows(self) -> int:
        """Rows the waiting documents would hold: each one's reserve, and once the prefix of
        each query that holds none yet. Caller holds the lock."""
        groups = {id(d.group): len(d.group.prefix) for d in self.waiting
                  if d.group.kv_start is None}
        return sum(d.reserve for d in self.waiting) + sum(groups.values())
