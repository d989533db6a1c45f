"""The arguments of the scripts in ``train/`` (the dataclasses TRL's parser fills, the rules
between flags) and one flag style for every script: ``--snake_case``, as TRL's parser and the
YAML configs spell them; each flag also answers to its ``--kebab-case`` spelling, as TRL's
parser does."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from erank_fast.prompt import DEFAULT_TEMPLATE, TEMPLATES


def template_field():
    """The prompt-layout flag of the training scripts (``erank_fast.prompt.TEMPLATES``)."""
    return field(default=DEFAULT_TEMPLATE, metadata={
        "help": f"the prompt's layout: {' | '.join(TEMPLATES)} (export with the same)"})


class ScriptParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``--a_b`` options also accept ``--a-b``."""

    def add_argument(self, *names, **kwargs):
        aliases = [n.replace("_", "-") for n in names
                   if n.startswith("--") and "_" in n and n.replace("_", "-") not in names]
        return super().add_argument(*names, *aliases, **kwargs)


def check_sft_arguments(args) -> None:
    """``train/sft.py``'s rules between flags: a ValueError for a combination that would
    silently ignore one of them."""
    if args.pseudo_queries and args.objective != "listwise":
        raise ValueError("--pseudo_queries adds listwise groups; it needs --objective listwise")
    if args.pseudo_query_top_k < 0:
        raise ValueError(f"--pseudo_query_top_k must be >= 0, got {args.pseudo_query_top_k}")
    if args.pseudo_query_top_k and not (args.pseudo_queries and args.teacher_scores):
        raise ValueError("--pseudo_query_top_k filters pseudo-queries by the teacher: it needs "
                         "--pseudo_queries and --teacher_scores")
    if args.lora_layers_from and not args.use_lora:
        raise ValueError("--lora_layers_from places LoRA adapters; it needs --use_lora true")
    if args.adapter and args.use_lora and not args.train_adapter:
        raise ValueError("--adapter with LoRA needs --train_adapter true (a new adapter on top of "
                         "a merged one could not be packaged over the base model); or pass "
                         "--use_lora false to fine-tune the merged weights")
    if args.train_adapter and not (args.adapter and args.use_lora):
        raise ValueError("--train_adapter true continues a LoRA adapter: it needs --adapter DIR "
                         "and --use_lora true")
    if args.train_adapter and args.lora_layers_from:
        raise ValueError("--train_adapter keeps the adapter's own layers; drop --lora_layers_from")


@dataclass
class SFTScriptArguments:
    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "checkpoint directory, .gguf file or offline name"})
    data: str = field(default="../shared/data/dl21-bm25-top100.jsonl")
    qrels: str = field(default="../shared/data/dl21-bm25-top100.qrels")
    teacher: str | None = field(default=None, metadata={"help": "distill.py output (JSONL)"})
    max_queries: int | None = field(default=None)
    docs_per_query: int = field(default=8)
    positives: int = field(default=2)
    max_query_tokens: int = field(default=2048)
    max_doc_tokens: int = field(default=2048)
    template: str = template_field()
    use_lora: bool = field(default=True)
    lora_r: int = field(default=32)
    lora_alpha: int = field(default=64)
    lora_dropout: float = field(default=0.05)
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 autocast where this device runs it fast, "
                                          "float32 otherwise) | bf16 | float32"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint"})
    seed_data: int = field(default=0)
    objective: str = field(default="tokens", metadata={"help": "tokens | listwise"})
    pointwise_weight: float = field(
        default=0.2, metadata={"help": "listwise: weight of the score cross-entropy term"})
    rounds: int = field(
        default=1, metadata={"help": "listwise: fresh document samples per query"})
    teacher_scores: str | None = field(
        default=None, metadata={"help": "listwise: query_likelihood.py output (JSONL)"})
    teacher_weight: float = field(
        default=1.0, metadata={"help": "listwise: weight of the teacher's term"})
    teacher_loss: str = field(
        default="pairs", metadata={"help": "listwise: 'pairs' (teacher differences weight the "
                                           "pairs), 'kl' (distil the teacher's softmax) or "
                                           "'margin_mse' (match the teacher's margins)"})
    teacher_temperature: float = field(
        default=1.0, metadata={"help": "listwise, kl and margin_mse: temperature on the "
                                       "teacher's z-scores (one z unit = 1 / T score points)"})
    pseudo_queries: str | None = field(
        default=None, metadata={"help": "listwise: pseudo_queries.py output (JSONL), extra groups"})
    pseudo_query_top_k: int = field(
        default=0, metadata={"help": "listwise: keep only the pseudo-queries whose source passage "
                                     "the teacher ranks in the first K of its query's "
                                     "candidates (0: keep all); needs --teacher_scores"})
    lora_layers_from: int = field(
        default=0, metadata={"help": "LoRA on decoder layers >= N only (0: every layer); the "
                                     "frozen layers below need no backward pass"})
    adapter: str | None = field(
        default=None, metadata={"help": "LoRA adapter to start from (e.g. "
                                        "erank_fast/models/erank_smol); needs --train_adapter "
                                        "true with LoRA, or is merged for --use_lora false"})
    train_adapter: bool = field(
        default=False, metadata={"help": "keep training --adapter itself with its own rank and "
                                         "layers (lora_r/lora_alpha are not used; "
                                         "lora_layers_from is refused); the result is an "
                                         "adapter of the base model again"})


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
    template: str = template_field()
    reference: str = field(default="model",
                           metadata={"help": "reference scores t: 'model' (the start model's "
                                             "expected score, think=off) or 'grades'"})
    reward: str = field(default="rr", metadata={"help": "rr | ndcg | se"})
    positive_scale: float = field(default=1.0)
    negative_above_penalty: float = field(default=-1.0)
    negative_se_scale: float = field(default=0.5)
    invalid_penalty: float = field(default=-1.0)
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 autocast where this device runs it fast, "
                                          "float32 otherwise) | bf16 | float32"})
    resume: bool = field(default=False)
    seed_data: int = field(default=0)
