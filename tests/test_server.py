"""The HTTP server (erank_fast.server, `erank-fast serve`), over loopback only: every endpoint's
shape, scores equal to the Python API, each bad input with its status code, a disconnected
client's documents cancelled with the K/V memory back at idle, concurrent clients sharing
engine steps, and a clean SIGTERM shutdown of the command."""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from erank_fast import Reranker  # noqa: E402
from erank_fast.engine.kv_pool import KVPool  # noqa: E402
from erank_fast.server import ServerLimits, create_app  # noqa: E402

QUERY = "how do vaccines work"
DOCS = ["Vaccines train the immune system to recognise a virus.",
        "The stock market closed higher today.", "x",
        "Measles vaccination is given in two doses, usually at 12 months and at 4 years."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app on a loopback port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not become ready")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _reranker(tiny_qwen3, **options):
    model, tok = tiny_qwen3
    return Reranker.from_pretrained(model, tokenizer=tok, backend="torch", **options)


@pytest.fixture(scope="module")
def served(tiny_qwen3):
    per_token = KVPool.bytes_per_token(_reranker(tiny_qwen3).backend.decoder.config, torch.float32)
    reranker = _reranker(tiny_qwen3, kv_memory=1500 * per_token)
    live = LiveServer(create_app(lambda: reranker, model_name="tiny",
                                 limits=ServerLimits(max_documents=40, max_request_bytes=200_000)))
    yield live, reranker
    live.stop()


def test_rerank_matches_the_python_api(served):
    live, reranker = served
    want = reranker.rerank(QUERY, DOCS)
    body = httpx.post(live.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                                      "return_documents": True}).json()
    assert body["model"] == "tiny" and body["id"]
    assert [r["index"] for r in body["results"]] == [r.index for r in want]
    assert [r["relevance_score"] for r in body["results"]] == [r.score for r in want]
    assert [r["erank"]["answer"] for r in body["results"]] == [r.answer for r in want]
    assert body["results"][0]["document"] == {"text": DOCS[want[0].index]}
    assert body["usage"]["total_tokens"] >= body["usage"]["prompt_tokens"] > 0
    # /rerank is the same endpoint; top_n keeps the best n; objects keep their fields.
    docs = [{"text": d, "id": i} for i, d in enumerate(DOCS)]
    top = httpx.post(live.url + "/rerank", json={"query": QUERY, "documents": docs, "top_n": 2,
                                                 "return_documents": True}).json()
    assert [r["index"] for r in top["results"]] == [r.index for r in want[:2]]
    assert top["results"][0]["document"]["id"] == want[0].index
    assert "document" not in httpx.post(live.url + "/rerank", json={
        "query": QUERY, "documents": DOCS}).json()["results"][0]


def test_score_and_tei_shapes(served):
    live, reranker = served
    scores = httpx.post(live.url + "/v1/score", json={"query": QUERY, "documents": DOCS}).json()
    assert scores["scores"] == reranker.score(QUERY, DOCS)
    tei = httpx.post(live.url + "/rerank", json={"query": QUERY, "texts": DOCS,
                                                 "return_text": True}).json()
    want = reranker.rerank(QUERY, DOCS)
    assert [(r["index"], r["score"], r["text"]) for r in tei] == [
        (r.index, r.score, DOCS[r.index]) for r in want]


def test_first_stage_scores_give_the_hybrid_ranking(served):
    """The erank_fast extension: with the retriever's scores the relevance score is the hybrid
    the Python API computes, the model's own score kept beside it."""
    live, reranker = served
    first = [3.0, 9.5, 0.5, 1.0]
    want = reranker.rerank(QUERY, DOCS, first_stage_scores=first)
    body = httpx.post(live.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                                      "first_stage_scores": first}).json()
    assert [(r["index"], r["relevance_score"], r["erank"]["model_score"])
            for r in body["results"]] == [(r.index, r.score, r.model_score) for r in want]
    scores = httpx.post(live.url + "/v1/score", json={"query": QUERY, "documents": DOCS,
                                                      "first_stage_scores": first}).json()
    assert scores["scores"] == [next(r.score for r in want if r.index == i)
                                for i in range(len(DOCS))]


