"""The peers table: erank_fast, vLLM and llama.cpp on the same prompt token ids.

Exports one workload per think setting (TREC queries × BM25 passages, prompts built by
erank_fast's prompt code), runs every system in its own process (erank_fast in this
environment, each peer in the venv ``setup.sh`` made; a missing peer is skipped with one line),
then prints and writes docs/s per system and setting, cold start, reasoning tokens per document,
and agreement against erank_fast's float32 path (results JSON + a PNG plot).

    python bench/peers/run_peers.py --data ../shared/data/dl19-bm25-top100.jsonl \
        --queries 3 --docs 100 --think off 64 [--before GIT_REF]

``--before REF`` adds erank_fast as of that commit (a git worktree in the work folder, its own
C++ kernel build): each erank_fast system of ``--systems`` again as ``<system>@REF`` (e.g.
``erank_fast_int8@REF``), a change's speed-up measured in the same run as the peers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import peer_io
from agreement import agreement

HERE = Path(__file__).resolve().parent
# system -> (runner, extra arguments, venv name or None for this environment)
SYSTEMS = {
    "erank_fast": ("run_erank_fast.py", ["--dtype", "auto"], None),
    "erank_fast_fp32": ("run_erank_fast.py", ["--dtype", "float32"], None),
    # int8 decoder linears (opt-in; CPUs with AMX-INT8, AVX512-VNNI or AVX2) in the dtype the CPU
    # check picks (bfloat16 on AMX, float32 on a VNNI CPU without bfloat16 units)
    "erank_fast_int8": ("run_erank_fast.py", ["--dtype", "auto", "--quantize", "int8"], None),
    # vLLM with every core for its model (measured on 2 cores: 1.9x its default, which keeps
    # one core for its scheduler); "_reserved_core" keeps vLLM's default, for the record
    "vllm": ("run_vllm.py", ["--reserved-cpus", "0"], "vllm"),
    "vllm_fp32": ("run_vllm.py", ["--dtype", "float32", "--reserved-cpus", "0"], "vllm"),
    "vllm_fp32_reserved_core": ("run_vllm.py", ["--dtype", "float32"], "vllm"),
    # vLLM's int8 path: a W8A8 copy of the same weights (int8 per output channel and per token,
    # the arithmetic of erank_fast_int8; w8a8_copy.py in the llm-compressor venv), the rest in
    # bf16 or float32
    "vllm_int8": ("run_vllm.py", ["--reserved-cpus", "0", "--weights", "w8a8"], "vllm"),
    "vllm_int8_fp32": ("run_vllm.py", ["--dtype", "float32", "--reserved-cpus", "0",
                                       "--weights", "w8a8"], "vllm"),
    "llamacpp_q4_1": ("run_llamacpp.py", ["--weights", "q4_1"], "llamacpp"),
    "llamacpp_bf16": ("run_llamacpp.py", ["--weights", "bf16"], "llamacpp"),
    # the shipped weights de-quantised (what erank_fast and vLLM load), and llama.cpp's own 8-bit
    # blocks of them: its fastest type on CPUs without bf16 units
    "llamacpp_f32": ("run_llamacpp.py", ["--weights", "f32"], "llamacpp"),
    "llamacpp_q8_0": ("run_llamacpp.py", ["--weights", "q8_0"], "llamacpp"),
}
REFERENCE = "erank_fast_fp32"
BASE_MODEL = "smollm2-135m-instruct"


def export_workload(data: Path, queries: int, docs: int, think, max_doc_tokens: int,
                    work: Path, gguf_kinds: tuple[str, ...] = ()) -> dict:
    """The prompts as token ids, and the GGUF file with its copies in ``gguf_kinds`` (made once
    in ``work``) for llama.cpp."""
    from erank_fast import Reranker
    from erank_fast.models.loading import OFFLINE_MODELS, resolve_model_path
    from erank_fast.prompt import ANSWER_OPEN, BUDGET_CONTINUATION

    model_dir = resolve_model_path(BASE_MODEL)
    rr = Reranker.from_pretrained(str(model_dir), think=think, max_doc_tokens=max_doc_tokens)
    rows = [json.loads(line) for line in data.open(encoding="utf-8")][:queries]
    encode = lambda text: rr.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    out = []
    for row in rows:
        p = rr.segment(row["query"], [c["text"] for c in row["candidates"][:docs]],
                       think_off=think == "off")
        out.append({"qid": row["qid"], "prefix": p.prefix, "suffixes": p.suffixes})
    import importlib.util

    from gguf_copies import write_copy

    package, filename = OFFLINE_MODELS[BASE_MODEL]
    q4_1 = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / filename
    work.mkdir(parents=True, exist_ok=True)
    gguf = {"q4_1": str(q4_1)}
    for kind in gguf_kinds:
        gguf[kind] = str(write_copy(q4_1, work / f"{q4_1.stem.split('.')[0]}-{kind}.gguf", kind))
    return {"think": think, "model_dir": str(model_dir), "gguf": gguf,
            "tokens": {"digits": list(rr.tokens.digits), "one": rr.tokens.one,
                       "answer_open": encode(ANSWER_OPEN),
                       "think_close_answer": encode(BUDGET_CONTINUATION),
                       "eos": sorted(rr.eos_ids)},
            "queries": out}


def gguf_copies_read_by(systems: list[str]) -> tuple[str, ...]:
    """The GGUF copies (``gguf_copies.KINDS``) the llama.cpp systems among ``systems`` read; the
    shipped Q4_1 file needs none."""
    kinds = (SYSTEMS[name][1][-1] for name in systems if SYSTEMS[name][0] == "run_llamacpp.py")
    return tuple(kind for kind in kinds if kind != "q4_1")


def reads_w8a8(name: str) -> bool:
    """Whether system ``name`` loads the W8A8 copy (vLLM's int8 systems)."""
    return "w8a8" in SYSTEMS[name][1]


def w8a8_copy(systems: list[str], work: Path) -> Path | None:
    """The W8A8 copy of the model that the systems reading ``--weights w8a8`` load (made once in
    ``work`` by ``w8a8_copy.py`` in the llm-compressor venv); None when no system reads it or
    that venv is missing (``main`` then skips those systems)."""
    if not any(map(reads_w8a8, systems)):
        return None
    python = python_of("llmcompressor")
    if python is None:
        return None
    from erank_fast.models.loading import resolve_model_path

    target = work / "SmolLM2-135M-Instruct-w8a8"
    if not target.exists():  # w8a8_copy.py writes it whole or not at all
        subprocess.run([str(python), str(HERE / "w8a8_copy.py"),
                        str(resolve_model_path(BASE_MODEL)), str(target)], check=True)
    return target


def python_of(venv: str | None) -> Path | None:
    if venv is None:
        return Path(sys.executable)
    path = HERE / f".venv-{venv}" / "bin" / "python"
    return path if path.exists() else None


def checkout(ref: str, work: Path) -> Path:
    """A worktree of erank_fast at ``ref`` (made once per commit) for the before systems."""
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=HERE, check=True,
                            capture_output=True, text=True).stdout.strip()
    tree = work / f"erank_fast-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), commit], cwd=HERE,
                       check=True)
    return tree


