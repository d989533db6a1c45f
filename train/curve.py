"""Learning curves: every checkpoint of one or more training runs evaluated on held-out sets.

    python train/curve.py --start erank_fast/models/erank_smol \\
        --run grpo=runs/ablation-grpo --run sft=runs/ablation-sft \\
        --prompts_per_step 8 --out train/ablation.json --plot train/ablation.png \\
        [--against sft@64 | --against train/v13_curve.json:v13@200]

Each run's ``checkpoint-N`` directories (LoRA adapters of ``--model``, or whole models from a
full fine-tune) and the start adapter (step 0, shared by every run) are scored as the packaged
reranker is served: think off, expected score, 256-token documents, the CPU's default dtype.
Held-out sets: the DL21 queries after the first ``--train_queries`` (never trained on) and
NovelEval. Results are kept in ``--out`` (each query's nDCG@10 too) and a rerun scores only what
is missing; each checkpoint is then printed against the start, paired query by query
(``erank_fast.evaluation.significance``: a step below ~0.05 is within noise on 10 + 21 held-out
queries, train/RESULTS.md), and with ``--against RUN[@STEP]`` also against one checkpoint of a
run (its last by default; ``FILE:RUN[@STEP]`` takes it from another results JSON, e.g. a control
run or the shipped model's curve); the plot shows nDCG@10 (reranked and hybrid) against prompts
seen, with each point's standard error over queries.
"""

from __future__ import annotations

import gc
import json
import re
from pathlib import Path

from erank_fast.evaluation.significance import compare, standard_error
from erank_fast.prompt import DEFAULT_TEMPLATE, TEMPLATES
from erank_fast.training.arguments import ScriptParser

DATA = Path("../shared/data")


def held_out_sets(train_queries: int) -> dict:
    from erank_fast.evaluation.trec import read_jsonl, read_qrels

    dl21 = read_jsonl(DATA / "dl21-bm25-top100.jsonl")[train_queries:]
    return {"dl21_heldout": (dl21, read_qrels(DATA / "dl21-bm25-top100.qrels")),
            "noveleval": (read_jsonl(DATA / "noveleval-bm25-top20.jsonl"),
                          read_qrels(DATA / "noveleval-bm25-top20.qrels"))}


def checkpoints(run_dir: str) -> list[tuple[int, Path]]:
    found = []
    for p in Path(run_dir).glob("checkpoint-*"):
        if m := re.fullmatch(r"checkpoint-(\d+)", p.name):
            found.append((int(m.group(1)), p))
    return sorted(found)


KINDS = ("first_stage", "reranked", "hybrid")


def summary(result: dict) -> dict:
    """nDCG@10 means and their standard error over queries, reranked and hybrid, and each
    query's value (``per_query``: what a paired comparison with the start needs)."""
    out = {"docs_per_second": round(result["docs_per_second"], 2)}
    for kind in KINDS:
        values = [q[kind]["ndcg@10"] for q in result["per_query"].values()]
        out[kind] = round(sum(values) / len(values), 4)
        out[kind + "_se"] = round(standard_error(values), 4)
    out["per_query"] = {qid: {kind: q[kind]["ndcg@10"] for kind in KINDS}
                        for qid, q in result["per_query"].items()}
    return out


def means(point: dict) -> dict:
    """A checkpoint's results without the per-query values (for printing)."""
    return {k: ({m: v for m, v in s.items() if m != "per_query"} if isinstance(s, dict) else s)
            for k, s in point.items()}


def against(reference: dict, point: dict) -> dict:
    """{set: {kind: PairedComparison}}: a checkpoint's nDCG@10 against a reference point's
    (the start adapter's, or ``--against``'s), paired query by query (sets where both kept
    per-query values; results written before they were kept have none)."""
    out = {}
    for name, ref_set in reference.items():
        if not isinstance(ref_set, dict) or "per_query" not in ref_set or \
                "per_query" not in point.get(name, {}):
            continue
        out[name] = {kind: compare({q: v[kind] for q, v in ref_set["per_query"].items()},
                                   {q: v[kind] for q, v in point[name]["per_query"].items()})
                     for kind in KINDS[1:]}
    return out


