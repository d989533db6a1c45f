"""How sure are the differences between models? Paired comparisons over several evaluation sets,
as a Markdown table and a plot of each difference with its confidence interval.

    python train/significance_table.py \\
        --set DL19 v4=runs/v4-dl19.json v13=runs/v13-dl19.json \\
        --set "held-out DL21" v4=runs/v4-dl21h.json v13=runs/v13-dl21h.json \\
        --out train/v13_significance.json --plot train/v13_significance.png

Each ``--set`` names an evaluation set and the ``erank-fast eval --out`` files of its models,
oldest first. Per set: every model's reranking and hybrid against the first stage, the last
model against each earlier one (reranked and hybrid), and the last model's hybrid against its
reranking alone; nDCG@10 (``--metric``), paired query by query
(``erank_fast.evaluation.significance``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from erank_fast.evaluation.significance import compare, per_query


def comparisons(models: dict[str, dict], metric: str) -> list[tuple[str, object]]:
    """[(label, PairedComparison)] for one set's models ({name: eval result}, oldest first)."""
    rows = []
    for name, result in models.items():
        base = per_query(result, "first_stage", metric)
        for ranking in ("reranked", "hybrid"):
            rows.append((f"{name} {ranking} − first stage",
                         compare(base, per_query(result, ranking, metric))))
    *earlier, last = models
    for name in earlier:
        for ranking in ("reranked", "hybrid"):
            rows.append((f"{last} − {name}, {ranking}",
                         compare(per_query(models[name], ranking, metric),
                                 per_query(models[last], ranking, metric))))
    rows.append((f"{last} hybrid − {last} reranked",
                 compare(per_query(models[last], "reranked", metric),
                         per_query(models[last], "hybrid", metric))))
    return rows


def markdown(table: dict[str, list], metric: str) -> str:
    lines = [f"| set | {metric}: b − a | queries | a | b | b − a [95 % CI] | p (t) | "
             "p (randomisation) |", "|---|---|---|---|---|---|---|---|"]
    for set_name, rows in table.items():
        for label, c in rows:
            lines.append(f"| {set_name} | {label} | {c.queries} | {c.mean_a:.4f} | "
                         f"{c.mean_b:.4f} | {c.difference:+.4f} [{c.ci_low:+.4f}, "
                         f"{c.ci_high:+.4f}] | {c.p_value:.4f} | {c.p_randomisation:.4f} |")
    return "\n".join(lines)


def plot(table: dict[str, list], metric: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, diffs, lows, highs, colours = [], [], [], [], []
    for i, (set_name, rows) in enumerate(table.items()):
        for label, c in rows:
            labels.append(f"{set_name}: {label}")
            diffs.append(c.difference)
            lows.append(c.difference - c.ci_low)
            highs.append(c.ci_high - c.difference)
            colours.append(f"C{i}")
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(labels) + 1.2))
    ys = list(range(len(labels)))[::-1]
    for y, d, lo, hi, col in zip(ys, diffs, lows, highs, colours):
        ax.errorbar(d, y, xerr=[[lo], [hi]], fmt="o", color=col, capsize=3)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel(f"{metric} difference, b − a,\nwith its 95 % confidence interval "
                  "(paired t over queries)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", dest="sets", nargs="+", action="append", required=True,
                   metavar="NAME MODEL=RESULT", help="a set's name, then its models' results")
    p.add_argument("--metric", default="ndcg@10")
    p.add_argument("--out", help="write the comparisons as JSON")
    p.add_argument("--plot", help="write the differences and intervals as a PNG")
    args = p.parse_args(argv)
    table = {}
    for name, *pairs in args.sets:
        if not pairs or any("=" not in pair for pair in pairs):
            p.error(f"--set {name}: give MODEL=RESULT pairs after the set's name")
        models = {}
        for pair in pairs:
            model, path = pair.split("=", 1)
            models[model] = json.loads(Path(path).read_text(encoding="utf-8"))
        table[name] = comparisons(models, args.metric)
    print(markdown(table, args.metric))
    if args.out:
        Path(args.out).write_text(json.dumps(
            {s: [{"comparison": label, **c.as_dict()} for label, c in rows]
             for s, rows in table.items()}, indent=1), encoding="utf-8")
    if args.plot:
        plot(table, args.metric, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