def test_first_stage_order_gives_the_hybrid_by_order(served, tiny_qwen3):
    """first_stage_scores: "order" is the Python API's; a reranker with hybrid_order (the
    server's --hybrid-order) applies it to requests that send no scores, TEI's shape too."""
    live, reranker = served
    want = reranker.rerank(QUERY, DOCS, first_stage_scores="order")
    body = httpx.post(live.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                                      "first_stage_scores": "order"}).json()
    assert [(r["index"], r["relevance_score"]) for r in body["results"]] == \
        [(r.index, r.score) for r in want]
    bad = httpx.post(live.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS,
                                                     "first_stage_scores": "rank"})
    assert bad.status_code == 422 and "first_stage_scores" in bad.json()["error"]["message"]
    assert httpx.get(live.url + "/v1/models").json()["data"][0]["hybrid_order"] is False

    ordered = LiveServer(create_app(lambda: _reranker(tiny_qwen3, hybrid_order=True),
                                    model_name="tiny"))
    try:
        body = httpx.post(ordered.url + "/v1/rerank", json={"query": QUERY,
                                                             "documents": DOCS}).json()
        assert [(r["index"], r["relevance_score"]) for r in body["results"]] == \
            [(r.index, r.score) for r in want]
        tei = httpx.post(ordered.url + "/rerank", json={"query": QUERY, "texts": DOCS}).json()
        assert [(r["index"], r["score"]) for r in tei] == [(r.index, r.score) for r in want]
        assert httpx.get(ordered.url + "/v1/models").json()["data"][0]["hybrid_order"] is True
    finally:
        ordered.stop()


def test_tei_truncate_false_refuses_long_texts_and_raw_scores_is_refused(tiny_qwen3):
    reranker = _reranker(tiny_qwen3, max_doc_tokens=16)
    live = LiveServer(create_app(lambda: reranker, model_name="tiny"))
    try:
        long_text = "vaccines " * 40
        assert reranker.document_tokens(long_text) > 16
        cut = httpx.post(live.url + "/rerank", json={"query": QUERY, "texts": [DOCS[0], long_text]})
        assert cut.status_code == 200  # truncate defaults to true: cut to 16 tokens
        refused = httpx.post(live.url + "/rerank", json={"query": QUERY, "truncate": False,
                                                         "texts": [DOCS[0], long_text]})
        assert refused.status_code == 422 and refused.json()["error"]["type"] == "input_too_long"
        assert "texts.1" in refused.json()["error"]["message"]
        fits = httpx.post(live.url + "/rerank", json={"query": QUERY, "truncate": False,
                                                      "texts": [DOCS[0]]})
        assert fits.status_code == 200
        raw = httpx.post(live.url + "/rerank", json={"query": QUERY, "texts": DOCS,
                                                     "raw_scores": True})
        assert raw.status_code == 422 and "raw_scores" in raw.json()["error"]["message"]
    finally:
        live.stop()


def test_gauges_are_honest_for_the_reference_backend(tiny_qwen3):
    model, tok = tiny_qwen3
    reranker = Reranker.from_pretrained(model, tokenizer=tok, backend="reference")
    live = LiveServer(create_app(lambda: reranker, model_name="tiny"))
    try:
        assert httpx.post(live.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS}
                          ).status_code == 200
        snapshot = reranker.inspect()
        assert snapshot.backend == "reference" and snapshot.kv_tokens_in_use is None
        assert snapshot.steps_run == len(DOCS)  # think off: one forward per document
        assert _metric(live, "erank_fast_engine_steps") == len(DOCS)
        assert math.isnan(_metric(live, "erank_fast_kv_tokens_in_use"))  # no K/V arena there
    finally:
        live.stop()


def _metric(live, name: str) -> float:
    """One unlabelled sample from the server's /metrics page."""
    for line in httpx.get(live.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not on /metrics")


def test_health_models_and_metrics(served):
    live, _ = served
    assert httpx.get(live.url + "/health").json() == {"status": "ok", "model": "tiny"}
    model = httpx.get(live.url + "/v1/models").json()["data"][0]
    assert model["id"] == "tiny" and model["dtype"] == "float32" and model["device"] == "cpu"
    assert model["quantize"] == "none"
    assert model["template"] == "erank"
    httpx.post(live.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS})
    text = httpx.get(live.url + "/metrics").text
    for name in ("erank_fast_requests_total", "erank_fast_documents_total",
                 "erank_fast_tokens_total", "erank_fast_requests_in_flight",
                 "erank_fast_kv_tokens_in_use", "erank_fast_request_seconds_bucket",
                 "erank_fast_kv_tokens_total", "erank_fast_documents_waiting"):
        assert name in text, name
    snapshot = served[1].inspect()  # the gauges read the public snapshot
    assert _metric(live, "erank_fast_engine_steps") == snapshot.steps_run > 0
    assert _metric(live, "erank_fast_kv_tokens_total") == snapshot.kv_tokens_total > 0
    assert 'erank_fast_requests_total{endpoint="/v1/rerank",status="200"}' in text


