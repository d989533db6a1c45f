"""Beyond one process, on a local Ray with 2 CPUs and the tiny Qwen3: ``erank-fast
rerank-batch`` gives the scores of ``Reranker.rerank`` for the same inputs (JSONL and Parquet,
in and out), a rerun after the whole job was killed completes it without duplicates or gaps,
and ``erank-fast serve --replicas 2`` answers a bounded loopback load with the single-process
results."""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from erank_fast import Reranker  # noqa: E402
from erank_fast.batch.inputs import read_queries  # noqa: E402
from erank_fast.batch.outputs import TEMP_SUFFIX, read_results, shard_files  # noqa: E402

WORDS = ("vaccine immune virus market stock cell protein energy river mountain law court "
         "doses measles antibody index").split()
FLOAT32 = ("--dtype", "float32")  # the comparisons below are exact up to float32 summation order
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
       "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def model_dir(tiny_qwen3, tmp_path_factory):
    model, tok = tiny_qwen3
    d = tmp_path_factory.mktemp("tiny-qwen3")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def write_queries(path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for q in range(n):
            cands = [{"docid": f"d{q}-{i}", "score": 1.0,
                      "text": " ".join(rng.choices(WORDS, k=rng.randint(2, 24)))}
                     for i in range(rng.randint(1, 5))]
            f.write(json.dumps({"qid": f"q{q}", "query": " ".join(rng.choices(WORDS, k=3)),
                                "candidates": cands}) + "\n")


def cli(command, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "erank_fast.cli", command, *FLOAT32, *args],
                          env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def expected_rows(model_dir, input_path) -> dict[tuple[str, str], dict]:
    reranker = Reranker.from_pretrained(str(model_dir), dtype=torch.float32)
    out = {}
    for q in read_queries(input_path):
        for rank, r in enumerate(reranker.rerank(q["query"], q["texts"]), 1):
            out[(q["qid"], q["docids"][r.index])] = {"score": r.score, "answer": r.answer,
                                                     "rank": rank, "index": r.index,
                                                     "distribution": r.distribution}
    return out


def check_equal(rows: list[dict], expected: dict) -> None:
    keys = [(r["qid"], r["docid"]) for r in rows]
    assert len(keys) == len(set(keys)), "a (query, document) pair was written twice"
    assert set(keys) == set(expected), "pairs missing from, or foreign to, the output"
    for r in rows:
        e = expected[(r["qid"], r["docid"])]
        assert r["score"] == pytest.approx(e["score"], abs=1e-5)
        assert r["answer"] == e["answer"] and r["index"] == e["index"]
        assert r["distribution"] == pytest.approx(list(e["distribution"]), abs=1e-5)
    by_query: dict[str, list] = {}
    for r in rows:
        by_query.setdefault(r["qid"], []).append(r)
    for qid, rs in by_query.items():  # ranks are a permutation, best score first
        assert sorted(r["rank"] for r in rs) == list(range(1, len(rs) + 1))
        ordered = sorted(rs, key=lambda r: r["rank"])
        assert all(a["score"] >= b["score"] - 1e-6 for a, b in zip(ordered, ordered[1:]))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_batch_equals_rerank(model_dir, tmp_path, fmt):
    src = tmp_path / "in.jsonl"
    write_queries(src, 12)
    if fmt == "parquet":  # Parquet in as well as out
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [json.loads(line) for line in src.read_text().splitlines()]
        src = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "out"
    r = cli("rerank-batch", "--model", str(model_dir), "--input", str(src), "--output", str(out),
            "--format", fmt, "--actors", "2", "--threads-per-actor", "1",
            "--queries-per-batch", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "12 queries" in r.stdout and "0 already" in r.stdout
    check_equal(read_results(out), expected_rows(model_dir, src))
    again = cli("rerank-batch", "--model", str(model_dir), "--input", str(src), "--output",
                str(out), "--format", fmt)
    assert again.returncode == 0 and "0 queries" in again.stdout and "12 already" in again.stdout


def test_killed_job_resumes_without_duplicates_or_gaps(model_dir, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out"
    n = 160
    write_queries(src, n, seed=1)
    args = [sys.executable, "-m", "erank_fast.cli", "rerank-batch", *FLOAT32, "--model",
            str(model_dir),
            "--input", str(src), "--output", str(out), "--format", "jsonl", "--actors", "2",
            "--threads-per-actor", "1", "--queries-per-batch", "1"]
    job = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)  # its own group: the driver and Ray with it
    deadline = time.time() + 300
    while time.time() < deadline and len(shard_files(out)) < 3 and job.poll() is None:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # the whole job, mid-run
    job.wait()
    done_at_kill = {r["qid"] for r in read_results(out)}
    assert 0 < len(done_at_kill) < n, "the job was not killed mid-run"
    (out / f"part-halfwritten.jsonl{TEMP_SUFFIX}").write_text('{"qid": "q0", "doc')  # debris
    r = cli("rerank-batch", "--model", str(model_dir), "--input", str(src), "--output", str(out),
            "--format", "jsonl", "--actors", "2", "--threads-per-actor", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{len(done_at_kill)} already" in r.stdout
    assert not list(out.glob(f"*{TEMP_SUFFIX}")), "the debris of the killed job was kept"
    check_equal(read_results(out), expected_rows(model_dir, src))


def test_bad_input_is_a_clear_error(model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": "1", "query": "q"}\n')
    r = cli("rerank-batch", "--model", str(model_dir), "--input", str(bad), "--output",
            str(tmp_path / "o"))
    assert r.returncode == 2 and "not a reranking record" in r.stderr
    dup = tmp_path / "dup.jsonl"
    row = json.dumps({"qid": "1", "query": "q", "candidates": [{"docid": "a", "text": "t"}]})
    dup.write_text(row + "\n" + row + "\n")
    r = cli("rerank-batch", "--model", str(model_dir), "--input", str(dup), "--output",
            str(tmp_path / "o"))
    assert r.returncode == 2 and "appears twice" in r.stderr


def test_serve_replicas_answer_like_one_server(model_dir):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "erank_fast.cli", "serve", *FLOAT32,
                               "--model", str(model_dir), "--replicas", "2", "--threads-per-replica", "1",
                               "--port", str(port)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            assert time.time() < deadline, "the replicas did not come up"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        reranker = Reranker.from_pretrained(str(model_dir), dtype=torch.float32)
        rng = random.Random(2)
        requests = []
        for _ in range(24):
            query = " ".join(rng.choices(WORDS, k=3))
            docs = [" ".join(rng.choices(WORDS, k=rng.randint(2, 16))) for _ in range(4)]
            requests.append((query, docs))

        def post(req):
            query, docs = req
            return httpx.post(url + "/v1/rerank", json={"query": query, "documents": docs},
                              timeout=120)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # bounded: 8 at a time
            responses = list(pool.map(post, requests))
        assert [r.status_code for r in responses] == [200] * len(requests)
        for (query, docs), resp in zip(requests, responses):
            want = reranker.rerank(query, docs)
            got = resp.json()["results"]
            assert [g["index"] for g in got] == [w.index for w in want]
            assert [g["relevance_score"] for g in got] == pytest.approx([w.score for w in want],
                                                                        abs=1e-5)
        bad = httpx.post(url + "/v1/rerank", json={"query": "q"}, timeout=30)
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_request"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
