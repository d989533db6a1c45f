"""Stage 1: supervised fine-tuning of a reranker (TRL SFTTrainer, loss on the completion only,
optional LoRA, DeepSpeed ZeRO through ``--deepspeed train/configs/zero2.json``).

    deepspeed --num_gpus 1 train/sft.py --config train/configs/sft.yaml [--key value ...]
    DS_ACCELERATOR=cpu deepspeed --num_gpus 1 train/sft.py --config ...     # on a CPU

Defaults follow the paper: LoRA rank 32, alpha 64 on all linear layers, lr 1e-4, cosine
schedule, warmup 0.05, one epoch, cutoff 2048 tokens. Pass ``--resume`` to continue from the
last checkpoint in ``output_dir``.

``--objective tokens`` (default) is the paper's next-token loss on the completion (teacher
reasoning, or the grade-derived score in the think-off form). ``--objective listwise`` trains
the think-off score distribution with a within-query pairwise loss on the expected score
(``train/listwise.py``); it needs ``per_device_train_batch_size == docs_per_query``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as train_data  # noqa: E402


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
    use_lora: bool = field(default=True)
    lora_r: int = field(default=32)
    lora_alpha: int = field(default=64)
    lora_dropout: float = field(default=0.05)
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
        default=1.0, metadata={"help": "listwise: weight of teacher score differences"})
    pseudo_queries: str | None = field(
        default=None, metadata={"help": "listwise: pseudo_queries.py output (JSONL), extra groups"})
    lora_layers_from: int = field(
        default=0, metadata={"help": "LoRA on decoder layers >= N only (0: every layer); the "
                                     "frozen layers below need no backward pass"})


def build_dataset(args: SFTScriptArguments, tokenizer):
    from datasets import Dataset

    from erank_fast.prompt import PromptBuilder

    queries, qrels = train_data.load(args.data, args.qrels)
    builder = PromptBuilder(tokenizer, args.max_query_tokens, args.max_doc_tokens)
    teacher = train_data.read_teacher(args.teacher) if args.teacher else None
    examples = train_data.sft_examples(queries[: args.max_queries], qrels, builder,
                                       docs_per_query=args.docs_per_query,
                                       positives=args.positives, teacher=teacher,
                                       seed=args.seed_data)
    return Dataset.from_list([{"input_ids": e["input_ids"], "completion_mask": e["completion_mask"]}
                              for e in examples])


def load_model(name: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from erank_fast.models.loading import resolve_model_path

    path = resolve_model_path(name) or name
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tokenizer


def main(argv=None) -> None:
    from trl import SFTConfig, SFTTrainer, TrlParser

    parser = TrlParser((SFTScriptArguments, SFTConfig))
    args, config = parser.parse_args_and_config(argv)
    config.completion_only_loss = True
    if args.pseudo_queries and args.objective != "listwise":
        raise SystemExit("--pseudo_queries adds listwise groups; it needs --objective listwise")
    if args.lora_layers_from and not args.use_lora:
        raise SystemExit("--lora_layers_from places LoRA adapters; it needs --use_lora true")
    model, tokenizer = load_model(args.model)
    peft_config = None
    if args.use_lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha,
                                 lora_dropout=args.lora_dropout, task_type="CAUSAL_LM",
                                 **lora_targets(model, args.lora_layers_from))
    if args.objective == "listwise":
        trainer = listwise_trainer(args, config, model, tokenizer, peft_config)
    elif args.objective == "tokens":
        trainer = SFTTrainer(model=model, args=config, train_dataset=build_dataset(args, tokenizer),
                             processing_class=tokenizer, peft_config=peft_config)
    else:
        raise SystemExit(f"--objective must be 'tokens' or 'listwise', got {args.objective!r}")
    train_and_save(trainer, tokenizer, config.output_dir, args.resume)


def lora_targets(model, layers_from: int) -> dict:
    """peft target arguments: every linear layer of the decoder, or only those of decoder
    layers ``layers_from`` and above."""
    if layers_from == 0:
        return {"target_modules": "all-linear"}
    import torch

    layers = model.model.layers
    if not 0 < layers_from < len(layers):
        raise SystemExit(f"--lora_layers_from must be in 0..{len(layers) - 1}, got {layers_from}")
    names = sorted({name.rsplit(".", 1)[-1] for name, m in layers.named_modules()
                    if isinstance(m, torch.nn.Linear)})
    return {"target_modules": names, "layers_to_transform": list(range(layers_from, len(layers))),
            "layers_pattern": "layers"}


def listwise_trainer(args: SFTScriptArguments, config, model, tokenizer, peft_config):
    from datasets import Dataset
    from listwise import LeftPaddingCollator, ListwiseTrainer, listwise_examples

    from erank_fast.prompt import PromptBuilder
    from erank_fast.scoring import ScoreTokens

    if args.teacher:
        raise SystemExit("--objective listwise trains the think-off score; it takes no --teacher")
    queries, qrels = train_data.load(args.data, args.qrels)
    tokens = ScoreTokens.from_tokenizer(tokenizer)
    builder = PromptBuilder(tokenizer, args.max_query_tokens, args.max_doc_tokens)
    teacher = None
    if args.teacher_scores:
        from query_likelihood import read_scores

        teacher = read_scores(args.teacher_scores)
    rows = listwise_examples(queries[: args.max_queries], qrels, builder, tokens,
                             docs_per_query=args.docs_per_query, positives=args.positives,
                             rounds=args.rounds, seed=args.seed_data, teacher=teacher)
    if args.pseudo_queries:
        from listwise import pseudo_query_examples
        from pseudo_queries import read_pseudo_queries

        first = 1 + max((r["group"] for r in rows), default=-1)
        rows += pseudo_query_examples(read_pseudo_queries(args.pseudo_queries),
                                      queries[: args.max_queries], builder, tokens,
                                      docs_per_query=args.docs_per_query, first_group=first,
                                      seed=args.seed_data)
    if not rows:
        raise SystemExit(f"no query has {args.docs_per_query} candidates with both relevant and "
                         "irrelevant documents")
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    config.remove_unused_columns = False
    return ListwiseTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                           data_collator=LeftPaddingCollator(train_data.pad_id(tokenizer)), processing_class=tokenizer,
                           score_tokens=tokens, pointwise_weight=args.pointwise_weight,
                           docs_per_query=args.docs_per_query,
                           teacher_weight=args.teacher_weight if teacher else 0.0)


def train_and_save(trainer, tokenizer, output_dir: str, resume: bool) -> None:
    """Train (from the last checkpoint in output_dir when resuming), then save the result."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = get_last_checkpoint(output_dir) if resume else None
    if resume and checkpoint is None:
        raise SystemExit(f"--resume: no checkpoint in {output_dir}")
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)


if __name__ == "__main__":
    main()
