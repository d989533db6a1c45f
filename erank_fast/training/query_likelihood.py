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

from pathlib import Path

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
