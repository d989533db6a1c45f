"""The ``erank-fast`` commands that run on Ray: ``serve --replicas N`` (Ray Serve) and
``rerank-batch`` (a Ray Data actor pool). Ray is imported only when one of them runs (the
``ray`` extra)."""

from __future__ import annotations

import os
import sys


def add_replica_options(s) -> None:
    """``serve``'s options for Ray Serve replicas."""
    s.add_argument("--replicas", type=int, default=None,
                   help="serve with N Ray Serve replicas, each its own reranker (needs the "
                        "'ray' extra); without it, one process")
    s.add_argument("--threads-per-replica", type=int, default=None,
                   help="CPU threads of each replica (default: cores / replicas)")
    s.add_argument("--autoscale", action="store_true",
                   help="with --replicas N: scale between 1 and N replicas on ongoing requests")
    s.add_argument("--ray", default=None, help="Ray cluster address (default: a local Ray)")


def add_rerank_batch_parser(sub, model_options) -> None:
    b = sub.add_parser("rerank-batch", help="score every query of JSONL/Parquet files with a "
                                            "pool of Ray actors; resumable (needs the 'ray' "
                                            "extra)")
    model_options(b)
    b.add_argument("--input", required=True,
                   help="JSONL (qid, query, candidates per line) or Parquet, or a directory")
    b.add_argument("--output", required=True, help="directory of result shards")
    b.add_argument("--format", default="parquet", choices=["parquet", "jsonl"])
    b.add_argument("--actors", type=int, default=None,
                   help="rerankers in the pool (default: one per GPU; on a CPU, one)")
    b.add_argument("--threads-per-actor", type=int, default=None,
                   help="CPU threads of each actor (default: cores / actors)")
    b.add_argument("--queries-per-batch", type=int, default=4,
                   help="queries an actor scores together (their documents share steps)")
    b.add_argument("--depth", type=int, default=None, help="score the top K candidates")
    b.add_argument("--ray", default=None, help="Ray cluster address (default: a local Ray)")


def serve_replicas(args, limits, reranker_options: dict) -> int:
    """``erank-fast serve --replicas N``: the server on Ray Serve."""
    try:
        from erank_fast.server import replicas
    except ImportError as e:
        print(f"erank-fast serve --replicas needs the 'ray' extra (pip install "
              f"'erank_fast[ray,serve]'): {e}", file=sys.stderr)
        return 2
    import functools

    from erank_fast import Reranker

    if args.replicas < 1:
        print("erank-fast: --replicas must be >= 1", file=sys.stderr)
        return 2
    threads = args.threads_per_replica or max(1, (os.cpu_count() or 1) // args.replicas)
    load = functools.partial(Reranker.from_pretrained, args.model, **reranker_options)
    return replicas.run(load, model_name=args.model, limits=limits, replicas=args.replicas,
                        threads_per_replica=threads, host=args.host, port=args.port,
                        autoscale=args.autoscale, ray_address=args.ray)


def rerank_batch(args, reranker_options: dict) -> int:
    """``erank-fast rerank-batch``: score query files on a Ray actor pool."""
    try:
        from erank_fast.batch.ray_pool import ActorSpec, default_pool, rerank_batch
    except ImportError as e:
        print(f"erank-fast rerank-batch needs the 'ray' extra (pip install 'erank_fast[ray]'): "
              f"{e}", file=sys.stderr)
        return 2
    try:
        actors, threads, gpus = default_pool(args.actors, args.threads_per_actor)
        spec = ActorSpec(args.model, reranker_options, threads=threads, gpus=gpus)
        stats = rerank_batch(args.input, args.output, spec, actors=actors,
                             queries_per_batch=args.queries_per_batch, depth=args.depth,
                             fmt=args.format, ray_address=args.ray)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"erank-fast rerank-batch: {e}", file=sys.stderr)
        return 2
    print(f"{stats['queries']} queries ({stats['pairs']} pairs) scored in "
          f"{stats['seconds']:.1f} s ({stats['pairs_per_second']:.1f} pairs/s) by "
          f"{stats['actors']} actor(s) x {stats['threads_per_actor']} thread(s); "
          f"{stats['skipped_queries']} already in {args.output}; "
          f"{stats['shards_written']} shard(s) written")
    return 0
