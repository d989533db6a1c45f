"""``erank-fast rerank-batch``: every query of an input scored by a pool of Ray actors, each
holding one Reranker, with results written as resumable shards (``erank_fast.batch.outputs``).

The pipeline is Ray Data's streaming executor: the pending queries (those not yet in the
output) become a dataset, ``map_batches`` runs them through ``RerankActor`` instances (one per
GPU, or ``threads_per_actor`` CPU cores each), and the driver writes each finished batch as a
shard as it arrives, so a killed job keeps every completed shard and a rerun does only the
rest. Ray is an optional dependency (``pip install -e ".[ray]"``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from erank_fast.batch.inputs import read_queries
from erank_fast.batch.outputs import ShardWriter, candidate_rows
from erank_fast.validation import positive_int


@dataclass(frozen=True)
class ActorSpec:
    """What each actor loads and how much of the machine it takes."""

    model: str
    options: dict = field(default_factory=dict)  # Reranker.from_pretrained keyword arguments
    threads: int = 1                              # torch threads (CPU actors)
    gpus: float = 0.0                             # GPUs per actor (0 on a CPU machine)


class RerankActor:
    """One Reranker; called by Ray Data with a batch of whole queries, returns one row per
    query with each candidate's results as parallel lists (input order)."""

    def __init__(self, spec: ActorSpec):
        import torch

        from erank_fast import Reranker

        if spec.gpus == 0:
            torch.set_num_threads(spec.threads)
        self.reranker = Reranker.from_pretrained(spec.model, **spec.options)

    def __call__(self, batch: dict) -> dict:
        queries = [str(q) for q in batch["query"]]
        texts = [[str(t) for t in ts] for ts in batch["texts"]]
        results = self.reranker.rerank_many(queries, texts)
        out = {k: [] for k in ("qid", "docids", "index", "rank", "score", "answer",
                               "probability", "distribution", "num_generated_tokens")}
        for qid, docids, res in zip(batch["qid"], batch["docids"], results):
            by_index = sorted(((r.index, rank, r) for rank, r in enumerate(res, 1)),
                              key=lambda t: t[0])
            out["qid"].append(str(qid))
            out["docids"].append([str(d) for d in docids])
            out["index"].append([i for i, _, _ in by_index])
            out["rank"].append([rank for _, rank, _ in by_index])
            out["score"].append([r.score for _, _, r in by_index])
            out["answer"].append([-1 if r.answer is None else r.answer for _, _, r in by_index])
            out["probability"].append([r.probability for _, _, r in by_index])
            out["distribution"].append([list(r.distribution) for _, _, r in by_index])
            out["num_generated_tokens"].append([r.num_generated_tokens for _, _, r in by_index])
        return out


def default_pool(actors: int | None, threads_per_actor: int | None) -> tuple[int, int, float]:
    """(actors, threads per actor, GPUs per actor): one actor per GPU on a GPU machine; on a CPU
    machine, all cores to one actor unless told otherwise."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if torch.cuda.is_available():
        return actors or torch.cuda.device_count(), threads_per_actor or 1, 1.0
    if actors is None:
        actors = max(1, cores // threads_per_actor) if threads_per_actor else 1
    positive_int("actors", actors)
    threads = threads_per_actor or max(1, cores // actors)
    return actors, threads, 0.0


def _query_rows(batch: dict) -> list[dict]:
    """Ray Data's columnar batch (numpy object arrays) back to per-query dicts."""
    n = len(batch["qid"])
    rows = []
    for i in range(n):
        row = {k: batch[k][i] for k in batch}
        row["answer"] = [None if a < 0 else int(a) for a in row["answer"]]
        rows.append(row)
    return rows


def rerank_batch(input_path: str, output_dir: str, spec: ActorSpec, *, actors: int = 1,
                 queries_per_batch: int = 4, depth: int | None = None, fmt: str = "parquet",
                 ray_address: str | None = None, progress: bool = True) -> dict:
    """Score every query of ``input_path`` not yet in ``output_dir``; returns counts and
    timings: {"queries", "pairs", "skipped_queries", "seconds", "pairs_per_second",
    "shards_written", "actors", "threads_per_actor"}."""
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("rerank-batch runs on Ray: pip install -e '.[ray]'") from e
    from tqdm.auto import tqdm

    positive_int("queries_per_batch", queries_per_batch)
    writer = ShardWriter(output_dir, fmt)
    done = writer.done_queries()
    pending, seen = [], set()
    for q in read_queries(input_path, depth):
        if q["qid"] in seen:
            raise ValueError(f"{input_path}: query id {q['qid']!r} appears twice; results are "
                             "keyed by query id")
        seen.add(q["qid"])
        if q["qid"] not in done and q["docids"]:
            pending.append(q)
    stats = {"queries": len(pending), "pairs": sum(len(q["docids"]) for q in pending),
             "skipped_queries": len(seen & done), "shards_written": 0, "actors": actors,
             "threads_per_actor": spec.threads, "seconds": 0.0, "pairs_per_second": 0.0}
    if not pending:
        return stats
    started_here = not ray.is_initialized()
    if started_here:
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:  # a local Ray for this call, sized to what the actors need
            ray.init(num_cpus=max(actors * spec.threads, 1), include_dashboard=False,
                     log_to_driver=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # one bar, below, in pairs
        start = time.perf_counter()
        ds = ray.data.from_items(pending, override_num_blocks=max(1, len(pending) //
                                                                 queries_per_batch))
        scored = ds.map_batches(RerankActor, fn_constructor_kwargs={"spec": spec},
                                batch_size=queries_per_batch,
                                compute=ray.data.ActorPoolStrategy(size=actors),
                                num_cpus=spec.threads if spec.gpus == 0 else 1,
                                num_gpus=spec.gpus, batch_format="numpy")
        bar = tqdm(total=stats["pairs"], unit="pair", desc="reranking", disable=not progress)
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            rows = _query_rows(batch)
            writer.write(candidate_rows(rows))
            stats["shards_written"] += 1
            bar.update(sum(len(r["docids"]) for r in rows))
        bar.close()
        stats["seconds"] = time.perf_counter() - start
        stats["pairs_per_second"] = stats["pairs"] / stats["seconds"]
    finally:
        if started_here:
            ray.shutdown()
    return stats
