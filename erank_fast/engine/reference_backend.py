"""The reference backend: each document alone through the transformers model.

Greedy ``generate`` with the same stopping and forcing rules as the engine (the shared
``AnswerDetector``), then one forward pass over the whole sequence and a full-vocabulary
log-softmax at the answer position; sampling token by token with a KV cache and the engine's
own sampling rule. It is the oracle for tests and the baseline for benchmarks. Calls run one at
a time (transformers models are not re-entrant).
"""

from __future__ import annotations

import threading

import torch

from erank_fast.engine.sampling import Sample, SamplingParams, sample_logits
from erank_fast.engine.work import BackendSnapshot, Cancelled, EngineStats
from erank_fast.prompt import QueryPrompts
from erank_fast.scoring import AnswerDetector, Readout, ScoreReadout, ScoreTokens


class _StopAtDecision:
    """transformers stopping criterion: stop once the detector's decision is not "continue"."""

    def __init__(self, detector: AnswerDetector, prompt_len: int, budget: int):
        self.detector, self.prompt_len, self.budget = detector, prompt_len, budget

    def __call__(self, input_ids, scores, **kwargs):
        generated = input_ids[0, self.prompt_len:].tolist()
        stop = bool(generated) and self.detector.decide(generated, self.budget).kind != "continue"
        return torch.tensor([stop], device=input_ids.device)


class ReferenceBackend:
    def __init__(self, hf_model, tokens: ScoreTokens, detector: AnswerDetector):
        self.model = hf_model.eval()
        self.tokens = tokens
        self.detector = detector
        self.rules = ScoreReadout(tokens, detector)
        self._lock = threading.Lock()
        self.steps_run = 0        # forward passes, over all calls
        self._active = 0          # documents of the call being computed

    def inspect(self) -> BackendSnapshot:
        return BackendSnapshot(backend="reference", steps_run=self.steps_run,
                               documents_waiting=0, documents_active=self._active,
                               kv_tokens_in_use=None, kv_tokens_total=None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def run(self, prompts: list[QueryPrompts], budget: int | None, *,
            cancel: threading.Event | None = None) -> tuple[list[list[Readout]], EngineStats]:
        """As ``Engine.run`` (``cancel`` is checked between documents). Counts as the engine does: the prompt and, with think="off", the
        teacher-forced "1" (read in the same pass) are prefill; generated, forced and "1"
        tokens after reasoning are decode; each forward pass is a step."""
        results, prefill, decode, steps = [], 0, 0, 0
        with self._lock:
            self._active = sum(len(p.suffixes) for p in prompts)
            try:
                for p in prompts:
                    row = []
                    for i in range(len(p.suffixes)):
                        if cancel is not None and cancel.is_set():
                            raise Cancelled("the call was cancelled")
                        readout, n_prefill, n_decode, n_steps = self._score_one(p.full(i), budget)
                        row.append(readout)
                        prefill, decode, steps = (prefill + n_prefill, decode + n_decode,
                                                  steps + n_steps)
                        self.steps_run += n_steps
                    results.append(row)
            finally:
                self._active = 0
        return results, EngineStats(prefill, decode, steps)

    @torch.inference_mode()
    def _score_one(self, prompt: list[int], budget: int | None):
        if budget is None:
            ids = self.rules.scored_ids(prompt)
            readout = self.rules.from_logits(self._logits(ids))
            return readout, len(ids), 0, 1
        raw = self._generate(prompt, budget)
        decision = self.detector.decide(raw, budget)
        generated = raw[:-1] if decision.drop_last else raw
        ids = self.rules.scored_ids(prompt, generated, decision.forced)
        readout = self.rules.from_logits(self._logits(ids), generated, decision.forced)
        return readout, len(prompt), len(ids) - len(prompt), len(raw) + 1

    def _logits(self, ids: list[int]) -> torch.Tensor:
        return self.model(torch.tensor([ids], device=self.device)).logits[0]

    def _generate(self, prompt: list[int], budget: int) -> list[int]:
        from transformers import GenerationConfig, StoppingCriteriaList

        eos = sorted(self.detector.eos_ids)
        config = GenerationConfig(
            do_sample=False, max_new_tokens=budget, eos_token_id=eos or None,
            pad_token_id=eos[0] if eos else 0,
        )
        input_ids = torch.tensor([prompt], device=self.device)
        out = self.model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
            stopping_criteria=StoppingCriteriaList([_StopAtDecision(self.detector, len(prompt), budget)]),
        )
        return out[0, len(prompt):].tolist()

    @torch.inference_mode()
    def sample(self, prompts: list[list[int]], params: SamplingParams, *,
               cancel: threading.Event | None = None) -> tuple[list[list[Sample]], EngineStats]:
        """As ``Engine.sample``: the same generators and sampling rule, one sample at a time
        through the transformers model's KV cache."""
        results, prefill, decode, steps = [], 0, 0, 0
        with self._lock:
            for p, prompt in enumerate(prompts):
                if not prompt:
                    raise ValueError(f"prompt {p} is empty")
                row = []
                for i in range(params.n):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("the call was cancelled")
                    generator = params.generator(p, i)
                    out = self.model(torch.tensor([prompt], device=self.device), use_cache=True)
                    prefill, steps = prefill + len(prompt), steps + 1
                    completion, logprobs = [], []
                    while True:
                        (token,), (logprob,) = sample_logits(out.logits[0, -1:], params,
                                                             [generator], [not completion])
                        completion.append(token)
                        logprobs.append(logprob)
                        if token in self.detector.eos_ids or len(completion) >= params.max_new_tokens:
                            break
                        out = self.model(torch.tensor([[token]], device=self.device),
                                         past_key_values=out.past_key_values, use_cache=True)
                        decode, steps = decode + 1, steps + 1
                    row.append(Sample(prompt_ids=list(prompt), completion_ids=completion,
                                      logprobs=logprobs))
                results.append(row)
            self.steps_run += steps
        return results, EngineStats(prefill, decode, steps)
