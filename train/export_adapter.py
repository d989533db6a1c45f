"""Turn a trained LoRA adapter into a packaged erank_fast reranker directory.

    python train/export_adapter.py runs/erank-smol erank_fast/models/erank_smol \\
        --base smollm2-135m-instruct --score_mode expected --max_doc_tokens 256 \\
        --recipe train/RESULTS.md

Writes adapter_model.safetensors (float16: half the size, well within LoRA's precision),
a minimal peft-compatible adapter_config.json, and erank_fast.json (the base model and the
reranker settings the adapter was trained for; see erank_fast/models/packaged.py).
"""

from __future__ import annotations

from erank_fast.config import parse_think
from erank_fast.prompt import TEMPLATES
from erank_fast.training.arguments import ScriptParser
from erank_fast.training.export import export


def main(argv=None) -> None:
    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="adapter directory written by train/sft.py or train/rl.py")
    parser.add_argument("target", help="packaged reranker directory to write")
    parser.add_argument("--base", required=True, help="offline name of the base model")
    parser.add_argument("--think", default="off", type=parse_think)
    parser.add_argument("--score_mode", default="expected", choices=["erank", "expected"])
    parser.add_argument("--max_doc_tokens", type=int, default=None,
                        help="the document truncation the adapter was trained with")
    parser.add_argument("--template", default=None, choices=list(TEMPLATES),
                        help="the prompt layout the adapter was trained with (default: erank)")
    parser.add_argument("--recipe", default=None, help="where the training run is recorded")
    args = parser.parse_args(argv)
    extra = {}
    if args.max_doc_tokens is not None:
        extra["max_doc_tokens"] = args.max_doc_tokens
    if args.template is not None:
        extra["template"] = args.template
    if args.recipe:
        extra["recipe"] = args.recipe
    out = export(args.source, args.target, base=args.base, think=args.think,
                 score_mode=args.score_mode, extra=extra)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"wrote {out} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
