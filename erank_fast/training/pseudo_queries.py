"""Pseudo-queries: questions a causal LM writes for training passages, as extra training queries.

A reranker fine-tuned on a few dozen judged queries can lower its loss by learning what those
queries' relevant documents are about instead of how a query matches a document. Questions
generated from the training passages themselves (the InPars / query-generation recipe, with the
query-likelihood prompt of ``erank_fast.training.query_likelihood``) give many more queries,
each with a known positive (its source passage) and same-topic negatives (the other candidates
of the real query the passage came from). ``train/pseudo_queries.py`` writes them;
``train/sft.py --objective listwise --pseudo_queries FILE`` mixes them into training.

Rows: ``{"qid", "docid", "query"}``: ``qid`` the real query the passage is a candidate of,
``docid`` the source passage, ``query`` the generated question.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from erank_fast.training.arguments import ScriptParser
from erank_fast.training.query_likelihood import passage_prompt_ids

MIN_QUERY_CHARS = 8


def usable(question: str, passage: str) -> bool:
    """A question worth training on: long enough, no repeated word trigram (a degenerate loop),
    and at least one word of four or more letters from its passage (not a generic "What is
    the main idea of the article?")."""
    words = _words(question)
    trigrams = list(zip(words, words[1:], words[2:]))
    passage_words = set(_words(passage))
    return (len(question) >= MIN_QUERY_CHARS and len(set(trigrams)) == len(trigrams)
            and any(len(w) >= 4 and w in passage_words for w in words[2:]))


def _words(text: str) -> list[str]:
    """Lower-cased words without surrounding punctuation."""
    return [w.strip(".,;:!?\"'()").lower() for w in text.split()]


def generate_questions(model, tokenizer, passages: list[str], *, max_passage_tokens: int = 256,
                       max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
    """One greedy question per passage: the first line the model writes after the prompt."""
    import torch

    from erank_fast.training.data import left_pad, pad_id

    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    questions: list[str] = []
    for start in range(0, len(passages), batch_size):
        rows = [passage_prompt_ids(tokenizer, text, max_passage_tokens)
                for text in passages[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in left_pad(rows, pad).items()}
        batch.pop("position_ids")
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad)
        for row in out[:, batch["input_ids"].shape[1]:]:
            text = tokenizer.decode(row, skip_special_tokens=True)
            questions.append(clean_question(text))
    return questions


def clean_question(text: str) -> str:
    """The generated text up to its first line break (and first question mark), stripped."""
    line = text.strip().split("\n", 1)[0].strip()
    if "?" in line:
        line = line[: line.index("?") + 1]
    return line


def read_pseudo_queries(path: str | Path) -> list[dict]:
    """Rows {"qid", "docid", "query"} from a file this script wrote."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.append({"qid": str(row["qid"]), "docid": str(row["docid"]),
                             "query": str(row["query"])})
    return rows


def main(argv=None) -> None:
    parser = ScriptParser(description='Pseudo-queries for training passages (``erank_fast.training.pseudo_queries``).')
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", required=True, help="reranking JSONL (qid, query, candidates)")
    parser.add_argument("--out", required=True, help="JSONL of {qid, docid, query}")
    parser.add_argument("--max_queries", type=int, default=None,
                        help="use the first N queries only (keep held-out queries out)")
    parser.add_argument("--per_query", type=int, default=10, help="passages per real query")
    parser.add_argument("--max_passage_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exclude", action="append", default=[], metavar="JSONL",
                        help="pseudo-queries already made (this script's output): their passages "
                             "are not drawn again (repeatable)")
    args = parser.parse_args(argv)
    if args.per_query < 1:
        parser.error("--per_query must be at least 1")
    if Path(args.out).exists():
        parser.error(f"{args.out} exists; choose another --out or remove it")

    from tqdm.auto import tqdm

    from erank_fast.evaluation.trec import read_jsonl
    from erank_fast.training.policy import load_float32_model

    queries = read_jsonl(args.data)[: args.max_queries]
    done = {(r["qid"], r["docid"]) for path in args.exclude for r in read_pseudo_queries(path)}
    rng = random.Random(args.seed)
    picks = []
    for q in queries:
        pool = [c for c in q.candidates if (q.qid, c.docid) not in done]
        picks += [(q.qid, c) for c in rng.sample(pool, min(args.per_query, len(pool)))]
    model, tokenizer = load_float32_model(args.model)
    model.eval()
    kept = 0
    with open(args.out, "w", encoding="utf-8") as out:
        bar = tqdm(total=len(picks), desc="pseudo-queries", unit="passage")
        for start in range(0, len(picks), args.batch_size):
            chunk = picks[start:start + args.batch_size]
            questions = generate_questions(model, tokenizer, [c.text for _, c in chunk],
                                           max_passage_tokens=args.max_passage_tokens,
                                           batch_size=args.batch_size)
            for (qid, c), question in zip(chunk, questions):
                if usable(question, c.text):
                    out.write(json.dumps({"qid": qid, "docid": c.docid, "query": question}) + "\n")
                    kept += 1
            out.flush()
            bar.update(len(chunk))
        bar.close()
    print(f"{kept} of {len(picks)} passages gave a usable question -> {args.out}")
