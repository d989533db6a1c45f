"""The reference backend: each document alone through the transformers model.

Greedy ``generate`` with the same stopping and forcing rules as the engine (the shared
``AnswerDetector``), then one forward pass over the whole sequence and a full-vocabulary
log-softmax at the answer position. It is the oracle for tests and the baseline for benchmarks.
"""

from __future__ import annotations

import torch

from erank_fast.engine.work import EngineStats
from erank_fast.prompt import QueryPrompts
from erank_fast.scoring import AnswerDetector, Readout, ScoreTokens


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

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def run(self, prompts: list[QueryPrompts], budget: int | None
            ) -> tuple[list[list[Readout]], EngineStats]:
        results, prefill, decode = [], 0, 0
        for p in prompts:
            row = []
            for i in range(len(p.suffixes)):
                readout, n_prompt, n_generated = self._score_one(p.full(i), budget)
                row.append(readout)
                prefill += n_prompt
                decode += n_generated
            results.append(row)
        return results, EngineStats(prefill, decode, steps=decode)

    @torch.inference_mode()
    def _score_one(self, prompt: list[int], budget: int | None):
        generated: list[int] = []
        forced: tuple[int, ...] = ()
        if budget is not None:
            generated = self._generate(prompt, budget)
            decision = self.detector.decide(generated, budget)
            if decision.drop_last:
                generated = generated[:-1]
            forced = decision.forced
        ids = prompt + generated + list(forced) + [self.tokens.one]
        logits = self.model(torch.tensor([ids], device=self.device)).logits[0, -2:].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        digits = torch.tensor(self.tokens.digits, device=self.device)
        readout = Readout(
            digit_logprobs=tuple(logprobs[0, digits].tolist()),
            zero_after_one_logprob=float(logprobs[1, self.tokens.digits[0]]),
            argmax_answer=int(logits[0].argmax()),
            argmax_after_one=int(logits[1].argmax()),
            generated=tuple(generated),
            forced=forced,
        )
        return readout, len(prompt), len(ids) - len(prompt)

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
