"""The HTTP servers under one bounded loopback load: `erank-fast serve` (POST /v1/rerank with
the query and document texts) against `vllm serve` (POST /v1/completions with the same prompts
as token ids, one request per query, max_tokens 1 and the top 20 log-probs: the digits read;
its prefix cache reset before each level), think off, SmolLM2-135M-Instruct, one server at a time on this machine, concurrency 1, 8 and 32.
Records per level: requests, errors, p50/p99 latency, docs/s.

    python bench/peers/http_peers.py --data ../shared/data/dl19-bm25-top100.jsonl

The request list is fixed (DL19 queries with 10-30 BM25 candidates each, max(16, concurrency)
requests per level) and the run stops by itself; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONCURRENCY = (1, 8, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests_for(data: Path, n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    rows = [json.loads(line) for line in data.open(encoding="utf-8")]
    picks = [rows[i % len(rows)] for i in range(n)]
    return [(r["query"], [c["text"] for c in r["candidates"][: rng.randint(10, 30)]])
            for r in picks]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> float:
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


async def run_level(send, work, concurrency: int) -> dict:
    import httpx

    latencies, errors = [], 0
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600) as client:
        async def one(item):
            nonlocal errors
            async with gate:
                start = time.perf_counter()
                ok = await send(client, item)
                latencies.append(time.perf_counter() - start)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(one(item) for item in work))
        wall = time.perf_counter() - start
    latencies.sort()
    docs = sum(len(d) for _, d in work)
    return {"concurrency": concurrency, "requests": len(work), "errors": errors,
            "p50_s": statistics.median(latencies),
            "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "docs_per_s": docs / wall, "wall_s": wall}


def serve_erank_fast(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "erank_fast.cli", "serve", "--model",
                             "smollm2-135m-instruct", "--think", "off", "--port", str(port),
                             "--max-doc-tokens", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def serve_vllm(port: int, model_dir: str, dtype: str) -> subprocess.Popen | None:
    """vLLM's OpenAI-compatible server at the settings of the offline runs (run_vllm.py)."""
    exe = HERE / ".venv-vllm" / "bin" / "python"
    if not exe.exists():
        print("skip vllm: no venv (bash bench/peers/setup.sh vllm)")
        return None
    # dev mode exposes /reset_prefix_cache: every concurrency level starts cold, as erank_fast
    # (which keeps no cache between requests) does
    # every core for the model, as in run_peers.py (vLLM's default keeps one core per worker
    # for its scheduler: on 2 cores, half the machine)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_SERVER_DEV_MODE": "1",
           "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    log = (HERE / "work").joinpath("vllm-serve.log")
    log.parent.mkdir(exist_ok=True)
    # `vllm serve` itself fails under vllm-cpu (it asks for the metadata of a package named
    # "vllm"); its OpenAI server module is the same server.
    return subprocess.Popen([str(exe), "-m", "vllm.entrypoints.openai.api_server", "--model",
                             model_dir, "--host", "127.0.0.1", "--port",
                             str(port), "--dtype", dtype, "--enable-prefix-caching",
                             "--block-size", "32", "--max-model-len", "4096"], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    from erank_fast import Reranker
    from erank_fast.cpu import cpu_info
    from erank_fast.models.loading import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=HERE.parent / "results")
    parser.add_argument("--systems", default="erank_fast,vllm")
    parser.add_argument("--vllm-dtype", choices=["bfloat16", "float32"], default=None,
                        help="default: erank_fast's CPU check (bfloat16 where this CPU runs it "
                             ">= 2x float32, else float32: vLLM's faster dtype there too)")
    args = parser.parse_args()
    systems = args.systems.split(",")
    vllm_dtype = args.vllm_dtype
    if vllm_dtype is None and "vllm" in systems:
        from erank_fast.cpu import fast_bf16  # a short GEMM check, only when vLLM runs

        vllm_dtype = "bfloat16" if fast_bf16() else "float32"
    model_dir = str(resolve_model_path("smollm2-135m-instruct"))
    tok_rr = Reranker.from_pretrained(model_dir, think="off", max_doc_tokens=256,
                                      backend="reference", device="cpu")
    rows = []
    for system in systems:
        port = free_port()
        proc = (serve_erank_fast(port) if system == "erank_fast"
                else serve_vllm(port, model_dir, vllm_dtype))
        if proc is None:
            continue
        try:
            ready_s = wait_ready(f"http://127.0.0.1:{port}/health", proc)
            for c in CONCURRENCY:
                work = requests_for(args.data, max(16, c), seed=c)
                if system == "vllm":
                    import httpx

                    httpx.post(f"http://127.0.0.1:{port}/reset_prefix_cache", timeout=60)
                if system == "erank_fast":
                    url = f"http://127.0.0.1:{port}/v1/rerank"

                    async def send(client, item, url=url):
                        r = await client.post(url, json={"query": item[0], "documents": item[1]})
                        return r.status_code == 200 and len(r.json()["results"]) == len(item[1])
                else:
                    url = f"http://127.0.0.1:{port}/v1/completions"
                    ids = {id(item): [tok_rr.prompt_ids(item[0], d, think_off=True)
                                      for d in item[1]] for item in work}

                    async def send(client, item, url=url, ids=ids):
                        r = await client.post(url, json={
                            "model": model_dir, "prompt": ids[id(item)], "max_tokens": 1,
                            "temperature": 0, "logprobs": 20})
                        return r.status_code == 200 and len(r.json()["choices"]) == len(item[1])
                row = {"system": system, "ready_s": ready_s,
                       **({"dtype": vllm_dtype} if system == "vllm" else {}),
                       **asyncio.run(run_level(send, work, c))}
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            stop(proc)
    lines = ["| system | concurrency | requests | errors | p50 s | p99 s | docs/s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['system']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
              f"{r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['docs_per_s']:.2f} |" for r in rows]
    print("\n".join(lines))
    cpu = cpu_info()
    stem = args.out / f"{datetime.date.today().isoformat()}-http-peers-{cpu['slug']}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "rows": rows,
                                                     "table": "\n".join(lines)}, indent=1))
    plot(rows, stem.with_suffix(".png"), f"smollm2-135m-instruct, think off; {cpu['model']}, "
                                         f"{cpu['cores']} cores")
    print(f"wrote {stem}.json and .png")


def plot(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8))
    for system in dict.fromkeys(r["system"] for r in rows):
        rs = [r for r in rows if r["system"] == system]
        cs = [r["concurrency"] for r in rs]
        a.plot(cs, [r["p50_s"] for r in rs], "o-", label=f"{system} p50")
        a.plot(cs, [r["p99_s"] for r in rs], "x--", label=f"{system} p99")
        b.plot(cs, [r["docs_per_s"] for r in rs], "o-", label=system)
    for ax, label in ((a, "latency per request (s)"), (b, "documents / s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