def run_system(name: str, workload: Path, out: Path, tree: Path | None = None) -> dict | None:
    """One system on the workload in its own process; ``tree``: erank_fast from that checkout
    (its runner and package) instead of this one."""
    runner, extra, venv = SYSTEMS[name]
    python = python_of(venv)
    if python is None:
        print(f"skip {name}: no venv (bash bench/peers/setup.sh {venv})")
        return None
    if "--quantize" in extra and tree is None:
        from erank_fast.cpu import default_cpu_dtype
        from erank_fast.ops.int8_linear import int8_unavailable_reason

        reason = int8_unavailable_reason(default_cpu_dtype())
        if reason is not None:
            print(f"skip {name}: {reason}")
            return None
    env, script = None, HERE / runner
    if tree is not None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        script = tree / "bench" / "peers" / runner
    subprocess.run([str(python), str(script), str(workload), str(out), *extra], check=True,
                   cwd=script.parent, env=env)
    result = peer_io.read(str(out))
    result["system"] = name
    return result


def summarize(result: dict, reference: dict | None) -> dict:
    rates = [len(q["docs"]) / q["seconds"] for q in result["queries"]]
    gen = [d["generated"] for q in result["queries"] for d in q["docs"]]
    row = {"system": result["system"], "settings": result.get("settings", {}),
           "docs_per_s_median": statistics.median(rates), "docs_per_s_min": min(rates),
           "docs_per_s_max": max(rates), "load_s": result["load_s"],
           "warmup_s": result["warmup_s"], "reasoning_tokens_per_doc": sum(gen) / len(gen)}
    if reference is not None:
        row.update(agreement(result, reference))
    return row


