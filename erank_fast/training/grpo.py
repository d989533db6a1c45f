"""GRPO with ERank's listwise reward: the RL dataset (whole queries), the reward function over
a query's pooled rollouts, and how a think-off completion is read.

Whole queries per reward call: the dataset holds exactly ``docs_per_query`` documents per query,
consecutive, queries shuffled once at build time; the trainer does not reshuffle and each
generation batch is ``docs_per_query × num_generations`` completions, i.e. one query (or
several whole ones). ``listwise_reward`` checks this and ranks each query's pooled rollouts.
"""

from __future__ import annotations

import random
import re

from erank_fast.config import parse_think
from erank_fast.prompt import ANSWER_OPEN, DEFAULT_TEMPLATE, THINK_OFF_CONTINUATION
from erank_fast.training import data as train_data
from erank_fast.training.rewards import (
    CASES,
    RewardConfig,
    Rollout,
    query_cases,
    query_rewards,
)
from erank_fast.training.rollouts import merged_adapters


def think_off(think: str) -> bool:
    """Whether RL rollouts answer at once ("off") or reason first ("full"); token budgets
    are an inference setting only."""
    if parse_think(think) not in ("full", "off"):
        raise ValueError(f"RL rollouts take think 'full' or 'off', got {think!r}")
    return think == "off"


def answer_text(completion: str, off: bool) -> str:
    """The text parse_answer reads. A think-off completion continues ``<answer>`` and is read
    as think-off inference reads it: its first digit, or 10 when it starts with "10"."""
    if not off:
        return completion
    digits = re.match(r"\d*", completion).group()
    return ANSWER_OPEN + ("10" if digits.startswith("10") else digits[:1])


def expected_score_scorer(model, tokenizer, max_doc_tokens: int,
                          template: str = DEFAULT_TEMPLATE):
    """A scorer for ``rl_dataset``'s reference: the model's own expected think-off score
    (``Reranker``, on the model's weights in place, LoRA merged for the call)."""
    def score(queries: list[str], documents: list[list[str]]) -> list[list[float]]:
        from erank_fast import Reranker

        with merged_adapters(model):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            scorer = Reranker.from_pretrained(base, tokenizer=tokenizer, score_mode="expected",
                                              think="off", max_doc_tokens=max_doc_tokens,
                                              template=template)
            return [[r.score for r in sorted(res, key=lambda r: r.index)]
                    for res in scorer.rerank_many(queries, documents)]
    return score


def rl_dataset(tokenizer, *, data: str, qrels: str, max_queries: int | None,
               docs_per_query: int, positives: int, reference: str, think: str,
               max_doc_tokens: int, seed: int, scorer=None,
               template: str = DEFAULT_TEMPLATE):
    """(datasets.Dataset of rows {"prompt", "qid", "relevant", "reference"}, {prompt text:
    token ids}): ``docs_per_query`` consecutive rows per query, queries shuffled once with
    ``seed``; each prompt's token ids exactly as the reranker builds them. ``reference``:
    "model" (the reference score t from ``scorer(queries, documents)`` -> scores in input
    order, e.g. ``expected_score_scorer``) or "grades". ``template``: the prompt's layout
    (``erank_fast.prompt.TEMPLATES``)."""
    from datasets import Dataset

    from erank_fast.prompt import PromptBuilder

    queries, judgments = train_data.load(data, qrels)
    groups = train_data.rl_groups(queries[:max_queries], judgments,
                                  docs_per_query=docs_per_query, positives=positives,
                                  seed=seed)
    groups = [g for g in groups if len(g["docs"]) == docs_per_query]
    if not groups:
        raise ValueError(f"no query has {docs_per_query} candidate documents")
    random.Random(seed).shuffle(groups)
    if reference not in ("model", "grades"):
        raise ValueError(f"reference must be 'model' or 'grades', got {reference!r}")
    if reference == "model":
        if scorer is None:
            raise ValueError("reference 'model' needs a scorer (expected_score_scorer)")
        scored = scorer([g["query"] for g in groups], [g["docs"] for g in groups])
        for g, scores in zip(groups, scored):
            g["reference"] = list(scores)
    off = think_off(think)
    builder = PromptBuilder(tokenizer, max_doc_tokens=max_doc_tokens, template=template)
    rows, prompt_ids = [], {}
    for g in groups:
        for doc, relevant, ref in zip(g["docs"], g["relevant"], g["reference"]):
            text = builder.chat_text(builder.user_message(g["query"], doc))
            text += THINK_OFF_CONTINUATION if off else ""
            prompt_ids[text] = builder.prompt_ids(g["query"], doc, think_off=off)
            rows.append({"prompt": text, "qid": g["qid"], "relevant": relevant,
                         "reference": ref})
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
