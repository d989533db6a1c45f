"""The engine: every document of every call through one loop, schedule → run → read out →
finish (continuous batching).

- ``Scheduler`` (scheduler.py): queues, admission from the K/V arena's memory budget,
  cancellation, releasing rows as documents finish;
- ``ModelRunner`` (model_runner.py): prefix prefill once per query, then steps that feed each
  document's pending tokens with shared-prefix attention (CUDA graphs for pure decode steps);
- ``ScoreReader`` (readout.py): each scored document's ERank readout, through the
  vocabulary-streaming score head; ``sample_step`` (sampling.py): RL rollouts.

Calls from several threads share the loop: whichever thread finds it idle drives it, for
every call's documents, until its own call is done; then it returns its results and hands the
loop to a thread still waiting (woken after each step), so no caller waits on others' work.
"""

from __future__ import annotations

import threading

import torch

from erank_fast.cpu import keep_freed_memory
from erank_fast.engine.model_runner import ModelRunner
from erank_fast.engine.readout import ScoreReader
from erank_fast.engine.sampling import (
    Sample,
    SampledDoc,
    SamplerState,
    SamplingParams,
    sample_step,
)
from erank_fast.engine.scheduler import Scheduler
from erank_fast.engine.work import BackendSnapshot, Doc, EngineStats, Request
from erank_fast.models.decoder import Decoder
from erank_fast.ops.arena_attention import (
    HEAD_DIMS,
    bfloat16_arena_available,
    int8_attention_available,
)
from erank_fast.ops.cpu_extension import cpu_kernels
from erank_fast.ops.int8_linear import int8_unavailable_reason, quantize_decoder_layers
from erank_fast.ops.packed_linear import (
    pack_linears,
    padding_pays,
    rows_unpadded_above,
    rows_unpadded_below,
)
from erank_fast.prompt import QueryPrompts
from erank_fast.scoring import AnswerDetector, Readout, ScoreTokens

# Tokens per forward pass: large on GPUs. On CPU, a step's fixed costs (each layer's weights
# streamed, oneDNN's per-call set-up, the step's Python) are paid once per step, and the
# attention kernels read the arena in place, so larger steps cost nothing in padding: measured
# on a 2-core Xeon with AMX, SmolLM2-135M, three DL19 queries x 100, 4096 against 2048 tokens
# per step: bfloat16 think off 1.11x, think = 64 1.06x, float32 1.15x (8192: 1.15x, 1.10x,
# 1.15x; a step then takes ~2 s, which a call arriving meanwhile waits for). bench/NOTES.md.
DEFAULT_MAX_BATCH_TOKENS = {"cuda": 8192, "cpu": 4096}


