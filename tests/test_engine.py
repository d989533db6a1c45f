"""The engine's scheduling, memory budget and sampling."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from erank_fast import Reranker
from erank_fast.engine.kv_pool import KVPool, RangeAllocator
from erank_fast.engine.sampling import SamplingParams

QUERIES = ["what causes ocean tides", "best way to learn rust", "history of the printing press"]
DOCS = [
    ["Tides are caused by the moon.", "Bread needs yeast.", "", "Spring tides align sun and moon."],
    ["The Rust book is free online.", "Tides follow the moon.", "Practice with small projects."],
    ["Gutenberg built a press around 1440.", "Printing spread across Europe quickly.",
     "Rust is a systems language.", "Movable type existed earlier in Korea.", "Bread again."],
]


def _scores(results):
    return [{r.index: (r.answer, r.num_generated_tokens, r.score) for r in q} for q in results]


def _assert_same(a, b):
    for qa, qb in zip(_scores(a), _scores(b)):
        assert qa.keys() == qb.keys()
        for i in qa:
            assert qa[i][:2] == qb[i][:2], f"doc {i}: {qa[i]} vs {qb[i]}"
            assert qa[i][2] == pytest.approx(qb[i][2], abs=1e-5)


@pytest.mark.parametrize("think", ["off", 5])
def test_continuous_batching_equals_one_batch_per_query(tiny_qwen3, think):
    model, tok = tiny_qwen3
    roomy = Reranker.from_pretrained(model, tokenizer=tok, think=think)
    per_query = [roomy.rerank(q, d) for q, d in zip(QUERIES, DOCS)]
    # Small step and memory budgets: documents join and leave the decode batch continuously.
    tight = Reranker.from_pretrained(model, tokenizer=tok, think=think, max_batch_tokens=700,
                                     kv_memory=1400 * KVPool.bytes_per_token(
                                         roomy.backend.decoder.config, torch.float32))
    together = tight.rerank_many(QUERIES, DOCS)
    _assert_same(per_query, together)
    # One row of the budget is the arena's scratch row; the arena never exceeds the budget.
    snapshot = tight.inspect()
    assert snapshot.kv_arena_rows <= snapshot.kv_tokens_total == 1399
    assert snapshot.kv_arena_bytes <= 1400 * KVPool.bytes_per_token(roomy.backend.decoder.config,
                                                                    torch.float32)


def test_request_larger_than_the_budget_is_rejected_cleanly(tiny_qwen3):
    model, tok = tiny_qwen3
    per_token = 2 * 2 * 2 * 32 * 4  # layers × (K, V) × KV heads × head_dim × fp32 bytes
    rr = Reranker.from_pretrained(model, tokenizer=tok, kv_memory=500 * per_token)
    with pytest.raises(ValueError, match="K/V memory budget holds 499"):
        rr.rerank("q", ["short", "word " * 600])
    assert len(rr.rerank("q", ["short", "also short"])) == 2  # still usable


def test_a_call_returns_when_its_own_documents_are_done(tiny_qwen3):
    """The thread driving the shared loop hands it over once its own call is done: a short
    call that arrived first is not held back by a longer one that joined while it ran."""
    model, tok = tiny_qwen3
    rr = Reranker.from_pretrained(model, tokenizer=tok, max_batch_tokens=64)
    engine = rr.backend
    step, first_step, second_call_queued = engine.runner.step, threading.Event(), threading.Event()

    def gated_step(*args, **kwargs):
        if not first_step.is_set():  # hold the first step until the second call has queued
            first_step.set()
            assert second_call_queued.wait(30)
        return step(*args, **kwargs)

    engine.runner.step = gated_step
    left_when_short_returned = []

    def short_call():
        result = rr.rerank("what causes ocean tides", ["Tides are caused by the moon."])
        s = engine.scheduler
        left_when_short_returned.append(len(s.waiting) + len(s.active))
        return result

    with ThreadPoolExecutor(2) as pool:
        short = pool.submit(short_call)
        assert first_step.wait(30)
        long = pool.submit(rr.rerank, "history of the printing press", DOCS[2] * 4)
        deadline = time.monotonic() + 30
        while len(engine.scheduler.waiting) < len(DOCS[2]) * 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        second_call_queued.set()
        assert len(short.result(60)) == 1 and len(long.result(60)) == len(DOCS[2]) * 4
    assert left_when_short_returned[0] > 0  # the long call was still running
    assert rr.rerank("q", ["d"]) and engine.inspect().documents_waiting == 0


@pytest.mark.parametrize("failing_step", [1, 3])
def test_a_failing_step_ends_its_call_and_leaves_the_engine_usable(tiny_qwen3, failing_step):
    """A step that raises ends the calls in flight with its error, also in the step where
    their documents were admitted (not yet active: the call used to wait forever), and the
    next call gives the same results as before."""
    model, tok = tiny_qwen3
    rr = Reranker.from_pretrained(model, tokenizer=tok, think=5)
    want = _scores([rr.rerank(QUERIES[0], DOCS[0])])
    engine, steps = rr.backend, []
    step = engine.runner.step

    def failing(*args, **kwargs):
        steps.append(1)
        if len(steps) == failing_step:
            raise RuntimeError("the step failed")
        return step(*args, **kwargs)

    engine.runner.step = failing
    raised = []

    def call():
        try:
            rr.rerank(QUERIES[0], DOCS[0])
        except RuntimeError as error:
            raised.append(error)

    caller = threading.Thread(target=call, daemon=True)  # a hung call fails the test, not CI
    caller.start()
    caller.join(60)
    assert not caller.is_alive(), "the call did not return after its step failed"
    assert len(raised) == 1 and "the step failed" in str(raised[0])
    engine.runner.step = step
    assert _scores([rr.rerank(QUERIES[0], DOCS[0])]) == want
    assert engine.inspect().documents_active == engine.inspect().documents_waiting == 0


def test_range_allocator_first_fit_and_merge():
    a = RangeAllocator(100)
    x, y, z = a.alloc(30), a.alloc(30), a.alloc(30)
    assert (x, y, z) == (0, 30, 60) and a.alloc(20) is None
    a.release(y, 30)
    assert a.alloc(40) is None and a.alloc(25) == 30
    a.release(30, 25)
    a.release(x, 30)
    a.release(z, 30)
    assert a.free == [(0, 100)] and a.in_use == 0



def test_kv_pool_grows_keeping_every_row_at_its_index():
    from types import SimpleNamespace

    config = SimpleNamespace(num_layers=2, num_kv_heads=2, head_dim=4)
    pool = KVPool(config, 10, torch.float32, "cpu")
    a, b = pool.ranges.alloc(4), pool.ranges.alloc(3)
    pool.ranges.release(a, 4)  # free: rows 0-3 and 7-9
    for layer in range(2):
        pool.k[layer][:10] = torch.arange(10.0)[:, None, None] + layer
        pool.v[layer][:10] = -torch.arange(10.0)[:, None, None]
    pool.grow(25)
    assert pool.tokens == 25 and pool.scratch_row == 25 and pool.k[0].shape == (26, 2, 4)
    assert pool.ranges.free == [(0, 4), (7, 18)] and pool.ranges.in_use == 3  # b kept
    for layer in range(2):
        assert torch.equal(pool.k[layer][:10, 0, 0], torch.arange(10.0) + layer)
        assert torch.equal(pool.v[layer][:10, 1, 3], -torch.arange(10.0))
        assert not pool.k[layer][10:].any() and not pool.v[layer][10:].any()
    assert pool.ranges.alloc(18) == 7 and b == 4


def test_an_empty_arena_too_small_is_replaced_with_room_to_spare(tiny_qwen3):
    """On CPU a call larger than the empty arena gets a new one of at least 1.5× the old rows
    (within the budget), so that a next call a little larger still reuses it rather than
    zeroing a third; the scores are those of a fresh engine."""
    model, tok = tiny_qwen3
    rr = Reranker.from_pretrained(model, tokenizer=tok, think="off")
    scheduler = rr.backend.scheduler
    rr.rerank(QUERIES[2], DOCS[2][:2])
    first = scheduler.pool.tokens
    rr.rerank(QUERIES[2], DOCS[2][:3])
    second = scheduler.pool
    assert second.tokens >= first * 3 // 2
    docs = DOCS[2][:2] + [DOCS[2][2] + " It compiles to machine code."]  # a few rows more
    larger = rr.rerank(QUERIES[2], docs)
    assert scheduler.pool is second
    fresh = Reranker.from_pretrained(model, tokenizer=tok, think="off")
    _assert_same([fresh.rerank(QUERIES[2], docs)], [larger])


def test_the_arena_grows_under_load_keeping_the_rows_in_flight(tiny_qwen3):
    """On CPU the arena is first sized for the work that is waiting. A larger call that arrives
    while a small one runs grows it, the small call's K/V rows kept in place: the larger call's
    documents run together from its first step (not a few at a time for as long as the engine
    stays busy), and both calls score as they do alone."""
    model, tok = tiny_qwen3
    alone = Reranker.from_pretrained(model, tokenizer=tok, think=5)
    want = [alone.rerank(QUERIES[0], DOCS[0][:1]), alone.rerank(QUERIES[2], DOCS[2] * 4)]
    rr = Reranker.from_pretrained(model, tokenizer=tok, think=5)
    engine = rr.backend
    step, first_step, second_call_queued = engine.runner.step, threading.Event(), threading.Event()
    seen = []  # per step: arena rows, rows in use, documents in the step

    def gated_step(docs, pool, keep):
        if not first_step.is_set():  # hold the small call's first step until the large queued
            first_step.set()
            assert second_call_queued.wait(30)
        seen.append((pool.tokens, pool.ranges.in_use, len(docs)))
        return step(docs, pool, keep)

    engine.runner.step = gated_step
    with ThreadPoolExecutor(2) as pool:
        small = pool.submit(rr.rerank, QUERIES[0], DOCS[0][:1])
        assert first_step.wait(30)
        large = pool.submit(rr.rerank, QUERIES[2], DOCS[2] * 4)
        deadline = time.monotonic() + 30
        while len(engine.scheduler.waiting) < len(DOCS[2]) * 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        second_call_queued.set()
        got = [small.result(60), large.result(60)]
    _assert_same(want, got)
    (first_rows, _, first_docs), (rows, in_use, docs) = seen[0], seen[1]
    assert first_docs == 1 and rows > first_rows  # grown while the small call's rows were held
    assert docs == 1 + len(DOCS[2]) * 4 and in_use > first_rows
    assert rows <= engine.max_kv_tokens


def test_sampling_is_reproducible_and_shares_the_prompt(tiny_qwen3):
    model, tok = tiny_qwen3
    rr = Reranker.from_pretrained(model, tokenizer=tok)
    prompts = [tok.encode("Hello there, how"), tok.encode("A different prompt")]
    kw = dict(n=3, temperature=0.9, top_p=0.95, top_k=50, max_new_tokens=6, seed=11)
    a = rr.sample(prompts, **kw)
    b = rr.sample(prompts, **kw)
    assert [[s.completion_ids for s in p] for p in a] == [[s.completion_ids for s in p] for p in b]
    assert all(s.prompt_ids == prompts[i] for i, p in enumerate(a) for s in p)
    assert len({tuple(s.completion_ids) for s in a[0]}) > 1, "samples should differ"
    # Alone or batched with another prompt: the same samples (seeds do not depend on batching).
    alone = rr.sample(prompts[:1], **kw)
    assert [s.completion_ids for s in alone[0]] == [s.completion_ids for s in a[0]]
    # The n samples of a prompt share one prefill of the prompt: prefix once + 1 token each.
    _, stats = rr.backend.sample(prompts, SamplingParams(**kw))
    assert stats.prefill_tokens == sum(len(p) - 1 + 3 for p in prompts)


def test_sample_logprobs_equal_the_models_log_softmax(tiny_qwen3):
    model, tok = tiny_qwen3
    rr = Reranker.from_pretrained(model, tokenizer=tok)
    prompt = tok.encode("The quick brown fox")
    temperature = 0.7
    (samples,) = rr.sample([prompt], n=2, temperature=temperature, max_new_tokens=5, seed=3)
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
        want = torch.log_softmax(logits, -1).gather(1, torch.tensor(s.completion_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(s.logprobs), want, atol=1e-5, rtol=1e-5)


def test_first_token_restricted_to_given_ids(tiny_qwen3):
    """first_token_ids: the first token comes from the set (the rest is free), and every
    log-probability is still the model's over the whole vocabulary."""
    model, tok = tiny_qwen3
    rr = Reranker.from_pretrained(model, tokenizer=tok)
    prompt = tok.encode("Score: <answer>")
    allowed = tuple(tok.encode(str(d), add_special_tokens=False)[0] for d in range(10))
    (samples,) = rr.sample([prompt], n=8, temperature=1.0, max_new_tokens=3, seed=5,
                           first_token_ids=allowed)
    assert all(s.completion_ids[0] in allowed for s in samples)
    assert len({s.completion_ids[0] for s in samples}) > 1
    for s in samples:
        with torch.no_grad():
            logits = model(torch.tensor([s.prompt_ids + s.completion_ids])).logits[0].float()
        want = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
        want = want.gather(1, torch.tensor(s.completion_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(s.logprobs), want, atol=1e-5, rtol=1e-5)
    (greedy,) = rr.sample([prompt], temperature=0, max_new_tokens=1, first_token_ids=allowed)
    with torch.no_grad():
        last = model(torch.tensor([prompt])).logits[0, -1]
    assert greedy[0].completion_ids == [max(allowed, key=lambda i: last[i].item())]
    with pytest.raises(ValueError, match="first_token_ids"):
        rr.sample([prompt], first_token_ids=())


def test_sampling_rejects_bad_arguments(tiny_qwen3):
    model, tok = tiny_qwen3
    rr = Reranker.from_pretrained(model, tokenizer=tok)
    with pytest.raises(ValueError, match="prompt 0"):
        rr.sample([[]])
    with pytest.raises(ValueError, match="top_p"):
        rr.sample([[1, 2]], top_p=0)
    with pytest.raises(ValueError, match="n must be"):
        rr.sample([[1, 2]], n=0)


@pytest.mark.parametrize("pack,blocks", [(False, False), (True, False), (True, True)])
def test_low_precision_readout_rows_are_not_rounded(pack, blocks, monkeypatch):
    """With a bfloat16 lm_head on CPU, the rows a score is read from get float32 logits of the
    same (bfloat16) hidden states and weights: equal to a float32 log-softmax of those values,
    where a bfloat16 GEMM output would move logits of ~20 by up to 0.06. Thinking rows, which
    only need the argmax, get the argmax alone: of the model-dtype logits on the chunked paths,
    of the float32 sums on the small-batch blocks (``ops/csrc/vocab_head.cpp``, where oneDNN's
    bfloat16 brgemm runs; no float32 copy of the lm_head is made there)."""
    from erank_fast.engine.readout import ScoreReader
    from erank_fast.scoring import ScoreTokens

    if not blocks:
        monkeypatch.setenv("ERANK_FAST_SMALL_ROWS", "0")
    torch.manual_seed(0)
    vocab, h = 3000, 64
    weight = torch.randn(vocab, h).bfloat16()
    hidden = torch.randn(6, h).bfloat16()
    tokens = ScoreTokens(tuple(range(100, 110)))
    reader = ScoreReader(weight, tokens, None, "torch", pack_weights=pack)
    if blocks and reader.blocks is None:
        pytest.skip("no bfloat16 brgemm (AMX) on this CPU")
    assert (reader.exact is None) == (reader.blocks is not None)
    argmax, logprobs = reader._head(hidden, [0, 2, 3, 5], [True, True, False, True])
    logits = hidden.float() @ weight.float().T
    assert logits.abs().max() > 16  # large enough that bfloat16 output would round by >= 0.06
    want = torch.log_softmax(logits, -1)
    for got_lp, row in zip([logprobs[i] for i in (0, 1, 3)], (0, 2, 5)):
        torch.testing.assert_close(torch.tensor(got_lp), want[row, 100:110], atol=1e-4, rtol=0)
    thinking = logits[3] if blocks else (hidden[3:4] @ weight.T).float()[0]
    assert argmax[2] == int(thinking.argmax())
    assert logprobs[2] == []  # a thinking row's digits are never read: not computed
    assert [argmax[i] for i in (0, 1, 3)] == logits[[0, 2, 5]].argmax(-1).tolist()


@pytest.mark.parametrize("pack", [False, True])
def test_read_and_greedy_rows_share_one_head_pass(pack):
    """Where the rows read for a score and the greedy (reasoning) rows multiply by the same
    lm_head, a step of at most ``MERGED_HEAD_ROWS`` rows runs it once for all: the same
    argmax and digit log-probs as the two passes (a float32 log-softmax of the same logits);
    above that, two passes, and the greedy rows get no log-probs."""
    from erank_fast.engine.readout import MERGED_HEAD_ROWS, ScoreReader
    from erank_fast.scoring import ScoreTokens

    torch.manual_seed(0)
    vocab, h = 3000, 64
    weight = torch.randn(vocab, h)
    reader = ScoreReader(weight, ScoreTokens(tuple(range(100, 110))), None, "torch",
                         pack_weights=pack)
    assert reader.exact is None
    n = MERGED_HEAD_ROWS + 1
    hidden = torch.randn(n, h)
    logits = hidden @ weight.T
    want = torch.log_softmax(logits, -1)[:, 100:110]
    for rows in (4, n):
        exact = [i % 3 == 0 for i in range(rows)]
        argmax, logprobs = reader._head(hidden, list(range(rows)), exact)
        assert argmax == logits[:rows].argmax(-1).tolist()
        for i in range(rows):
            if exact[i] or rows <= MERGED_HEAD_ROWS:
                torch.testing.assert_close(torch.tensor(logprobs[i]), want[i], atol=1e-4,
                                           rtol=0)
            else:
                assert logprobs[i] == []


def test_steps_padded_for_packed_gemms_give_the_unpadded_results(tiny_qwen3):
    """On CPU with packed weights steps' rows are padded to a few bucket sizes where oneDNN
    builds a kernel per row count (``padding_pays``: not float32 without AVX-512); the padding
    must not change a token or a score (float32, reasoning steps included: decode steps, the
    last layer's readout rows)."""
    from erank_fast.models.decoder import padded_rows
    from erank_fast.ops.packed_linear import padding_pays

    assert [padded_rows(n) for n in (1, 16, 17, 250, 257, 1887, 2048)] == \
        [16, 16, 32, 256, 512, 2048, 2048]
    model, tok = tiny_qwen3
    rr = Reranker.from_pretrained(model, tokenizer=tok, backend="torch", pack_weights="on",
                                  think=8, max_think_tokens=20, dtype=torch.float32)
    decoder = rr.backend.decoder
    if not rr.backend.packed_layers:
        pytest.skip("oneDNN does not pack weights on this CPU")
    assert decoder.pad_rows == padding_pays(torch.float32)
    assert padding_pays(torch.bfloat16)
    decoder.pad_rows = True
    query, docs = "what do vaccines do", ["They train immune memory.", "Paris in 1889.", "",
                                          "Antigens without the disease " * 9]
    padded = rr.rerank(query, docs, return_reasoning=True)
    decoder.pad_rows = False
    plain = rr.rerank(query, docs, return_reasoning=True)
    assert [r.index for r in padded] == [r.index for r in plain]
    for a, b in zip(padded, plain):
        assert a.reasoning == b.reasoning and a.answer == b.answer
        assert abs(a.score - b.score) <= 1e-5
