"""What users would otherwise run, on the same model and prompts as erank_fast:

- ``TransformersScorer``: each document's prompt through the transformers model, padded batches,
  sdpa attention, full-vocabulary logits (greedy ``generate`` first in thinking modes, then the
  forced answer, as erank_fast's rules).
- ``generate_batch_scores``: transformers' own serving engine (continuous batching, paged
  attention, ``allow_block_sharing=True`` so the shared prefix can be reused), generating the
  answer token with its log-probability.
"""

from __future__ import annotations

import torch

from erank_fast.scoring import Readout, readout_from_logits
from erank_fast.training.data import left_pad

BATCH = 16


class TransformersScorer:
    def __init__(self, model, tokenizer, reranker):
        self.model, self.tokenizer, self.rr = model, tokenizer, reranker
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _padded(self, seqs):
        batch = left_pad(seqs, self.pad)  # every sequence ends at the last column
        device = next(self.model.parameters()).device
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    @torch.inference_mode()
    def score(self, query: str, docs: list[str], think) -> tuple[list[Readout], int]:
        """Readouts in input order and the number of tokens the model computed (padding too)."""
        budget = self.rr.config.budget(think)
        prompts = [self.rr.prompt_ids(query, d, think_off=think == "off") for d in docs]
        readouts, computed = [], 0
        for b0 in range(0, len(prompts), BATCH):
            batch = prompts[b0 : b0 + BATCH]
            if budget is not None:
                batch, n = self._think(batch, budget)
                computed += n
            ids, mask = self._padded([p + [self.rr.tokens.one] for p in batch])
            computed += ids.numel()
            logits = self.model(input_ids=ids, attention_mask=mask).logits[:, -2:]
            readouts += [readout_from_logits(row, self.rr.tokens) for row in logits]
        return readouts, computed

    def _think(self, batch, budget):
        from transformers import GenerationConfig

        ids, mask = self._padded(batch)
        config = GenerationConfig(do_sample=False, max_new_tokens=budget,
                                  eos_token_id=sorted(self.rr.answer_detector.eos_ids),
                                  pad_token_id=self.pad)
        out = self.model.generate(ids, attention_mask=mask, generation_config=config)
        forced = []
        for p, row in zip(batch, out[:, ids.shape[1]:].tolist()):
            generated = []
            for t in row:  # the same stop and forcing rules as the engine
                generated.append(t)
                decision = self.rr.answer_detector.decide(generated, budget)
                if decision.kind != "continue":
                    break
            if decision.drop_last:
                generated.pop()
            forced.append(p + generated + list(decision.forced))
        return forced, out.numel()


def generate_batch_scores(model, prompts: list[list[int]], think_tokens: int) -> int:
    """Run transformers' continuous-batching engine; returns the tokens it generated."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=think_tokens + 1,
                              eos_token_id=model.generation_config.eos_token_id,
                              pad_token_id=model.generation_config.pad_token_id or 0)
    batching = ContinuousBatchingConfig(allow_block_sharing=True, return_logprobs=True)
    out = model.generate_batch(prompts, generation_config=config,
                               continuous_batching_config=batching, warmup=False)
    return sum(len(o.generated_tokens) for o in out.values())
