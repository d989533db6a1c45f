"""The HTTP server under load, over loopback: DL19 queries with 20-100 BM25 candidates each,
sent by 1, 8 and 32 concurrent clients to `/v1/rerank`, against the same requests through the
Python API in-process (threads calling ``Reranker.rerank``). Records requests sent and answered,
errors, latency p50/p95/p99 and docs/s; the HTTP / in-process throughput ratio is in the
in-process run's extra_info once both ran. The load is bounded (a fixed request list) and stops
by itself.

Model (think="off", random weights, bench_rerank's configurations): on CPU the small Qwen3
(8 layers × 512, Qwen3 tokenizer), cheap enough per document that any server overhead shows;
on CUDA the Qwen3-4B configuration in bfloat16. Without the shared data, synthetic documents.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from bench.hardware import DEVICE
from tests.kernels.kernel_cases import SMOKE

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dl19-bm25-top100.jsonl"
CONCURRENCY = [1, 4] if SMOKE else [1, 8, 32]
REQUESTS = 4 if SMOKE else 16  # per run; at least the concurrency (32 at 32)
_seen: dict = {}


def workload(n: int) -> list[tuple[str, list[str]]]:
    """n (query, documents) requests, 20-100 documents each (a few in smoke runs)."""
    rng = random.Random(0)
    low, high = (2, 4) if SMOKE else (20, 100)
    if DATA.is_file():
        rows = [json.loads(line) for line in DATA.open(encoding="utf-8")]
        picks = [rows[i % len(rows)] for i in range(n)]
        return [(r["query"], [c["text"] for c in r["candidates"][: rng.randint(low, high)]])
                for r in picks]
    words = "the of and to in is that for it as was with be by on not he this are or".split()
    return [(f"query {i}", [" ".join(rng.choice(words) for _ in range(60))
                            for _ in range(rng.randint(low, high))]) for i in range(n)]


@pytest.fixture(scope="module")
def reranker():
    pytest.importorskip("fastapi")
    import torch

    from bench.bench_rerank import setup
    from erank_fast import Reranker

    name, dtype = ("qwen3-4b", torch.bfloat16) if DEVICE.type == "cuda" else ("qwen3-small",
                                                                               torch.float32)
    model, tok, _ = setup(name, dtype)
    return Reranker.from_pretrained(model, tokenizer=tok, think="off", max_doc_tokens=256)


@pytest.fixture(scope="module")
def server(reranker):
    import uvicorn

    from erank_fast.server import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(lambda: reranker, model_name="bench"),
                                        host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    import httpx

    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _drive(send, requests, concurrency: int) -> dict:
    latencies, errors = [], 0
    start = time.perf_counter()

    def one(request):
        t0 = time.perf_counter()
        ok = send(*request)
        return ok, time.perf_counter() - t0

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for ok, seconds in pool.map(one, requests):
            latencies.append(seconds)
            errors += not ok
    wall = time.perf_counter() - start
    docs = sum(len(d) for _, d in requests)
    return {"requests": len(requests), "answered": len(requests) - errors, "errors": errors,
            "p50_s": _percentile(latencies, 0.5), "p95_s": _percentile(latencies, 0.95),
            "p99_s": _percentile(latencies, 0.99), "docs_per_s": docs / wall, "wall_s": wall}


@pytest.mark.parametrize("concurrency", CONCURRENCY)
@pytest.mark.parametrize("provider", ["http", "in_process"])
def test_server_load(benchmark, reranker, server, provider, concurrency):
    import httpx

    requests = workload(max(REQUESTS, concurrency))
    client = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))

    def http(query, documents):
        r = client.post(server + "/v1/rerank", json={"query": query, "documents": documents})
        return r.status_code == 200 and len(r.json()["results"]) == len(documents)

    def in_process(query, documents):
        return len(reranker.rerank(query, documents)) == len(documents)

    send = http if provider == "http" else in_process
    reranker.rerank(*requests[0])  # warm-up
    box = {}
    benchmark.pedantic(lambda: box.update(_drive(send, requests, concurrency)), rounds=1,
                       iterations=1)
    client.close()
    info = {"provider": provider, "concurrency": concurrency, "device": str(DEVICE), **box}
    _seen[(provider, concurrency)] = box
    other = _seen.get(("http" if provider == "in_process" else "in_process", concurrency))
    if other is not None:
        http_box = box if provider == "http" else other
        api_box = other if provider == "http" else box
        info["http_over_in_process_throughput"] = http_box["docs_per_s"] / api_box["docs_per_s"]
    benchmark.group = f"server load, concurrency {concurrency}"
    benchmark.extra_info.update(info)
    assert box["errors"] == 0
