"""Condense pytest-benchmark JSON files into one table (printed) and one small results file.

    python bench/summarize.py bench.json [more.json ...] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

# Within a group, speedups are reported against the first of these providers present.
BASELINES = ("sdpa_per_document", "sdpa_per_sequence", "full_logits", "transformers",
             "generate_batch", "erank_fast graphs off")


def summarize(data: dict) -> list[dict]:
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        rows.append({"group": b.get("group") or b["name"], "provider": info.get("provider", b["name"]),
                     "median_ms": b["stats"]["median"] * 1e3, **info})
    by_group = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    for group_rows in by_group.values():
        base = next((r for name in BASELINES for r in group_rows if r["provider"] == name), None)
        for r in group_rows:
            r["speedup_vs_baseline"] = base["median_ms"] / r["median_ms"] if base else None
            r["baseline"] = base["provider"] if base else None
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'group':<44} {'provider':<24} {'ms':>9} {'TFLOP/s':>8} {'GB/s':>8} {'roofline':>8} {'speedup':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        def f(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else "-"
        lines.append(f"{r['group'][:44]:<44} {r['provider'][:24]:<24} {r['median_ms']:>9.3f} "
                     f"{f('tflops', '8.1f')} {f('gbps', '8.0f')} {f('roofline_fraction', '8.2f')} "
                     f"{f('speedup_vs_baseline', '8.2f')}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("json_files", nargs="+")
    parser.add_argument("--out")
    args = parser.parse_args()
    data = {"benchmarks": []}
    for name in args.json_files:
        try:
            with open(name) as f:
                part = json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            print(f"skipped {name}: {error}")
            continue
        data["benchmarks"] += part["benchmarks"]
        data.setdefault("machine_info", part.get("machine_info", {}))
        data.setdefault("datetime", part.get("datetime"))
    rows = summarize(data)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": data.get("machine_info", {}), "datetime": data.get("datetime"),
                       "results": rows}, f, indent=1)
    print(table(rows))


if __name__ == "__main__":
    main()
