"""Ray Serve replicas against the single-process server, as a user would run them: `erank-fast
serve --model erank-smol` (2 threads) and `--replicas 2 --threads-per-replica 1`, the same
bounded loopback load (32 /v1/rerank requests of 10 DL19 passages, 8 at a time, after 2
warm-up requests): start-up, errors, p50/p99 latency, docs/s, and the largest score difference
between the two. Needs the ray and serve extras and the DL19 file.

    python bench/serve_replicas.py [--data ../shared/data/dl19-bm25-top100.jsonl]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

import httpx

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dl19-bm25-top100.jsonl"
QUERIES, REQUESTS_PER_QUERY, DOCS_PER_REQUEST = 8, 4, 10  # 32 requests of 10 passages
CLIENTS, WARM_UP, TIMEOUT_S = 8, 2, 300
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def requests_from(path: Path) -> list[tuple[str, list[str]]]:
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(QUERIES))]
    return [(row["query"], [c["text"] for c in
                            row["candidates"][i * DOCS_PER_REQUEST:(i + 1) * DOCS_PER_REQUEST]])
            for row in rows for i in range(REQUESTS_PER_QUERY)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str) -> None:
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)


def rerank(url: str, request: tuple[str, list[str]]) -> tuple[float, httpx.Response]:
    query, documents = request
    start = time.perf_counter()
    response = httpx.post(f"{url}/v1/rerank", json={"query": query, "documents": documents},
                          timeout=TIMEOUT_S)
    return time.perf_counter() - start, response


def run(requests: list[tuple[str, list[str]]], extra: list[str], label: str
        ) -> list[dict[int, float] | None]:
    """Serve erank-smol with ``extra`` options, send the load, print its figures; returns each
    request's scores by document index (None for a failed request)."""
    port = free_port()
    server = subprocess.Popen(["erank-fast", "serve", "--model", "erank-smol", "--port",
                               str(port), *extra], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        start = time.time()
        wait_healthy(url)
        startup = time.time() - start
        for request in requests[:WARM_UP]:
            rerank(url, request)
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            out = list(pool.map(lambda request: rerank(url, request), requests))
        wall = time.perf_counter() - start
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    latencies = sorted(seconds for seconds, _ in out)
    documents = sum(len(docs) for _, docs in requests)
    print(json.dumps({
        "label": label, "startup_s": round(startup, 1), "requests": len(requests),
        "errors": sum(response.status_code != 200 for _, response in out),
        "p50": round(statistics.median(latencies), 2),
        "p99": round(statistics.quantiles(latencies, n=100)[98], 2),
        "docs_per_s": round(documents / wall, 2)}), flush=True)
    return [{r["index"]: r["relevance_score"] for r in response.json()["results"]}
            if response.status_code == 200 else None for _, response in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    requests = requests_from(args.data)
    single = run(requests, [], "single process, 2 threads")
    replicas = run(requests, ["--replicas", "2", "--threads-per-replica", "1"],
                   "Ray Serve, 2 replicas x 1 thread")
    pairs = [(a, b) for a, b in zip(single, replicas) if a is not None and b is not None]
    print(json.dumps({
        "compared_requests": len(pairs),
        "max_abs_score_diff": max((abs(a[k] - b[k]) for a, b in pairs for k in a), default=None),
        "same_order": all(sorted(a, key=a.get) == sorted(b, key=b.get) for a, b in pairs)}))


if __name__ == "__main__":
    main()