@pytest.mark.parametrize("body, status, named", [
    (b"{not json", 422, "not JSON"),
    (json.dumps({"query": QUERY, "documents": [1, 2]}).encode(), 422, "documents.0"),
    (json.dumps({"query": 5, "documents": DOCS}).encode(), 422, "query"),
    (json.dumps({"query": "  ", "documents": DOCS}).encode(), 422, "query is empty"),
    (json.dumps({"query": QUERY, "documents": []}).encode(), 422, "documents"),
    (json.dumps({"query": QUERY, "documents": DOCS, "top_n": 0}).encode(), 422, "top_n"),
    (json.dumps({"query": QUERY, "documents": DOCS, "extra": 1}).encode(), 422, "extra"),
    (json.dumps({"query": QUERY, "documents": DOCS, "first_stage_scores": [1.0]}).encode(), 422,
     "first_stage_scores has 1 values for 4 documents"),
    (json.dumps({"query": QUERY, "documents": DOCS, "first_stage_scores": ["a", 1, 2, 3]}).encode(),
     422, "first_stage_scores.0"),
    (b'{"query": "q", "documents": ["a"], "first_stage_scores": [NaN]}', 422,
     "first_stage_scores.0"),
    (json.dumps({"query": QUERY, "documents": DOCS, "first_stage_scores": "rank"}).encode(), 422,
     "a list of numbers or 'order'"),
    (json.dumps({"query": QUERY, "documents": ["d"] * 41}).encode(), 413, "at most 40"),
    (json.dumps({"query": QUERY, "documents": ["d" * 300_000]}).encode(), 413, "at most 200000"),
    (json.dumps({"query": QUERY, "documents": ["lorem ipsum " * 2000]}).encode(), 422,
     "K/V memory budget holds"),
])
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(served, body, status, named):
    live, reranker = served
    response = httpx.post(live.url + "/v1/rerank", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert named in response.json()["error"]["message"]
    assert reranker.inspect().kv_tokens_in_use == 0
    assert httpx.post(live.url + "/v1/rerank", json={"query": QUERY, "documents": DOCS}
                      ).status_code == 200


def test_api_key(tiny_qwen3):
    reranker = _reranker(tiny_qwen3)
    live = LiveServer(create_app(lambda: reranker, model_name="tiny",
                                 limits=ServerLimits(api_key="s3cret")))
    try:
        body = {"query": QUERY, "documents": DOCS}
        assert httpx.post(live.url + "/v1/rerank", json=body).status_code == 401
        wrong = httpx.post(live.url + "/v1/rerank", json=body,
                           headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
        ok = httpx.post(live.url + "/v1/rerank", json=body,
                        headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(live.url + "/health").status_code == 200  # probes need no key
    finally:
        live.stop()


def test_health_is_503_until_the_model_is_loaded(tiny_qwen3):
    gate = threading.Event()
    reranker = _reranker(tiny_qwen3)

    def load():
        gate.wait(10)
        return reranker

    from fastapi.testclient import TestClient

    with TestClient(create_app(load, model_name="tiny")) as client:
        assert client.get("/health").status_code == 503
        assert client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}
                           ).status_code == 503
        gate.set()
        deadline = time.time() + 10
        while client.get("/health").status_code != 200 and time.time() < deadline:
            time.sleep(0.02)
        assert client.get("/health").status_code == 200


def test_disconnected_client_is_cancelled_and_memory_returns_to_idle(tiny_qwen3):
    """A long thinking request whose client goes away: its documents leave the engine, their
    K/V rows are released, and the next request is served as usual."""
    reranker = _reranker(tiny_qwen3, think=400, max_think_tokens=400)
    app = create_app(lambda: reranker, model_name="tiny")
    live = LiveServer(app)
    try:
        docs = [f"document number {i} about vaccines" for i in range(24)]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(live.url + "/v1/rerank", json={"query": QUERY, "documents": docs},
                       timeout=httpx.Timeout(5.0, read=0.5))
        deadline = time.time() + 30
        while time.time() < deadline and (reranker.inspect().kv_tokens_in_use
                                          or _metric(live, "erank_fast_cancelled_requests_total") == 0):
            time.sleep(0.05)
        assert reranker.inspect().kv_tokens_in_use == 0
        assert _metric(live, "erank_fast_cancelled_requests_total") == 1
        quick = Reranker.from_pretrained(tiny_qwen3[0], tokenizer=tiny_qwen3[1], backend="torch",
                                         think=3)
        want = quick.rerank(QUERY, DOCS, think=3)
        got = reranker.rerank(QUERY, DOCS, think=3)
        assert [(r.index, r.answer) for r in got] == [(r.index, r.answer) for r in want]
    finally:
        live.stop()


def test_concurrent_clients_share_engine_steps_and_get_their_own_results(served):
    live, reranker = served
    requests = [(f"query {i} about {['vaccines', 'markets', 'tides'][i % 3]}",
                 [f"passage {j} for request {i}: " + DOCS[j % 4] for j in range(1 + i % 12)])
                for i in range(32)]
    want = [{r.index: r.score for r in reranker.rerank(q, d)} for q, d in requests]
    before = reranker.inspect().steps_run
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        bodies = list(pool.map(lambda qd: httpx.post(
            live.url + "/v1/rerank", json={"query": qd[0], "documents": qd[1]}, timeout=120
        ).json(), requests))
    steps = reranker.inspect().steps_run - before
    for body, expected in zip(bodies, want):
        got = {r["index"]: r["relevance_score"] for r in body["results"]}
        assert got.keys() == expected.keys()
        for i in got:
            assert got[i] == pytest.approx(expected[i], abs=1e-5)
    per_request = sum(b["meta"]["engine_steps"] for b in bodies)
    assert per_request > steps, (per_request, steps)  # requests shared forward passes


def test_serve_command_starts_answers_and_shuts_down_on_sigterm(tiny_qwen3, tmp_path):
    """One command starts it; SIGTERM lets the request in flight finish, then exits cleanly."""
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "erank_fast.cli", "serve", "--model",
                             str(tmp_path / "m"), "--port", str(port), "--think", "16",
                             "--backend", "torch"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
        docs = [f"document {i} on vaccines" for i in range(8)]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, url + "/v1/rerank",
                                  json={"query": QUERY, "documents": docs}, timeout=120)
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            response = pending.result()
        if response.status_code != 200:
            proc.wait(timeout=60)
            raise AssertionError(proc.stdout.read().decode())
        assert len(response.json()["results"]) == 8
        # uvicorn re-raises the signal once its graceful shutdown is done, so that supervisors
        # see how the process ended.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        log = proc.stdout.read().decode()
        assert "Shutting down" in log and "Traceback" not in log, log
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("flag,env,want", [(None, "from-env", "from-env"),
                                           ("from-flag", "from-env", "from-flag"),
                                           (None, None, None)])
