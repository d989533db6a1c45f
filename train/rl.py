"""Stage 2: RL (GRPO) with the listwise reward, rollouts on the erank_fast engine.

    deepspeed --num_gpus 1 train/rl.py --config train/configs/rl.yaml [--key value ...]
    DS_ACCELERATOR=cpu deepspeed --num_gpus 1 train/rl.py --config ...     # on a CPU

Rollouts: TRL's GRPOTrainer calls ``rollout_func`` with the (query, document) prompts of a
generation batch; one erank_fast engine, built once for the run, samples ``num_generations``
completions per prompt on the live policy parameters (shared, not copied, under ZeRO-0/1/2;
gathered under ZeRO-3), the G rollouts of a prompt sharing its prefill
(``erank_fast.training.rollouts``).

``--think off`` trains what ``think="off"`` inference reads: the prompt ends with the think-off
continuation (``...<answer>``, the reranker's own token ids), a rollout's first token is drawn
from the score digits and the completion is read as inference reads it
(``--max_completion_length 2`` covers "10"). ``--adapter A --train_adapter true`` keeps training
a LoRA adapter (e.g. erank-smol's) instead of merging it; rollouts then run with the adapter
merged in place for the call and unmerged after, and the result is an adapter again
(``train/export_adapter.py`` packages it). Dataset and reward: ``erank_fast.training.grpo``.
"""

from __future__ import annotations

from erank_fast.training.arguments import RLScriptArguments
from erank_fast.training.grpo import (
    expected_score_scorer,
    make_listwise_reward,
    rl_dataset,
    think_off,
)
from erank_fast.training.policy import apply_precision, load_policy, train_and_save
from erank_fast.training.rewards import RewardConfig
from erank_fast.training.rollouts import make_rollout
from erank_fast.training.trl_cpu import compact_lm_head_everywhere


def main(argv=None) -> None:
    from trl import GRPOConfig, GRPOTrainer, TrlParser

    parser = TrlParser((RLScriptArguments, GRPOConfig))
    args, config = parser.parse_args_and_config(argv)
    try:
        off = think_off(args.think)  # refuse a bad value before loading anything
        if args.train_adapter and not args.adapter:
            raise ValueError("--train_adapter needs --adapter")
        print(f"training precision: {apply_precision(config, args.precision)}")
    except ValueError as e:
        raise SystemExit(str(e)) from None
    config.shuffle_dataset = False  # queries were shuffled at build time; keep them whole
    per_step = config.per_device_train_batch_size * config.world_size
    generation = args.docs_per_query * config.num_generations
    if generation % per_step:
        raise SystemExit(f"docs_per_query × num_generations ({generation}) must be a multiple of "
                         f"per_device_train_batch_size × processes ({per_step})")
    config.generation_batch_size, config.steps_per_generation = generation, generation // per_step
    model, tokenizer = load_policy(args.model, args.adapter, args.train_adapter)
    dataset, prompt_ids = rl_dataset(
        tokenizer, scorer=expected_score_scorer(model, tokenizer, args.max_doc_tokens,
                                                args.template),
        data=args.data, qrels=args.qrels, max_queries=args.max_queries,
        docs_per_query=args.docs_per_query, positives=args.positives, reference=args.reference,
        think=args.think, max_doc_tokens=args.max_doc_tokens, seed=args.seed_data,
        template=args.template)
    reward = make_listwise_reward(
        RewardConfig(kind=args.reward, positive_scale=args.positive_scale,
                     negative_above_penalty=args.negative_above_penalty,
                     negative_se_scale=args.negative_se_scale, invalid_penalty=args.invalid_penalty),
        args.docs_per_query, config.num_generations, args.think)
    rollout = make_rollout(tokenizer, config.max_completion_length, config.temperature,
                           config.top_p, config.top_k or 0, prompt_ids, score_first=off)
    compact_lm_head_everywhere()  # log-probs of the completion rows only, on a CPU too
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, rollout_func=rollout)
    train_and_save(trainer, tokenizer, config.output_dir, args.resume)


if __name__ == "__main__":
    main()
