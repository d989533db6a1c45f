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
(``erank_fast.training.listwise``); it needs ``per_device_train_batch_size ==
docs_per_query``. ``--teacher_scores FILE`` (``train/query_likelihood.py`` or
``train/teacher_scores.py``) adds a dense teacher: ``--teacher_loss pairs`` weights the pairs by
the teacher's score differences, ``--teacher_loss kl`` distils the teacher's softmax over each
group (temperature ``--teacher_temperature``) into the student's expected scores, and
``--teacher_loss margin_mse`` matches the teacher's margins (z / temperature, in score points).

``--adapter A --train_adapter true`` keeps training an existing LoRA adapter (e.g. the packaged
erank-smol's) with its own rank and layers; the result is an adapter of the base model again,
which ``train/export_adapter.py`` packages. ``--adapter A --use_lora false`` merges it and
fine-tunes the merged weights.
"""

from __future__ import annotations

from erank_fast.training import data as train_data
from erank_fast.training.arguments import SFTScriptArguments, check_sft_arguments
from erank_fast.training.policy import (
    apply_precision,
    load_policy,
    lora_targets,
    train_and_save,
)


def build_dataset(args: SFTScriptArguments, tokenizer):
    from datasets import Dataset

    from erank_fast.prompt import PromptBuilder

    queries, qrels = train_data.load(args.data, args.qrels)
    builder = PromptBuilder(tokenizer, args.max_query_tokens, args.max_doc_tokens, args.template)
    teacher = train_data.read_teacher(args.teacher) if args.teacher else None
    examples = train_data.sft_examples(queries[: args.max_queries], qrels, builder,
                                       docs_per_query=args.docs_per_query,
                                       positives=args.positives, teacher=teacher,
                                       seed=args.seed_data)
    return Dataset.from_list([{"input_ids": e["input_ids"], "completion_mask": e["completion_mask"]}
                              for e in examples])


def main(argv=None) -> None:
    from trl import SFTConfig, SFTTrainer, TrlParser

    parser = TrlParser((SFTScriptArguments, SFTConfig))
    args, config = parser.parse_args_and_config(argv)
    config.completion_only_loss = True
    try:
        print(f"training precision: {apply_precision(config, args.precision)}")
    except ValueError as e:
        raise SystemExit(f"--{e}") from None
    try:
        check_sft_arguments(args)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    model, tokenizer = load_policy(args.model, args.adapter, args.train_adapter)
    peft_config = None
    if args.use_lora and not args.train_adapter:
        from peft import LoraConfig

        try:
            targets = lora_targets(model, args.lora_layers_from)
        except ValueError as e:
            raise SystemExit(f"--{e}") from None
        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha,
                                 lora_dropout=args.lora_dropout, task_type="CAUSAL_LM", **targets)
    if args.objective == "listwise":
        trainer = listwise_trainer(args, config, model, tokenizer, peft_config)
    elif args.objective == "tokens":
        trainer = SFTTrainer(model=model, args=config, train_dataset=build_dataset(args, tokenizer),
                             processing_class=tokenizer, peft_config=peft_config)
    else:
        raise SystemExit(f"--objective must be 'tokens' or 'listwise', got {args.objective!r}")
    train_and_save(trainer, tokenizer, config.output_dir, args.resume)


def listwise_trainer(args: SFTScriptArguments, config, model, tokenizer, peft_config):
    from datasets import Dataset

    from erank_fast.prompt import PromptBuilder
    from erank_fast.scoring import ScoreTokens
    from erank_fast.training.listwise import (
        TEACHER_LOSSES,
        LeftPaddingCollator,
        ListwiseTrainer,
        consistent_pseudo_queries,
        listwise_examples,
        pseudo_query_examples,
    )
    from erank_fast.training.pseudo_queries import read_pseudo_queries
    from erank_fast.training.query_likelihood import read_scores

    if args.teacher:
        raise SystemExit("--objective listwise trains the think-off score; it takes no --teacher")
    if args.teacher_loss not in TEACHER_LOSSES:
        raise SystemExit(f"--teacher_loss must be one of {TEACHER_LOSSES}, "
                         f"got {args.teacher_loss!r}")
    queries, qrels = train_data.load(args.data, args.qrels)
    tokens = ScoreTokens.from_tokenizer(tokenizer)
    builder = PromptBuilder(tokenizer, args.max_query_tokens, args.max_doc_tokens, args.template)
    teacher = None
    if args.teacher_scores:
        teacher = read_scores(args.teacher_scores)
    rows = listwise_examples(queries[: args.max_queries], qrels, builder, tokens,
                             docs_per_query=args.docs_per_query, positives=args.positives,
                             rounds=args.rounds, seed=args.seed_data, teacher=teacher)
    if args.pseudo_queries:
        first = 1 + max((r["group"] for r in rows), default=-1)
        pseudo = read_pseudo_queries(args.pseudo_queries)
        if args.pseudo_query_top_k:
            kept = consistent_pseudo_queries(pseudo, queries[: args.max_queries], teacher,
                                             args.pseudo_query_top_k)
            print(f"pseudo-queries: {len(kept)} of {len(pseudo)} have their source passage in "
                  f"the teacher's top {args.pseudo_query_top_k}")
            pseudo = kept
        rows += pseudo_query_examples(pseudo, queries[: args.max_queries], builder, tokens,
                                      docs_per_query=args.docs_per_query, first_group=first,
                                      seed=args.seed_data, teacher=teacher)
    if not rows:
        raise SystemExit(f"no query has {args.docs_per_query} candidates with both relevant and "
                         "irrelevant documents")
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    config.remove_unused_columns = False
    return ListwiseTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                           data_collator=LeftPaddingCollator(train_data.pad_id(tokenizer)),
                           processing_class=tokenizer,
                           score_tokens=tokens, pointwise_weight=args.pointwise_weight,
                           docs_per_query=args.docs_per_query,
                           teacher_weight=args.teacher_weight if teacher else 0.0,
                           teacher_loss=args.teacher_loss,
                           teacher_temperature=args.teacher_temperature)


if __name__ == "__main__":
    main()
