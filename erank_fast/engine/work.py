"""The units of work the engine schedules: requests, query groups (a shared prefix) and
documents (or samples), with their per-document decode state."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


class Cancelled(RuntimeError):
    """The call was cancelled (its cancel event was set) before its results were ready."""


@dataclass(frozen=True)
class EngineStats:
    prefill_tokens: int   # tokens computed in prefill (each prefix once, each suffix)
    decode_tokens: int    # tokens fed by decode steps (generated, forced, teacher-forced)
    steps: int            # forward passes that served the request


@dataclass(frozen=True)
class BackendSnapshot:
    """What a backend is doing now, the same fields for every backend (``Reranker.inspect()``).

    kv_tokens_in_use / kv_tokens_total: K/V arena rows held by calls in flight and the rows the
    memory budget allows; None for a backend without a K/V arena (the reference backend keeps
    each document's cache inside transformers for the length of one forward). steps_run:
    forward passes run so far over all calls. documents_waiting / documents_active: queued for
    admission, and being computed (the reference backend: 0 / the documents of the call it is
    computing). kv_arena_rows / kv_arena_bytes: the K/V arena allocated so far (0 before the
    first call; None without an arena)."""

    backend: str
    steps_run: int
    documents_waiting: int
    documents_active: int
    kv_tokens_in_use: int | None
    kv_tokens_total: int | None
    kv_arena_rows: int | None = None   # rows allocated so far (the arena grows to the budget)
    kv_arena_bytes: int | None = None  # their K and V bytes


class Request:
    """One engine call: its groups and documents, results, counters, and a done signal."""

    def __init__(self, cancel: threading.Event | None = None):
        self.cancel = cancel  # set by the caller (from any thread) to abandon the call
        self.groups: list[Group] = []
        self.results: list[list] = []
        self.docs_left = 0
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.prefill_tokens = 0
        self.decode_tokens = 0
        self.steps = 0

    def add_group(self, prefix: list[int]) -> "Group":
        group = Group(prefix=prefix, request=self, index=len(self.groups))
        self.groups.append(group)
        self.results.append([])
        return group

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()

    def stats(self) -> EngineStats:
        return EngineStats(self.prefill_tokens, self.decode_tokens, self.steps)


@dataclass(eq=False)
class Group:
    """A query (or a sampled prompt): its prefix K/V is stored once while any document is live."""

    prefix: list[int]
    request: Request
    index: int
    docs_left: int = 0
    kv_start: int | None = None  # arena row of the prefix once stored
    order: int = 0               # global admission order: steps keep groups contiguous


@dataclass(eq=False)
class Doc:
    """What the scheduler and the model runner need of any document: its group, the tokens it
    feeds next, its own K/V rows, and its result once done. A scored document
    (``readout.ScoredDoc``) and a sampled sequence (``sampling.SampledDoc``) add their own state."""

    group: Group
    index: int
    pending: list[int]          # tokens fed at the next step
    reserve: int                # own K/V rows reserved: the most this document can ever need
    kv_start: int = -1
    own_len: int = 0
    started: bool = False
    generated: list[int] = field(default_factory=list)
    readout: object | None = None  # the finished result (a Readout or a Sample)

    def rows_read(self) -> int:
        """How many of the last fed tokens the next step reads (the others' last-layer rows
        are not computed)."""
        return 1