def split_against(spec: str) -> tuple[str | None, str]:
    """``--against``'s ``FILE:RUN[@STEP]`` as (FILE, RUN[@STEP]); (None, spec) when it names a
    run of these results (a ``:`` not after an existing or ``.json`` file is part of a run's
    name)."""
    path, sep, rest = spec.rpartition(":")
    if sep and (Path(path).is_file() or path.endswith(".json")):
        return path, rest
    return None, spec


def reference_point(results: dict, spec: str) -> tuple[str, str, dict]:
    """``--against``'s checkpoint: (run, step, its results) for ``RUN[@STEP]`` (a run of
    ``results``; its last step by default) or ``FILE:RUN[@STEP]`` (a run of another results
    JSON). SystemExit, naming what there is, where the run or the step is missing."""
    source, where = results, "these results"
    path, rest = split_against(spec)
    if path is not None:
        if not Path(path).is_file():
            raise SystemExit(f"--against {spec!r}: no results file {path}")
        source, where = json.loads(Path(path).read_text()), path
    run, _, step = rest.partition("@")
    points = source.get("runs", {}).get(run)
    if not points:
        raise SystemExit(f"--against: no run {run!r} in {where} (runs: "
                         f"{', '.join(sorted(source.get('runs', {}))) or 'none'})")
    step = step or max(points, key=int)
    if step not in points:
        raise SystemExit(f"--against: run {run!r} has no step {step} in {where} (steps: "
                         f"{', '.join(sorted(points, key=int))})")
    return run, step, points[step]


def check_against(results: dict, scored: list[str], spec: str) -> None:
    """``--against`` checked before any scoring, so a misspelt reference costs no evaluation:
    another results file is resolved whole; a run of these results must be one of them or of the
    runs this call scores (``scored``), whose steps are only known once scored."""
    if split_against(spec)[0] is not None:
        reference_point(results, spec)
        return
    run = spec.partition("@")[0]
    if run not in results.get("runs", {}) and run not in scored:
        known = sorted(set(results.get("runs", {})) | set(scored))
        raise SystemExit(f"--against: no run {run!r} in these results or this call's --run "
                         f"(runs: {', '.join(known) or 'none'})")


def adapter_template(adapter: str) -> str:
    """The prompt layout an exported adapter was trained with (its erank_fast.json), else the
    ERank template."""
    from erank_fast.models.packaged import SETTINGS_FILE

    settings = Path(adapter) / SETTINGS_FILE
    if settings.is_file():
        return json.loads(settings.read_text()).get("template", DEFAULT_TEMPLATE)
    return DEFAULT_TEMPLATE


def evaluate_checkpoint(model: str, adapter: str, sets: dict, template: str) -> dict:
    """Held-out nDCG@10 of ``model`` with ``adapter``, or of the checkpoint ``adapter`` alone
    when it is a whole model (no adapter_config.json: a full fine-tune's checkpoint)."""
    from erank_fast import Reranker
    from erank_fast.evaluation.runner import run_evaluation
    from erank_fast.models.lora import CONFIG_FILE

    if not (Path(adapter) / CONFIG_FILE).is_file():
        model, adapter = adapter, None
    reranker = Reranker.from_pretrained(model, adapter=adapter, think="off",
                                        score_mode="expected", max_doc_tokens=256,
                                        template=template)
    out = {name: summary(run_evaluation(reranker, queries, qrels, progress=False))
           for name, (queries, qrels) in sets.items()}
    out["dtype"] = str(reranker.dtype).removeprefix("torch.")
    del reranker
    gc.collect()
    return out


def prompts_seen(results: dict, run: str, steps: list[int], prompts_per_step: int) -> list[int]:
    """The prompts a run had seen at ``steps``: its prompts a step as recorded when it was
    evaluated (so runs with groups of different sizes share one axis), else
    ``prompts_per_step`` (results written before it was recorded)."""
    per_step = results.get("prompts_per_step", {}).get(run, prompts_per_step)
    return [s * per_step for s in steps]


