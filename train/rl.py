"""Stage 2: RL (GRPO) with the listwise reward, rollouts on the erank_fast engine.

    deepspeed --num_gpus 1 train/rl.py --config train/configs/rl.yaml [--key value ...]
    DS_ACCELERATOR=cpu deepspeed --num_gpus 1 train/rl.py --config ...     # on a CPU

Rollouts: TRL's GRPOTrainer calls ``rollout_func`` with the (query, document) prompts of a
generation batch; the erank_fast engine samples ``num_generations`` completions per prompt on
the live policy parameters (shared, not copied, under ZeRO-0/1/2; gathered under ZeRO-3), the
G rollouts of a prompt sharing its prefill.

``--think off`` trains what ``think="off"`` inference reads: the prompt ends with the think-off
continuation (``...<answer>``, the reranker's own token ids), a rollout's first token is drawn
from the score digits and the completion is read as inference reads it
(``--max_completion_length 2`` covers "10"). ``--adapter A --train_adapter true`` keeps training
a LoRA adapter (e.g. erank-smol's) instead of merging it; rollouts then run with the adapter
merged in place for the call and unmerged after, and the result is an adapter again
(``train/export_adapter.py`` packages it).

Whole queries per reward call: the dataset holds exactly ``docs_per_query`` documents per query,
consecutive, queries shuffled once at build time; the trainer does not reshuffle and each
generation batch is ``docs_per_query × num_generations`` completions, i.e. one query (or
several whole ones). ``listwise_reward`` checks this and ranks each query's pooled rollouts.
"""

from __future__ import annotations

import contextlib
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as train_data  # noqa: E402
from erank_fast.prompt import ANSWER_OPEN, THINK_OFF_CONTINUATION  # noqa: E402
from rewards import CASES, RewardConfig, Rollout, query_cases, query_rewards  # noqa: E402


@dataclass
class RLScriptArguments:
    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "policy start (the SFT model): directory or offline name"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter to merge first"})
    train_adapter: bool = field(
        default=False, metadata={"help": "train --adapter itself (LoRA) instead of merging it: "
                                         "the result is an adapter again, and the KL reference "
                                         "is the adapter as loaded"})
    think: str = field(
        default="full", metadata={"help": "'full': rollouts reason, then answer (the paper); "
                                          "'off': prompts end with the think-off continuation "
                                          "(...<answer>) and rollouts write only the score, "
                                          "as think='off' inference reads it"})
    data: str = field(default="../shared/data/dl21-bm25-top100.jsonl")
    qrels: str = field(default="../shared/data/dl21-bm25-top100.qrels")
    max_queries: int | None = field(default=None)
    docs_per_query: int = field(default=20)
    max_doc_tokens: int = field(default=2048, metadata={"help": "document truncation (as the "
                                                                "reranker will be served)"})
    positives: int = field(default=1)
    reference: str = field(default="model",
                           metadata={"help": "reference scores t: 'model' (the start model's "
                                             "expected score, think=off) or 'grades'"})
    reward: str = field(default="rr", metadata={"help": "rr | ndcg | se"})
    positive_scale: float = field(default=1.0)
    negative_above_penalty: float = field(default=-1.0)
    negative_se_scale: float = field(default=0.5)
    invalid_penalty: float = field(default=-1.0)
    resume: bool = field(default=False)
    seed_data: int = field(default=0)


def load_policy(args: RLScriptArguments):
    from sft import load_model

    model, tokenizer = load_model(args.model)
    if args.adapter:
        from peft import PeftModel

        if args.train_adapter:
            model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
        else:
            model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload()
    elif args.train_adapter:
        raise SystemExit("--train_adapter needs --adapter")
    return model, tokenizer


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


def think_off(think: str) -> bool:
    if think not in ("full", "off"):
        raise SystemExit(f"--think must be 'full' or 'off', got {think!r}")
    return think == "off"


def answer_text(completion: str, off: bool) -> str:
    """The text parse_answer reads. A think-off completion continues ``<answer>`` and is read
    as think-off inference reads it: its first digit, or 10 when it starts with "10"."""
    if not off:
        return completion
    digits = re.match(r"\d*", completion).group()
    return ANSWER_OPEN + ("10" if digits.startswith("10") else digits[:1])


def build_dataset(args: RLScriptArguments, model, tokenizer):
    """Rows (query, document), docs_per_query consecutive rows per query; and each prompt's
    token ids, exactly as the reranker builds them."""
    from datasets import Dataset

    from erank_fast import Reranker
    from erank_fast.prompt import PromptBuilder

    queries, qrels = train_data.load(args.data, args.qrels)
    groups = train_data.rl_groups(queries[: args.max_queries], qrels,
                                  docs_per_query=args.docs_per_query, positives=args.positives,
                                  seed=args.seed_data)
    groups = [g for g in groups if len(g["docs"]) == args.docs_per_query]
    if not groups:
        raise SystemExit(f"no query has {args.docs_per_query} candidate documents")
    random.Random(args.seed_data).shuffle(groups)
    if args.reference == "model":
        with merged_adapters(model):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            scorer = Reranker.from_pretrained(base, tokenizer=tokenizer, score_mode="expected",
                                              think="off", max_doc_tokens=args.max_doc_tokens)
            scored = scorer.rerank_many([g["query"] for g in groups],
                                        [g["docs"] for g in groups])
        for g, results in zip(groups, scored):
            g["reference"] = [r.score for r in sorted(results, key=lambda r: r.index)]
    off = think_off(args.think)
    builder = PromptBuilder(tokenizer, max_doc_tokens=args.max_doc_tokens)
    rows, prompt_ids = [], {}
    for g in groups:
        for doc, relevant, reference in zip(g["docs"], g["relevant"], g["reference"]):
            text = builder.chat_text(builder.user_message(g["query"], doc))
            text += THINK_OFF_CONTINUATION if off else ""
            prompt_ids[text] = builder.prompt_ids(g["query"], doc, think_off=off)
            rows.append({"prompt": text, "qid": g["qid"], "relevant": relevant,
                         "reference": reference})
    return Dataset.from_list(rows), prompt_ids


