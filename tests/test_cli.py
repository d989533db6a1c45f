"""The erank-fast command line."""

from __future__ import annotations

import json

import pytest

from erank_fast import cli


@pytest.fixture()
def tiny_dir(tiny_qwen3, tmp_path):
    model, tok = tiny_qwen3
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_rerank_plain_lines(tiny_dir, tmp_path, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text("first document\n\nsecond document\nthird\n", encoding="utf-8")
    assert cli.main(["rerank", "--model", str(tiny_dir), "--query", "q", "--docs", str(docs),
                     "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("  1. score") and out[1].startswith("  2. score")
    assert "3 documents in" in out[2]


def test_rerank_jsonl_json_output_keeps_fields(tiny_dir, tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": t, "docid": f"d{i}"})
                              for i, t in enumerate(["alpha", "beta", "gamma"])), encoding="utf-8")
    assert cli.main(["rerank", "--model", str(tiny_dir), "--query", "q", "--docs", str(docs),
                     "--json", "--think", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert {r["docid"] for r in rows} == {"d0", "d1", "d2"}
    assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]


def test_bad_jsonl_and_missing_model(tiny_dir, tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"title": "no text"}\n', encoding="utf-8")
    assert cli.main(["rerank", "--model", str(tiny_dir), "--query", "q", "--docs", str(docs)]) == 2
    assert 'docs.jsonl:1: a JSON line needs a string "text" field' in capsys.readouterr().err
    docs.write_text("plain\n", encoding="utf-8")
    assert cli.main(["rerank", "--model", "/no/such/dir", "--query", "q", "--docs", str(docs)]) == 2
    assert "no model at" in capsys.readouterr().err


def test_demo_with_the_default_model(smollm2_dir, capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("query:") and len(out) == 1 + len(cli.DEMO_DOCUMENTS) + 1
    assert "docs/s" in out[-1]


def test_unreadable_documents_and_refused_calls_are_errors_not_tracebacks(tiny_dir, tmp_path,
                                                                          capsys):
    """Every way a rerank command's input can be wrong ends in one line naming the cause and
    exit status 2."""
    def rerank(docs, *extra):
        code = cli.main(["rerank", "--model", str(tiny_dir), "--query", "q", "--docs", str(docs),
                         *extra])
        return code, capsys.readouterr().err

    code, err = rerank(tmp_path / "missing.txt")
    assert code == 2 and "missing.txt" in err and "Traceback" not in err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    code, err = rerank(latin1)
    assert code == 2 and "latin1.txt: not UTF-8 text" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('plain\n{"text": \n', encoding="utf-8")
    code, err = rerank(broken)
    assert code == 2 and "broken.jsonl:2: invalid JSON" in err
    docs = tmp_path / "docs.txt"
    docs.write_text("alpha\nbeta\n", encoding="utf-8")
    code, err = rerank(docs, "--kv-memory", "10")  # no document fits a 10-byte K/V budget
    assert code == 2 and "K/V memory budget" in err
