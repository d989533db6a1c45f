"""The ERank prompt, truncation and prefix/suffix segmentation (exact by construction)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erank_fast.prompt import (
    DEFAULT_INSTRUCTION,
    DOC_LAST_TEMPLATE,
    ERANK_TEMPLATE,
    THINK_OFF_CONTINUATION,
    PromptBuilder,
)


@pytest.fixture(scope="module")
def builder(qwen_tokenizer):
    return PromptBuilder(qwen_tokenizer)


def test_template_is_the_erank_prompt(builder):
    msg = builder.user_message("what is rust", "Rust is a language.")
    assert msg.startswith("Given a query and a document, please give a relevance score of 0~10.\n"
                          f"The goal or relevance definition is: {DEFAULT_INSTRUCTION}\n\n"
                          "Here is the query:\nwhat is rust\n\nHere is the document:\n"
                          "Rust is a language.\n\nAfter thinking, directly choose")
    assert msg.endswith("<think>put your thinking here</think><answer>Only allows an integer "
                        "here</answer>\n\nYour output:")
    assert msg == ERANK_TEMPLATE.format(instruction=DEFAULT_INSTRUCTION, query="what is rust",
                                        doc="Rust is a language.")


def test_prompt_uses_the_chat_template_and_think_off_continuation(builder, qwen_tokenizer):
    ids = builder.prompt_ids("q", "d", think_off=True)
    text = qwen_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nGiven a query")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n" + THINK_OFF_CONTINUATION)
    assert builder.prompt_ids("q", "d", instruction="Find code.") != builder.prompt_ids("q", "d")


def test_truncation_is_token_level(qwen_tokenizer):
    builder = PromptBuilder(qwen_tokenizer, max_query_tokens=5, max_doc_tokens=7)
    long_doc = "word " * 500
    msg = builder.user_message("one two three four five six seven", long_doc)
    doc = msg.split("Here is the document:\n")[1].split("\n\nAfter thinking")[0]
    query = msg.split("Here is the query:\n")[1].split("\n\nHere is the document")[0]
    assert len(qwen_tokenizer.encode(doc, add_special_tokens=False)) == 7
    assert query == qwen_tokenizer.decode(
        qwen_tokenizer.encode("one two three four five six seven", add_special_tokens=False)[:5])
    assert builder.truncate("short", 7) == "short"
    with pytest.raises(ValueError, match="max_doc_tokens"):
        PromptBuilder(qwen_tokenizer, max_doc_tokens=0)


def test_doc_last_template_shares_everything_before_the_document(qwen_tokenizer, builder):
    doc_last = PromptBuilder(qwen_tokenizer, template="doc-last")
    doc = "Rust is a language."
    msg = doc_last.user_message("what is rust", doc)
    assert msg == DOC_LAST_TEMPLATE.format(instruction=DEFAULT_INSTRUCTION, query="what is rust",
                                           doc=doc)
    assert msg.endswith("Here is the query:\nwhat is rust\n\nHere is the document:\n" + doc)
    # ERank's instructions, in another order (without its closing "Your output:").
    erank_lines = builder.user_message("what is rust", doc).splitlines()
    assert sorted(filter(None, msg.splitlines())) == sorted(
        line for line in erank_lines if line and line != "Your output:")
    docs = ["The cat sat on the mat.", "Tides follow the moon.", ""]
    own = len(qwen_tokenizer.encode(docs[0], add_special_tokens=False))
    erank = _assert_exact(builder, "cats?", docs, think_off=True)
    last = _assert_exact(doc_last, "cats?", docs, think_off=True)
    # Per document: its own text and the end of the turn, not the template's instructions.
    assert len(last.suffixes[0]) - own <= 16  # Qwen3: 12
    assert len(erank.suffixes[0]) - own >= 90  # Qwen3: 97
    assert len(last.prefix) > len(erank.prefix)
    assert "Here is the document:" in qwen_tokenizer.decode(last.prefix)
    with pytest.raises(ValueError, match="template must be one of"):
        PromptBuilder(qwen_tokenizer, template="doc-first")


def _assert_exact(builder, query, docs, think_off=False):
    prompts = builder.segment(query, docs, think_off=think_off)
    for i, d in enumerate(docs):
        assert prompts.full(i) == builder.prompt_ids(query, d, think_off=think_off), f"doc {i}"
        assert len(prompts.suffixes[i]) >= 1
    return prompts


def test_segmentation_shared_first_words_unicode_and_long(builder):
    docs = ["The cat sat on the mat.", "The cat sat on the hat.", "The cat", "",
            "日本語のテキスト 🚀 naïve café", "\n\nstarts with newlines", "x" * 20000]
    prompts = _assert_exact(builder, "cats ☕?", docs, think_off=True)
    # The prefix never reaches into document text, even where documents share their first words.
    alone = builder.segment("cats ☕?", docs[:1], think_off=True)
    assert len(alone.prefix) >= len(prompts.prefix)
    assert builder.segment("cats ☕?", docs[:2]).prefix == alone.prefix
    assert "Here is the document:" in builder.tokenizer.decode(alone.prefix)


@settings(max_examples=40, deadline=None)
@given(query=st.text(max_size=40), docs=st.lists(st.text(max_size=60), min_size=1, max_size=4))
def test_segmentation_is_exact_for_any_text(builder, query, docs):
    _assert_exact(builder, query, docs)


@settings(max_examples=40, deadline=None)
@given(query=st.text(max_size=40), docs=st.lists(st.text(max_size=60), min_size=1, max_size=4))
def test_doc_last_segmentation_is_exact_for_any_text(qwen_tokenizer, query, docs):
    _assert_exact(PromptBuilder(qwen_tokenizer, template="doc-last"), query, docs, think_off=True)


def test_named_instructions_and_free_text(qwen_tokenizer):
    from erank_fast.prompt import DEFAULT_INSTRUCTION, INSTRUCTIONS

    builder = PromptBuilder(qwen_tokenizer)
    assert INSTRUCTIONS["bright"] in builder.user_message("q", "d", "bright")
    assert INSTRUCTIONS["followir"] in builder.user_message("q", "d", "followir")
    assert DEFAULT_INSTRUCTION in builder.user_message("q", "d")
    assert "Judge medical accuracy." in builder.user_message("q", "d", "Judge medical accuracy.")


@pytest.mark.parametrize("value, want", [("off", "off"), ("full", "full"), (16, 16), ("16", 16)])
def test_parse_think(value, want):
    from erank_fast.config import parse_think

    assert parse_think(value) == want


@pytest.mark.parametrize("value", [0, -3, "many", True, 2.5, None])
def test_parse_think_refuses(value):
    from erank_fast.config import parse_think

    with pytest.raises(ValueError, match="think must be"):
        parse_think(value)
