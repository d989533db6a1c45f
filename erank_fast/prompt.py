"""The ERank prompt, truncation, and segmentation into a shared prefix + per-document suffixes.

Two templates (``TEMPLATES``): ERank's own (the default) and ``"doc-last"``, the same text with
the query and the document at the end, for models trained on it.

Training (train/) and inference build prompts only through this module, so both see the same
token ids. Every prompt is the checkpoint's chat template applied to one user message.

Queries, documents and instructions are untrusted text: only the chat template makes control
tokens. A prompt is tokenized as one text; when a query, document or instruction spells one of
the tokenizer's added tokens (``<|im_end|>``, ``<|im_start|>``, Qwen3's ``<think>`` ...), the
prompt is built piece by piece instead: the template's pieces with their control tokens, and
that text through the tokenizer's normalizer, pre-tokenizer and model only, so every marker in it
is plain text (``<``, ``|``, ``im``, ...). Ordinary text gets exactly the ids it always had.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from erank_fast.validation import positive_int

ERANK_TEMPLATE = """Given a query and a document, please give a relevance score of 0~10.
The goal or relevance definition is: {instruction}

Here is the query:
{query}

Here is the document:
{doc}

After thinking, directly choose a relevance score from [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10].
- 0 represents completely not related
- 10 means perfectly related.

Desired output format:
<think>put your thinking here</think><answer>Only allows an integer here</answer>

Your output:"""

# The same instructions with the query and the document last: everything before the document
# is the same for every document of a query, so it is computed once in the shared prefix, and
# each document's own tokens are its text and the end of the turn (114 → 19 tokens of fixed
# text per document with SmolLM2's chat template). For models trained on it (erank-smol-fast);
# ERank's own checkpoints read ``ERANK_TEMPLATE``.
DOC_LAST_TEMPLATE = """Given a query and a document, please give a relevance score of 0~10.
The goal or relevance definition is: {instruction}
After thinking, directly choose a relevance score from [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10].
- 0 represents completely not related
- 10 means perfectly related.

Desired output format:
<think>put your thinking here</think><answer>Only allows an integer here</answer>

Here is the query:
{query}

Here is the document:
{doc}"""

TEMPLATES = {"erank": ERANK_TEMPLATE, "doc-last": DOC_LAST_TEMPLATE}
DEFAULT_TEMPLATE = "erank"


def check_template(name) -> str:
    """The one check of a template name (RerankerConfig, PromptBuilder and the scripts)."""
    if name not in TEMPLATES:
        raise ValueError(f"template must be one of {tuple(TEMPLATES)}, got {name!r}")
    return name


# Instructions used by ERank per benchmark family (grammar as in the original), by name:
# ``instruction="bright"`` selects the BRIGHT one; any other string is the instruction itself.
DEFAULT_INSTRUCTION = "Given a query, retrieval relevant passage."
INSTRUCTIONS = {
    "default": DEFAULT_INSTRUCTION,  # TREC DL and BEIR
    "followir": "Retrieval the relevant passage for the given query. Be careful about the extra "
                "requirements about relevance in the query.",
    "bright": "A document is relevant if it contains information that helps answer or address "
              "the query. A document is not relevant if it doesn't contain information that "
              "helps answer the query, even if it mentions similar topics.",
}

# Forced continuations. Each is tokenized on its own and appended to the token ids.
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
# think="off": skip the reasoning and open the answer right after the generation prompt.
THINK_OFF_CONTINUATION = "<think>\n\n</think>\n\n" + ANSWER_OPEN
# think=N (budget exhausted) or end of sequence before an answer: close reasoning, open answer.
BUDGET_CONTINUATION = THINK_CLOSE + ANSWER_OPEN

DEFAULT_MAX_QUERY_TOKENS = 2048
DEFAULT_MAX_DOC_TOKENS = 2048
# Stand-ins for the untrusted parts while the chat template renders a guarded prompt.
_SLOTS = {"instruction": "\x00erank_fast:instruction\x00", "query": "\x00erank_fast:query\x00",
          "doc": "\x00erank_fast:doc\x00"}


@dataclass(frozen=True)
class QueryPrompts:
    """One query's prompts: prompt of document i == prefix + suffixes[i] (token ids)."""

    prefix: list[int]
    suffixes: list[list[int]]

    def full(self, i: int) -> list[int]:
        return self.prefix + self.suffixes[i]


