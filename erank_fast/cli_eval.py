"""The ``erank-fast`` commands that measure ranking quality: ``eval`` (rerank first-stage
candidates; nDCG / MRR, and how sure each ranking's gain over the first stage is) and ``compare``
(the per-query results of evaluations that ``eval --out`` wrote, paired query by query: is one
model better than another on these queries, or is the difference noise?)."""

from __future__ import annotations

import json
import sys

from erank_fast.evaluation.metrics import METRICS
from erank_fast.evaluation.significance import RANKINGS

SIGNIFICANCE_HINT = ("mean ± s.e., difference [{confidence:.0%} CI], p: paired t-test, and the "
                     "paired randomisation test's p")


def add_parsers(sub, model_options) -> None:
    e = sub.add_parser("eval", help="rerank first-stage candidates and report nDCG / MRR")
    model_options(e)
    e.add_argument("--data", help="reranking JSONL (qid, query, candidates)")
    e.add_argument("--corpus", help="BEIR corpus.jsonl (with --beir-queries and --run)")
    e.add_argument("--beir-queries", help="BEIR queries.jsonl")
    e.add_argument("--run", help="TREC run file giving the first stage (BEIR style)")
    e.add_argument("--qrels", required=True, help="TREC qrels")
    e.add_argument("--skip-queries", type=int, default=0,
                   help="leave out the first N queries (DL21 with 43: the 10 queries erank-smol "
                        "never trained on)")
    e.add_argument("--queries", type=int, default=None, help="evaluate the first N queries "
                                                             "(after --skip-queries)")
    e.add_argument("--depth", type=int, default=None, help="rerank the top K candidates")
    e.add_argument("--save-run", default=None, help="write the reranked scores as a TREC run file")
    e.add_argument("--save-distributions", default=None,
                   help="write each document's score probabilities p(0..10) (over the whole "
                        "vocabulary, as the scores read them) as JSON ({qid: {docid: [...]}}); "
                        "train/readouts.py compares other readouts of them")
    e.add_argument("--hybrid", type=float, default=0.2, help="first-stage weight in the fusion")
    e.add_argument("--out", help="write the full results (per query too) as JSON")
    c = sub.add_parser("compare", help="paired comparison of evaluations written by eval --out")
    c.add_argument("results", nargs="+", metavar="RESULT",
                   help="one eval --out JSON: its rankings against its first stage (or "
                        "--baseline); two: the second's rankings against the first's, query by "
                        "query")
    c.add_argument("--metric", default="ndcg@10", choices=list(METRICS))
    c.add_argument("--baseline", default="first_stage", choices=list(RANKINGS),
                   help="with one result: the ranking the others are compared with")
    c.add_argument("--confidence", type=float, default=0.95, help="of the intervals")
    c.add_argument("--json", action="store_true", help="print the comparisons as JSON")


def run_eval(args, load) -> int:
    from erank_fast.evaluation.runner import format_report, run_evaluation
    from erank_fast.evaluation.trec import read_beir, read_jsonl, read_qrels, write_trec_run
    from erank_fast.fusion import check_alpha

    try:
        if args.skip_queries < 0:
            raise ValueError(f"--skip-queries must be at least 0, got {args.skip_queries}")
        check_alpha(args.hybrid)
        if args.data:
            queries = read_jsonl(args.data, depth=args.depth)
        elif args.corpus and args.beir_queries and args.run:
            queries = read_beir(args.corpus, args.beir_queries, args.run, depth=args.depth)
        else:
            raise ValueError("pass --data, or --corpus with --beir-queries and --run")
        qrels = read_qrels(args.qrels)
        reranker = load(args)
    except (OSError, ValueError) as e:
        print(f"erank-fast eval: {e}", file=sys.stderr)
        return 2
    queries = queries[args.skip_queries:][: args.queries]
    result = run_evaluation(reranker, queries, qrels, hybrid_alpha=args.hybrid)
    print(format_report(result))
    comparisons = _against_first_stage(result)
    if comparisons:
        result["against_first_stage"] = {k: c.as_dict() for k, c in comparisons.items()}
        print(f"ndcg@10 against the first stage over {next(iter(comparisons.values())).queries} "
              f"queries ({SIGNIFICANCE_HINT.format(confidence=0.95)}):")
        for name, comparison in comparisons.items():
            print(f"  {name:<12} {comparison.describe()}")
    run, distributions = result.pop("run"), result.pop("distributions")
    if args.save_run:
        write_trec_run(run, args.save_run)
    if args.save_distributions:
        with open(args.save_distributions, "w", encoding="utf-8") as f:
            json.dump(distributions, f)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


def _against_first_stage(result: dict) -> dict:
    """Each ranking's gain over the first stage, or {} where it cannot be had (fewer than two
    queries with relevant documents; scipy missing, with a hint)."""
    try:
        from erank_fast.evaluation.significance import against_baseline

        return against_baseline(result) if result["queries_evaluated"] >= 2 else {}
    except ImportError:
        print("erank-fast eval: confidence intervals need scipy (pip install 'erank_fast[eval]')",
              file=sys.stderr)
        return {}


def run_compare(args) -> int:
    try:
        from erank_fast.evaluation.significance import against_baseline, compare, per_query

        if len(args.results) > 2:
            raise ValueError(f"compare takes one or two results, got {len(args.results)}")
        results = [_read_result(path) for path in args.results]
        names = [n for n in RANKINGS if n in next(iter(results[-1]["per_query"].values()), {})]
        if len(results) == 1:
            comparisons = against_baseline(results[0], args.baseline, args.metric,
                                           confidence=args.confidence)
            title = f"{args.metric} against " + ("the first stage" if args.baseline ==
                                                 "first_stage" else args.baseline)
        else:
            comparisons = {n: compare(per_query(results[0], n, args.metric),
                                      per_query(results[1], n, args.metric),
                                      confidence=args.confidence) for n in names}
            title = f"{args.metric}, {args.results[1]} against {args.results[0]}"
        if not comparisons:
            raise ValueError(f"{args.results[0]} has no ranking besides {args.baseline}")
    except ImportError as e:
        print(f"erank-fast compare needs scipy (pip install 'erank_fast[eval]'): {e}",
              file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"erank-fast compare: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({n: c.as_dict() for n, c in comparisons.items()}, indent=1))
        return 0
    counts = [len(r["per_query"]) for r in results]
    shared = next(iter(comparisons.values())).queries
    print(f"{title}, paired over {shared} queries"
          + (f" (of {counts[0]} and {counts[1]})" if len(counts) == 2 and
             counts != [shared, shared] else "")
          + f" ({SIGNIFICANCE_HINT.format(confidence=args.confidence)}):")
    for name, comparison in comparisons.items():
        print(f"  {name:<12} {comparison.describe()}")
    return 0


def _read_result(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg})") from e
    if not isinstance(result, dict) or not isinstance(result.get("per_query"), dict) or \
            not result["per_query"]:
        raise ValueError(f"{path}: not an evaluation result with per-query values (write one "
                         "with erank-fast eval --out)")
    return result
