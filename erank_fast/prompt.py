"""The ERank prompt, truncation, and segmentation into a shared prefix + per-document suffixes.

Training (train/) and inference build prompts only through this module, so both see the same
token ids. Every prompt is the checkpoint's chat template applied to one user message.
"""

from __future__ import annotations

from dataclasses import dataclass

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
                 max_doc_tokens: int = DEFAULT_MAX_DOC_TOKENS):
        for name, value in (("max_query_tokens", max_query_tokens), ("max_doc_tokens", max_doc_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.tokenizer = tokenizer
        self.max_query_tokens = max_query_tokens
        self.max_doc_tokens = max_doc_tokens

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def truncate(self, text: str, max_tokens: int) -> str:
        """``text`` cut to its first ``max_tokens`` tokens (then detokenised); unchanged if shorter."""
        ids = self.encode(text)
        if len(ids) <= max_tokens:
            return text
        return self.tokenizer.decode(ids[:max_tokens])

    def user_message(self, query: str, doc: str, instruction: str | None = None) -> str:
        """``instruction``: a name of ``INSTRUCTIONS`` ("default", "followir", "bright"), the
        text of an instruction, or None (the default one)."""
        return ERANK_TEMPLATE.format(
            instruction=INSTRUCTIONS.get(instruction or "default", instruction),
            query=self.truncate(query, self.max_query_tokens),
            doc=self.truncate(doc, self.max_doc_tokens),
        )

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
        ids = self.encode(self.chat_text(self.user_message(query, doc, instruction)))
        if think_off:
            ids += self.encode(THINK_OFF_CONTINUATION)
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


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
