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
    with pytest.raises(SystemExit, match="string \"text\" field"):
        cli.main(["rerank", "--model", str(tiny_dir), "--query", "q", "--docs", str(docs)])
    docs.write_text("plain\n", encoding="utf-8")
    assert cli.main(["rerank", "--model", "/no/such/dir", "--query", "q", "--docs", str(docs)]) == 2
    assert "no model at" in capsys.readouterr().err


def test_demo_with_the_default_model(smollm2_dir, capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("query:") and len(out) == 1 + len(cli.DEMO_DOCUMENTS) + 1
    assert "docs/s" in out[-1]