def make_listwise_reward(config: RewardConfig, docs_per_query: int, generations: int,
                         think: str = "full"):
    from erank_fast.scoring import parse_answer

    def listwise_reward(prompts, completions, qid, relevant, reference, **kwargs):
        by_query: dict[str, list[int]] = {}
        for i, q in enumerate(qid):
            by_query.setdefault(q, []).append(i)
        off = think_off(think)
        text = [answer_text(c if isinstance(c, str) else c[-1]["content"], off)
                for c in completions]
        rewards, cases = [0.0] * len(completions), [""] * len(completions)
        for q, rows in by_query.items():
            if len(rows) != docs_per_query * generations:
                raise RuntimeError(
                    f"query {q}: {len(rows)} rollouts in this reward call, expected "
                    f"{docs_per_query} documents × {generations} rollouts")
            rollouts = [Rollout(bool(relevant[i]), float(reference[i]), parse_answer(text[i]))
                        for i in rows]
            for i, r, c in zip(rows, query_rewards(rollouts, config), query_cases(rollouts)):
                rewards[i], cases[i] = r, c
        log = kwargs.get("log_metric")
        if log is not None:
            log("unparseable_fraction", cases.count("invalid") / len(cases))
            for case in CASES:
                values = [r for r, c in zip(rewards, cases) if c == case]
                log(f"reward_{case}", sum(values) / len(values) if values else 0.0)
        return rewards

    return listwise_reward


def make_rollout(tokenizer, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                 prompt_ids: dict[str, list[int]] | None = None, score_first: bool = False):
    """rollout_func for GRPOTrainer: the erank_fast engine on the live policy parameters.
    ``prompt_ids``: token ids of known prompt texts (others are tokenized here).
    ``score_first``: the first token is drawn from the score digits (think-off prompts end
    with ``<answer>``; inference reads only the digits there, renormalised)."""
    from erank_fast.engine.engine import Engine
    from erank_fast.engine.sampling import SamplingParams
    from erank_fast.models.loading import decoder_from_hf_model
    from erank_fast.scoring import AnswerDetector, ScoreTokens

    tokens = ScoreTokens.from_tokenizer(tokenizer)
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    detector = AnswerDetector(tokenizer, eos)

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
                                first_token_ids=tuple(tokens.digits) if score_first else None)
        with gather, merged_adapters(model):
            # Built per call over the current parameter objects: no copy, always the live weights.
            engine = Engine(decoder_from_hf_model(model), tokens, detector)
            samples, _ = engine.sample(ids, params)
        queues = {p: iter(s) for p, s in zip(unique, samples)}
        flat = [next(queues[p]) for p in prompts]
        return {"prompt_ids": [s.prompt_ids for s in flat],
                "completion_ids": [s.completion_ids for s in flat],
                "logprobs": [s.logprobs for s in flat]}

    return rollout


def main(argv=None) -> None:
    from trl import GRPOConfig, GRPOTrainer, TrlParser

    from sft import train_and_save

    parser = TrlParser((RLScriptArguments, GRPOConfig))
    args, config = parser.parse_args_and_config(argv)
    think_off(args.think)  # refuse a bad value before loading anything
    config.shuffle_dataset = False  # queries were shuffled at build time; keep them whole
    per_step = config.per_device_train_batch_size * config.world_size
    generation = args.docs_per_query * config.num_generations
    if generation % per_step:
        raise SystemExit(f"docs_per_query × num_generations ({generation}) must be a multiple of "
                         f"per_device_train_batch_size × processes ({per_step})")
    config.generation_batch_size, config.steps_per_generation = generation, generation // per_step
    model, tokenizer = load_policy(args)
    dataset, prompt_ids = build_dataset(args, model, tokenizer)
    reward = make_listwise_reward(
        RewardConfig(kind=args.reward, positive_scale=args.positive_scale,
                     negative_above_penalty=args.negative_above_penalty,
                     negative_se_scale=args.negative_se_scale, invalid_penalty=args.invalid_penalty),
        args.docs_per_query, config.num_generations, args.think)
    rollout = make_rollout(tokenizer, config.max_completion_length, config.temperature,
                           config.top_p, config.top_k or 0, prompt_ids,
                           score_first=think_off(args.think))
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, rollout_func=rollout)
    train_and_save(trainer, tokenizer, config.output_dir, args.resume)


if __name__ == "__main__":
    main()
