"""Teacher scores from query likelihood: log P(query | passage) under a causal LM.

A language model that cannot yet write a useful 0..10 relevance score often still knows which
passage makes a query likely (unsupervised passage re-ranking, "UPR": the passage is given, and
the model reads the query after "Please write a question based on this passage."). These scores
are a dense teacher for ``train/sft.py --objective listwise --teacher_scores FILE``: every
candidate of every training query gets one, judged or not. ``train/query_likelihood.py`` writes
them as JSONL ``{"qid", "docid", "score"}``, the score the summed log-probability of the query's
tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from erank_fast.training.arguments import ScriptParser
from erank_fast.training.data import read_per_document

PASSAGE_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"


def passage_prompt_ids(tokenizer, passage: str, max_passage_tokens: int) -> list[int]:
    """Token ids of the passage prompt (the passage cut to ``max_passage_tokens`` tokens),
    ready for the question to follow."""
    ids = tokenizer.encode(passage, add_special_tokens=False)[:max_passage_tokens]
    prompt = PASSAGE_PROMPT.format(passage=tokenizer.decode(ids))
    return tokenizer.encode(prompt, add_special_tokens=False)


def query_loglikelihoods(model, tokenizer, query: str, passages: list[str], *,
                         max_passage_tokens: int = 256, batch_size: int = 25) -> list[float]:
    """Summed log P(query tokens | prompt with the passage), one per passage (left-padded
    batches; only the query's positions go through the vocabulary projection)."""
    import torch

    from erank_fast.training.data import left_pad, pad_id

    if not query.strip():
        raise ValueError("empty query: there is nothing to score the likelihood of")
    query_ids = tokenizer.encode(" " + query.strip(), add_special_tokens=False)
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(passages), batch_size):
        rows = [passage_prompt_ids(tokenizer, text, max_passage_tokens) + query_ids
                for text in passages[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in left_pad(rows, pad).items()}
        with torch.no_grad():
            logits = model(**batch, logits_to_keep=len(query_ids) + 1).logits[:, :-1].float()
        target = torch.tensor(query_ids, device=device)[None, :, None].expand(len(rows), -1, 1)
        scores += torch.log_softmax(logits, -1).gather(2, target)[..., 0].sum(1).tolist()
    return scores


def read_scores(path: str | Path) -> dict[tuple[str, str], float]:
    """{(qid, docid): score} from a file this script wrote."""
    return {k: float(v) for k, v in read_per_document(path, "score").items()}


def main(argv=None) -> None:
    parser = ScriptParser(description='Query-likelihood teacher scores (``erank_fast.training.query_likelihood``).')
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", required=True, help="reranking JSONL (qid, query, candidates)")
    parser.add_argument("--out", required=True, help="JSONL of {qid, docid, score}")
    parser.add_argument("--depth", type=int, default=None, help="score the top K candidates")
    parser.add_argument("--max_queries", type=int, default=None)
    parser.add_argument("--max_passage_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=25)
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from erank_fast.evaluation.trec import read_jsonl
    from erank_fast.training.policy import load_float32_model

    queries = read_jsonl(args.data, depth=args.depth)[: args.max_queries]
    counts: dict[str, int] = {}
    if Path(args.out).is_file():
        for qid, _ in read_scores(args.out):
            counts[qid] = counts.get(qid, 0) + 1
    # A query cut off mid-write is scored again (read_scores keeps one score per document).
    todo = [q for q in queries if counts.get(q.qid, 0) < len(q.candidates)]
    if not todo:
        print(f"{args.out}: all {len(queries)} queries already scored")
        return
    model, tokenizer = load_float32_model(args.model)
    model.eval()
    with open(args.out, "a", encoding="utf-8") as out:
        for q in tqdm(todo, desc="query likelihood", unit="query"):
            scores = query_loglikelihoods(model, tokenizer, q.text, [c.text for c in q.candidates],
                                          max_passage_tokens=args.max_passage_tokens,
                                          batch_size=args.batch_size)
            out.writelines(json.dumps({"qid": q.qid, "docid": c.docid, "score": s}) + "\n"
                           for c, s in zip(q.candidates, scores))
            out.flush()