def plot(results: dict, prompts_per_step: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from erank_fast.cpu import cpu_info

    sets = [s for s in ("dl21_heldout", "noveleval") if s in results["start"]]
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.2), squeeze=False)
    for ax, name in zip(axes[0], sets):
        for i, (run, points) in enumerate(sorted(results["runs"].items())):
            steps = [0] + sorted(int(s) for s in points)
            rows = [results["start"]] + [points[str(s)] for s in steps[1:]]
            x = prompts_seen(results, run, steps, prompts_per_step)
            for kind, style in (("reranked", "-o"), ("hybrid", "--s")):
                y = [r[name][kind] for r in rows]
                err = [r[name][kind + "_se"] for r in rows]
                ax.errorbar(x, y, yerr=err, fmt=style, color=f"C{i}", capsize=3, alpha=0.85,
                            label=f"{run} {kind}")
        ax.axhline(results["start"][name]["first_stage"], color="grey", lw=1, ls=":",
                   label="BM25")
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("prompts seen (from the start adapter)")
        ax.set_ylabel("nDCG@10 (± s.e. over queries)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"held-out learning curves, {cpu_info()['model']} ({cpu_info()['cores']} cores)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--start", required=True, help="the adapter every run started from")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                        help="a training run's output directory (repeatable)")
    parser.add_argument("--train_queries", type=int, default=43,
                        help="DL21 queries the runs trained on (the rest are held out)")
    parser.add_argument("--prompts_per_step", type=int, default=8,
                        help="prompts in one optimizer step of this call's runs (recorded "
                             "per run, so runs of different group sizes plot together)")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, choices=list(TEMPLATES),
                        help="the runs' prompt layout (the start adapter's comes from its "
                             "erank_fast.json, else erank)")
    parser.add_argument("--out", required=True, help="results JSON (kept between reruns)")
    parser.add_argument("--plot", default=None, help="PNG of the curves")
    parser.add_argument("--against", default=None, metavar="[FILE:]RUN[@STEP]",
                        help="also compare every checkpoint with this one, paired by query "
                             "(a run's last step by default; FILE: another results JSON)")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.run:
        name, sep, path = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--run takes NAME=DIR, got {spec!r}")
        runs[name] = path
    if args.prompts_per_step < 1:
        raise SystemExit(f"--prompts_per_step must be >= 1, got {args.prompts_per_step}")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"runs": {}}
    if results.get("start_adapter") not in (None, args.start):
        raise SystemExit(f"{out} holds results from another start adapter; pass another --out")
    if args.against:
        check_against(results, list(runs), args.against)
    results["start_adapter"] = args.start
    sets = held_out_sets(args.train_queries)
    results.setdefault("prompts_per_step", {}).update(dict.fromkeys(runs, args.prompts_per_step))

    def save():
        out.write_text(json.dumps(results, indent=1))

    if "start" not in results:
        results["start"] = evaluate_checkpoint(args.model, args.start, sets,
                                               adapter_template(args.start))
        save()
        print("start", json.dumps(means(results["start"])))
    for name, path in runs.items():
        done = results["runs"].setdefault(name, {})
        for step, ckpt in checkpoints(path):
            if str(step) in done:
                continue
            done[str(step)] = evaluate_checkpoint(args.model, str(ckpt), sets, args.template)
            save()
            print(name, step, json.dumps(means(done[str(step)])))
    references = [("start", results["start"])]
    if args.against:
        run, step, point = reference_point(results, args.against)
        references.append((f"{run}@{step}", point))
    for label, reference in references:  # each checkpoint against it, paired by query
        for name, points in results["runs"].items():
            for step in sorted(points, key=int):
                if points[step] is reference:
                    continue
                paired = against(reference, points[step])
                if not paired:
                    print(f"{name} {step} against {label}: nothing to pair (results written "
                          f"before each query's values were kept)")
                for set_name, kinds in paired.items():
                    for kind, comparison in kinds.items():
                        print(f"{name} {step} against {label}, {set_name} {kind}: "
                              f"{comparison.describe()}")
    if args.plot:
        plot(results, args.prompts_per_step, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
