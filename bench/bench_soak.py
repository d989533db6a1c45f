"""A soak of the HTTP server over loopback: for a fixed time (``ERANK_SOAK_SECONDS``, default
120; a few seconds in smoke runs), 32 concurrent clients send /v1/rerank requests of 1-40
documents drawn from a fixed pool, and a fraction of them disconnect mid-request at a random
moment. Checked: no error response, every completed response equal to that request's sequential
result, the K/V rows in use back to 0 at the end, resident memory growth bounded; reported:
requests, disconnects, the server's cancellation counter, and live RSS at start, after a warm-up
(a quarter of the soak, at least 6 s: the K/V arena is allocated untouched and becomes resident as
its rows are first written, so growth is bounded from there) and at the end. "Live" means after a
garbage collection and, on glibc, ``malloc_trim(0)``: freed memory that malloc keeps for reuse
swings the raw figure by a few hundred MiB from one moment to the next, which is not growth.

The model is bench_rerank's small random Qwen3 on CPU (cheap per document, so the server and
the engine's scheduling are what is soaked). The load stops by itself; only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import random
import re
import socket
import threading
import time

import pytest

from tests.kernels.kernel_cases import SMOKE

SECONDS = 6 if SMOKE else float(os.environ.get("ERANK_SOAK_SECONDS", "120"))
CONCURRENCY = 8 if SMOKE else 32
DISCONNECT_FRACTION = 0.2
WARMUP_SECONDS = max(SECONDS / 4, 6.0)
RSS_GROWTH_LIMIT = 300 * 2**20


def _live_rss(process) -> int:
    """Resident bytes once garbage is collected and glibc has returned its free pages."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the raw figure
        pass
    return process.memory_info().rss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pool(n: int = 24) -> list[tuple[str, list[str]]]:
    rng = random.Random(7)
    words = "tide moon sea vaccine immune cell river bank money rate cycle flea host egg".split()
    return [(" ".join(rng.choice(words) for _ in range(4)),
             [" ".join(rng.choice(words) for _ in range(rng.randint(5, 60)))
              for _ in range(rng.randint(1, 40))]) for _ in range(n)]


def test_soak_with_disconnects(benchmark):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    psutil = pytest.importorskip("psutil")
    import torch
    import uvicorn

    from bench.bench_rerank import setup
    from erank_fast import Reranker
    from erank_fast.server import ServerLimits, create_app

    model, tok, _ = setup("qwen3-small", torch.float32)
    reranker = Reranker.from_pretrained(model, tokenizer=tok, think="off", max_doc_tokens=128)
    pool = _pool(6 if SMOKE else 24)
    expected = [[(r.index, r.score) for r in reranker.rerank(q, d)] for q, d in pool]
    app = create_app(lambda: reranker, model_name="soak", limits=ServerLimits())
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    process = psutil.Process()
    rss_start = _live_rss(process)
    counts = {"completed": 0, "disconnected": 0, "errors": 0, "mismatched": 0}

    async def client(seed: int, deadline: float) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                i = rng.randrange(len(pool))
                query, docs = pool[i]
                leave = rng.random() < DISCONNECT_FRACTION
                timeout = rng.uniform(0.01, 0.5) if leave else 120
                try:
                    r = await http.post(url + "/v1/rerank", json={"query": query,
                                                                  "documents": docs},
                                        timeout=timeout)
                except httpx.TimeoutException:
                    counts["disconnected"] += 1
                    continue
                if r.status_code != 200:
                    counts["errors"] += 1
                    continue
                got = [(x["index"], x["relevance_score"]) for x in r.json()["results"]]
                same = [a for a, _ in got] == [a for a, _ in expected[i]] and all(
                    abs(s - t) <= 1e-5 for (_, s), (_, t) in zip(got, expected[i]))
                counts["completed"] += 1
                counts["mismatched"] += not same

    async def soak(seconds: float, seed: int) -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(client(seed + s, deadline) for s in range(CONCURRENCY)))

    asyncio.run(soak(WARMUP_SECONDS, 1000))  # warm-up: the arena's rows become resident
    rss_warm = _live_rss(process)
    start = time.perf_counter()
    benchmark.pedantic(lambda: asyncio.run(soak(SECONDS, 0)), rounds=1, iterations=1)
    wall = time.perf_counter() - start
    deadline = time.monotonic() + 30  # cancelled work is released at the engine's next step
    while reranker.inspect().kv_tokens_in_use and time.monotonic() < deadline:
        time.sleep(0.05)
    metrics = httpx.get(url + "/metrics").text
    cancelled = int(float(re.search(r"^erank_fast_cancelled_requests_total (\S+)$", metrics,
                                    re.M).group(1)))
    rss_end = _live_rss(process)
    server.should_exit = True
    thread.join(timeout=10)
    info = {**counts, "seconds": wall, "concurrency": CONCURRENCY, "cancelled": cancelled,
            "kv_tokens_in_use_after": reranker.inspect().kv_tokens_in_use,
            "rss_start_mib": rss_start / 2**20, "rss_after_warmup_mib": rss_warm / 2**20,
            "rss_end_mib": rss_end / 2**20}
    benchmark.extra_info.update(info)
    print("soak:", info)
    assert counts["errors"] == 0 and counts["mismatched"] == 0 and counts["completed"] > 0
    assert info["kv_tokens_in_use_after"] == 0
    # A client can leave after its response was computed, so cancellations <= disconnects.
    assert cancelled <= counts["disconnected"]
    assert rss_end - rss_warm < RSS_GROWTH_LIMIT