class PromptBuilder:
    """Builds ERank prompts with a tokenizer's chat template and segments them per query."""

    def __init__(self, tokenizer, max_query_tokens: int = DEFAULT_MAX_QUERY_TOKENS,
                 max_doc_tokens: int = DEFAULT_MAX_DOC_TOKENS, template: str = DEFAULT_TEMPLATE):
        positive_int("max_query_tokens", max_query_tokens)
        positive_int("max_doc_tokens", max_doc_tokens)
        self.template = TEMPLATES[check_template(template)]
        self.tokenizer = tokenizer
        self.max_query_tokens = max_query_tokens
        self.max_doc_tokens = max_doc_tokens
        added = getattr(tokenizer, "get_added_vocab", dict)()
        self.markers = tuple(sorted(added, key=len, reverse=True))  # texts of added tokens

    def encode(self, text: str) -> list[int]:
        """Template text: the tokenizer's control tokens are recognised."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def has_markers(self, text: str) -> bool:
        """Whether ``text`` spells one of the tokenizer's added (control) tokens."""
        return any(m in text for m in self.markers)

    def encode_text(self, text: str) -> list[int]:
        """Untrusted text: the ids ``encode`` gives ordinary text, with every spelt control token
        kept as plain text (never its control id)."""
        if not self.has_markers(text):
            return self.encode(text)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow (Python) tokenizer
            return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer else [(text, None)]
        return [t.id for piece, _ in pieces for t in backend.model.tokenize(piece)]

    def truncate(self, text: str, max_tokens: int) -> str:
        """``text`` cut to its first ``max_tokens`` tokens (then detokenised); unchanged if shorter."""
        ids = self.encode_text(text)
        if len(ids) <= max_tokens:
            return text
        return self.tokenizer.decode(ids[:max_tokens])

    def _parts(self, query: str, doc: str, instruction: str | None) -> dict[str, str]:
        return {"instruction": valid_unicode(INSTRUCTIONS.get(instruction or "default",
                                                              instruction)),
                "query": self.truncate(valid_unicode(query), self.max_query_tokens),
                "doc": self.truncate(valid_unicode(doc), self.max_doc_tokens)}

    def user_message(self, query: str, doc: str, instruction: str | None = None) -> str:
        """``instruction``: a name of ``INSTRUCTIONS`` ("default", "followir", "bright"), the
        text of an instruction, or None (the default one)."""
        return self.template.format(**self._parts(query, doc, instruction))

    def chat_text(self, message: str) -> str:
        """The message as the checkpoint's chat template renders it, ready for generation."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            return message
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )

    def prompt_ids(self, query: str, doc: str, instruction: str | None = None,
                   think_off: bool = False) -> list[int]:
        """Token ids of one document's full prompt (with the think-off continuation if asked)."""
        parts = self._parts(query, doc, instruction)
        if any(self.has_markers(text) for text in parts.values()):
            ids = self._guarded_ids(parts)
        else:
            ids = self.encode(self.chat_text(self.template.format(**parts)))
        if think_off:
            ids += self.encode(THINK_OFF_CONTINUATION)
        return ids

    def _guarded_ids(self, parts: dict[str, str]) -> list[int]:
        """The prompt with the untrusted parts tokenized as plain text (see the module's doc)."""
        rendered = self.chat_text(self.template.format(**_SLOTS))
        if not all(slot in rendered for slot in _SLOTS.values()):
            raise ValueError("this tokenizer's chat template rewrites the user message; a query "
                             "or document that spells a control token cannot be kept plain text")
        slot_names = {v: k for k, v in _SLOTS.items()}
        pieces = re.split("(" + "|".join(map(re.escape, _SLOTS.values())) + ")", rendered)
        texts = [parts[slot_names[p]] if p in slot_names else p for p in pieces]
        # The untrusted text takes along the whitespace that joins it to the template (spaces
        # before it, newlines after it), as the tokenizers' pre-tokenizers group them, so the
        # template's own tokens are those of the whole text.
        for k, p in enumerate(pieces):
            if p in slot_names:
                before = texts[k - 1][len(texts[k - 1].rstrip(" \t")):]
                after = texts[k + 1][: len(texts[k + 1]) - len(texts[k + 1].lstrip("\r\n"))]
                texts[k - 1] = texts[k - 1][: len(texts[k - 1]) - len(before)]
                texts[k + 1] = texts[k + 1][len(after):]
                texts[k] = before + texts[k] + after
        ids = []
        for p, text in zip(pieces, texts):
            ids += self.encode_text(text) if p in slot_names else self.encode(text) if text else []
        return ids

    def segment(self, query: str, docs: list[str], instruction: str | None = None,
                think_off: bool = False) -> QueryPrompts:
        """Split the prompts of one query into the shared prefix and per-document suffixes.

        The prefix is the longest common prefix of the documents' token ids, capped at the
        template's own prefix (the common prefix of two probe documents), so it never reaches
        into document text and does not depend on which documents are in the call. Exact by
        construction: prefix + suffix is each document's full prompt."""
        full = [self.prompt_ids(query, d, instruction, think_off) for d in docs]
        probe_a = self.prompt_ids(query, "A", instruction, think_off)
        probe_b = self.prompt_ids(query, "B", instruction, think_off)
        template = probe_a[: _common_prefix_len(probe_a, probe_b)]
        n = min([len(template)] + [_common_prefix_len(template, ids) for ids in full])
        # Every suffix keeps at least one token: its last position produces the next-token output.
        n = min([n] + [len(ids) - 1 for ids in full])
        return QueryPrompts(prefix=template[:n], suffixes=[ids[n:] for ids in full])


def valid_unicode(text: str) -> str:
    """``text`` with code points that are not Unicode text (lone surrogates, as JSON's
    ``"\\ud800"`` gives) replaced by U+FFFD; a surrogate pair becomes its character."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