def test_serve_reads_the_api_key_from_the_environment(monkeypatch, flag, env, want):
    """ERANK_FAST_API_KEY keeps the key out of the process list; --api-key wins over it."""
    import erank_fast.server as server
    from erank_fast import cli

    seen = {}
    monkeypatch.setattr(server, "serve", lambda load, **kw: seen.update(kw) or 0)
    if env is None:
        monkeypatch.delenv(cli.API_KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(cli.API_KEY_ENV, env)
    assert cli.main(["serve", "--model", "tiny"] + (["--api-key", flag] if flag else [])) == 0
    assert seen["limits"].api_key == want


def test_serve_hybrid_order_flag_reaches_the_reranker(monkeypatch):
    import erank_fast.server as server
    from erank_fast import cli

    loads = []
    monkeypatch.setattr(server, "serve", lambda load, **kw: loads.append(load) or 0)
    seen = {}
    monkeypatch.setattr("erank_fast.Reranker.from_pretrained",
                        lambda model, **options: seen.update(options))
    for argv, want in ((["--hybrid-order"], True), ([], None)):
        assert cli.main(["serve", "--model", "tiny", *argv]) == 0
        loads.pop()()
        assert seen["hybrid_order"] is want  # None: the model's own default (off)


def test_api_key_refuses_odd_authorization_headers(tiny_qwen3):
    """Non-ASCII bytes, a prefix of the key, the key without 'Bearer': 401, never a 500."""
    reranker = _reranker(tiny_qwen3)
    live = LiveServer(create_app(lambda: reranker, model_name="tiny",
                                 limits=ServerLimits(api_key="s3cret")))
    try:
        body = {"query": QUERY, "documents": DOCS}
        for header in (b"Bearer s3cre", b"s3cret", b"Bearer s3cret\xff", b"Bearer \xe9\xe9"):
            r = httpx.post(live.url + "/v1/rerank", json=body, headers={"authorization": header})
            assert r.status_code == 401, header
    finally:
        live.stop()
