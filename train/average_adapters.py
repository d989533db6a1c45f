"""Average LoRA adapters of one base into one adapter (a "model soup"), exactly.

    python train/average_adapters.py runs/v13-packaged runs/erank-smol-v14/checkpoint-200 \\
        --out runs/v13-v14-soup

The output adapter's rank is the sum of the inputs' (its delta is the weighted average of
theirs, not an approximation); package it with train/export_adapter.py.
"""

from __future__ import annotations

from pathlib import Path

from erank_fast.models.lora import write_adapter
from erank_fast.training.adapter_soup import average_adapters
from erank_fast.training.arguments import ScriptParser


def main(argv=None) -> None:
    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", help="LoRA adapter directories")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="one weight per adapter (default: equal, summing to 1)")
    parser.add_argument("--out", required=True, help="adapter directory to write")
    args = parser.parse_args(argv)
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; choose another --out or remove it")
    try:
        config, tensors = average_adapters(args.sources, args.weights)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    write_adapter(config, tensors, args.out)
    print(f"{len(args.sources)} adapters averaged (rank {config['r']}) -> {args.out}")


if __name__ == "__main__":
    main()
