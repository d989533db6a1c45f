"""Stage 1: supervised fine-tuning of a reranker (TRL SFTTrainer, loss on the completion only,
optional LoRA, DeepSpeed ZeRO through ``--deepspeed train/configs/zero2.json``).

    deepspeed --num_gpus 1 train/sft.py --config train/configs/sft.yaml [--key value ...]
    DS_ACCELERATOR=cpu deepspeed --num_gpus 1 train/sft.py --config ...     # on a CPU

Defaults follow the paper: LoRA rank 32, alpha 64 on all linear layers, lr 1e-4, cosine
schedule, warmup 0.05, one epoch, cutoff 2048 tokens. Pass ``--resume`` to continue from the
last checkpoint in ``output_dir``.
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
    model, tokenizer = load_model(args.model)
    dataset = build_dataset(args, tokenizer)
    peft_config = None
    if args.use_lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha,
                                 lora_dropout=args.lora_dropout, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                         processing_class=tokenizer, peft_config=peft_config)
    train_and_save(trainer, tokenizer, config.output_dir, args.resume)


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