class Engine:
    def __init__(self, decoder: Decoder, tokens: ScoreTokens, detector: AnswerDetector, *,
                 max_batch_tokens: int | None = None, impl: str = "auto",
                 kv_memory: int | None = None, cuda_graphs: str = "auto",
                 pack_weights: bool = False, quantize: str = "none"):
        """impl: "auto" (Triton kernels on CUDA, PyTorch elsewhere), "torch" or "triton".
        max_batch_tokens: tokens per forward pass (default 8192 on CUDA, 4096 on CPU).
        kv_memory: bytes for the K/V arena (default: 90% of free GPU memory, 2 GiB on CPU).
        cuda_graphs: decode steps replayed from CUDA graphs: "auto" (on CUDA with the Triton
        kernels), "on", "off", or "padded" (the padded steps the graphs replay, run eagerly:
        for checking the padding on any device). Graphs record the addresses of the weights
        and the arena: weights may change in place (training), not be reallocated.
        pack_weights: on CPU, replace the decoder's linear layers and the lm_head by packed
        copies (``ops.packed_linear``): faster, but later changes to the weights are not seen,
        so only for weights the engine owns (never a model being trained).
        quantize: "int8" replaces the decoder layers' linear layers by int8 copies
        (``ops.int8_linear``; float32 or bfloat16 on a CPU with AMX-INT8, AVX512-VNNI or
        AVX2, else ValueError); likewise only for weights the engine owns. On a float32 model with
        AVX512-VNNI the prefill attention is int8 too, over a bfloat16 K/V arena
        (``ops.arena_attention``); on a CPU without AVX-512 the K/V arena is bfloat16 as well,
        its attention float32."""
        weight = decoder.lm_head_weight
        if weight.device.type == "cpu":
            cpu_kernels()  # built (once per machine) or loaded here, not in the first call
            keep_freed_memory()
        self.decoder, self.tokens, self.detector = decoder, tokens, detector
        self.quantized_layers = 0
        if quantize == "int8":
            reason = int8_unavailable_reason(weight.dtype)
            if reason is not None:
                raise ValueError(f'quantize="int8" cannot run here: {reason}')
            self.quantized_layers = quantize_decoder_layers(decoder.model.layers)
        self.packed_layers = pack_linears(decoder.model) if pack_weights else 0
        decoder.pad_rows = (self.packed_layers > 0 and padding_pays(weight.dtype)
                            or self.quantized_layers > 0)
        decoder.unpadded_above = rows_unpadded_above(decoder.model) if self.packed_layers else None
        decoder.unpadded_below = (rows_unpadded_below(decoder.model.layers)
                                  if self.quantized_layers else None)
        # int8 layers on a float32 model also run their prefill attention in int8 where the
        # CPU has AVX512-VNNI, over a bfloat16 K/V arena (ops.arena_attention)
        # (without AVX-512, float32 attention over a bfloat16 arena: half the K/V bytes)
        arena_kernel = (self.quantized_layers > 0 and weight.device.type == "cpu"
                        and decoder.config.head_dim in HEAD_DIMS)
        int8_attention = arena_kernel and int8_attention_available(weight.dtype)
        self.runner = ModelRunner(decoder, impl, cuda_graphs, int8_attention=int8_attention)
        bf16_arena = int8_attention or (arena_kernel and bfloat16_arena_available(weight.dtype))
        self.kv_dtype = torch.bfloat16 if bf16_arena else weight.dtype
        self.scheduler = Scheduler(decoder.config, self.kv_dtype, weight.device,
                                   kv_memory=kv_memory,
                                   max_batch_tokens=max_batch_tokens
                                   or DEFAULT_MAX_BATCH_TOKENS.get(weight.device.type, 4096))
        # The lm_head stays in the model's dtype under quantize="int8" (the decoder's linear
        # layers are int8 then, so none was left to pack), and is packed as without int8.
        self.reader = ScoreReader(weight, tokens, detector, impl,
                                  pack_weights=self.packed_layers > 0 or self.quantized_layers > 0,
                                  one_token_steps=self.runner.cuda_graphs != "off")
        self.steps_run = 0  # forward passes (steps) run so far, over all calls
        self._loop = threading.Condition()  # guards _driving; notified after every step
        self._driving = False

    @property
    def vocab_size(self) -> int:
        return self.decoder.config.vocab_size

    @property
    def device(self) -> torch.device:
        return self.decoder.lm_head_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.lm_head_weight.dtype

    @property
    def max_kv_tokens(self) -> int:
        return self.scheduler.max_kv_tokens

    @property
    def kv_tokens_in_use(self) -> int:
        """K/V rows held by calls in flight (0 when idle)."""
        return self.scheduler.kv_tokens_in_use

    def inspect(self) -> BackendSnapshot:
        s = self.scheduler
        with s.lock:
            waiting, active = len(s.waiting), len(s.active)
        pool = s.pool
        return BackendSnapshot(backend="engine", steps_run=self.steps_run,
                               documents_waiting=waiting, documents_active=active,
                               kv_tokens_in_use=s.kv_tokens_in_use,
                               kv_tokens_total=s.max_kv_tokens,
                               kv_arena_rows=pool.tokens if pool is not None else 0,
                               kv_arena_bytes=pool.bytes if pool is not None else 0)

    def run(self, prompts: list[QueryPrompts], budget: int | None, *,
            cancel: threading.Event | None = None) -> tuple[list[list[Readout]], EngineStats]:
        """Score every document of every query. ``budget``: None for think="off" (the prompts
        end at the answer position), else the most reasoning tokens a document may write.
        ``cancel``: set it from another thread to abandon the call (``Cancelled`` is raised
        and the call's K/V rows are released at the next step)."""
        request = Request(cancel)
        docs = []
        for p in prompts:
            group = request.add_group(p.prefix)
            docs += [self.reader.document(group, i, suffix, budget)
                     for i, suffix in enumerate(p.suffixes)]
        return self._submit(request, docs)

    def sample(self, prompts: list[list[int]], params: SamplingParams, *,
               cancel: threading.Event | None = None) -> tuple[list[list[Sample]], EngineStats]:
        """``params.n`` samples per prompt; the n samples of a prompt share its prefill."""
        request = Request(cancel)
        docs = []
        for p, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {p} is empty")
            group = request.add_group(list(prompt[:-1]))
            for i in range(params.n):
                state = SamplerState(params, params.generator(p, i), prompt[-1])
                docs.append(SampledDoc(group=group, index=i, pending=[prompt[-1]],
                                       reserve=1 + params.max_new_tokens, sampler=state))
        return self._submit(request, docs)

    @torch.inference_mode()
    def _submit(self, request: Request, docs: list[Doc]):
        self.scheduler.add(request, docs)
        while True:
            with self._loop:
                while self._driving and not request.done.is_set():
                    self._loop.wait()
                if request.done.is_set():
                    break
                self._driving = True
            try:
                self._drive(request)
            finally:
                with self._loop:
                    self._driving = False
                    self._loop.notify_all()
        if request.error is not None:
            raise request.error
        return request.results, request.stats()

    def _drive(self, own: Request) -> None:
        """Run steps over every call's documents until ``own`` is done (or no work is left)."""
        scheduler = self.scheduler
        docs: list[Doc] = []
        try:
            while not own.done.is_set() and (batch := scheduler.schedule()) is not None:
                docs, new_groups = batch
                if new_groups:
                    self.runner.prefill_prefixes(new_groups, scheduler.pool,
                                                 scheduler.max_batch_tokens)
                fed = [len(d.pending) for d in docs]
                read = [min(n, d.rows_read()) for d, n in zip(docs, fed)]
                hidden = self.runner.step(docs, scheduler.pool, read)
                self.steps_run += 1
                scheduler.account(new_groups, docs, fed)
                finished = self.reader.read(docs, read, hidden) + sample_step(
                    docs, read, hidden, self.decoder.lm_head_weight, self.detector.eos_ids)
                for d, result in finished:
                    scheduler.finish(d, result)
                scheduler.retire(docs)
                with self._loop:  # callers whose documents finished (or were dropped) return
                    self._loop.notify_all()
        except BaseException as error:
            # The step's documents too: those admitted for it are not active until it ends.
            scheduler.fail_all(error, docs)