def table(rows: list[dict]) -> str:
    lines = ["| think | system | docs/s (median, min-max) | vs erank_fast | reasoning tok/doc | "
             "load + warm-up s | max abs d score | Spearman | top-10 |", "|" + "---|" * 9]
    for r in rows:
        ours = next((x for x in rows if x["think"] == r["think"] and x["system"] == "erank_fast"),
                    None)
        ratio = f"{r['docs_per_s_median'] / ours['docs_per_s_median']:.2f}x" if ours else "-"
        agree = (f"{r['max_abs_delta_score']:.3f} | {r['spearman']:.3f} | {r['top10_overlap']:.2f}"
                 if "spearman" in r else "- | - | -")
        lines.append(f"| {r['think']} | {r['system']} | {r['docs_per_s_median']:.2f} "
                     f"({r['docs_per_s_min']:.2f}-{r['docs_per_s_max']:.2f}) | {ratio} | "
                     f"{r['reasoning_tokens_per_doc']:.1f} | {r['load_s']:.1f} + "
                     f"{r['warmup_s']:.1f} | {agree} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thinks = list(dict.fromkeys(r["think"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        xs, ys, lo, hi = [], [], [], []
        for j, t in enumerate(thinks):
            r = next((r for r in rows if r["system"] == s and r["think"] == t), None)
            if r:
                xs.append(j + i * width)
                ys.append(r["docs_per_s_median"])
                lo.append(r["docs_per_s_median"] - r["docs_per_s_min"])
                hi.append(r["docs_per_s_max"] - r["docs_per_s_median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], label=s, capsize=3)
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(thinks))])
    ax.set_xticklabels([f"think={t}" for t in thinks])
    ax.set_ylabel("documents / s (median over cold queries)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    from erank_fast.cpu import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--think", nargs="+", default=["off", "64"])
    parser.add_argument("--max_doc_tokens", type=int, default=256)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=HERE.parent / "results")
    parser.add_argument("--before", metavar="GIT_REF",
                        help="also run the chosen erank_fast systems as of this commit")
    args = parser.parse_args()
    # every system runs in its own process and folder: paths must not depend on the cwd
    args.data, args.work, args.out = args.data.resolve(), args.work.resolve(), args.out.resolve()
    if not args.data.is_file():
        sys.exit(f"no data at {args.data} (the TREC files of shared/data)")
    args.work.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    systems = args.systems.split(",")
    unknown = [name for name in systems if name not in SYSTEMS]
    if unknown:
        sys.exit(f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}")
    copies = gguf_copies_read_by(systems)
    w8a8 = w8a8_copy(systems, args.work)
    if w8a8 is None and any(map(reads_w8a8, systems)):
        print("skip the W8A8 systems: no llm-compressor venv "
              "(bash bench/peers/setup.sh llmcompressor)")
        systems = [name for name in systems if not reads_w8a8(name)]
    rows = []
    for think in args.think:
        think = think if think in ("off", "full") else int(think)
        workload = export_workload(args.data, args.queries, args.docs, think, args.max_doc_tokens,
                                   args.work, copies)
        if w8a8 is not None:
            workload["w8a8_dir"] = str(w8a8)
        wpath = args.work / f"workload-think-{think}.json"
        peer_io.write(str(wpath), workload)
        results = {}
        for name in systems:
            r = run_system(name, wpath, args.work / f"{name}-think-{think}.json")
            if r is not None:
                results[name] = r
        if args.before:
            tree = checkout(args.before, args.work)
            for name in [n for n in systems if n.startswith("erank_fast")]:
                label = f"{name}@{args.before}"
                r = run_system(name, wpath, args.work / f"{label}-think-{think}.json", tree)
                r["system"] = label
                results[label] = r
        reference = results.get(REFERENCE)
        for name, r in results.items():
            rows.append({"think": think, **summarize(r, reference if name != REFERENCE else None)})
    print(table(rows))
    stamp = datetime.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{stamp}-peers-{cpu['slug']}"
    stem.with_suffix(".json").write_text(json.dumps(
        {"cpu": cpu, "workload": {"data": args.data.name, "queries": args.queries,
                                  "docs": args.docs, "max_doc_tokens": args.max_doc_tokens,
                                  "model": BASE_MODEL}, "before": args.before,
         "rows": rows, "table": table(rows)}, indent=1), encoding="utf-8")
    plot(rows, stem.with_suffix(".png"),
         f"{BASE_MODEL}, {args.queries} cold TREC queries x {args.docs} BM25 passages; "
         f"{cpu['model']}, {cpu['cores']} cores")
    print(f"wrote {stem}.json and .png")


if __name__ == "__main__":
    main()
