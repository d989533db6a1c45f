"""The server's response shapes, one formatter per API: Cohere / Jina (``/v1/rerank``,
``/rerank``), text-embeddings-inference (``/rerank`` with ``texts``) and scores in input order
(``/v1/score``)."""

from __future__ import annotations

import uuid


def usage(stats) -> dict:
    return {"prompt_tokens": stats.prefill_tokens,
            "total_tokens": stats.prefill_tokens + stats.decode_tokens}


def cohere(results, *, model_name: str, top_n: int | None, return_documents: bool) -> dict:
    rows = []
    for r in results[:top_n] if top_n is not None else results:
        row = {"index": r.index, "relevance_score": r.score,
               "erank": {"answer": r.answer, "probability": r.probability,
                         "model_score": r.model_score}}
        if return_documents:
            row["document"] = r.document if isinstance(r.document, dict) else {"text": r.document}
        rows.append(row)
    s = results.stats
    return {"id": str(uuid.uuid4()), "model": model_name, "results": rows, "usage": usage(s),
            "meta": {"documents": s.documents, "seconds": s.seconds, "engine_steps": s.steps,
                     "decode_tokens": s.decode_tokens}}


def tei(results, *, return_text: bool) -> list[dict]:
    return [{"index": r.index, "score": r.score, **({"text": r.document} if return_text else {})}
            for r in results]


def scores(results, *, model_name: str) -> dict:
    in_order = [0.0] * len(results)
    for r in results:
        in_order[r.index] = r.score
    return {"id": str(uuid.uuid4()), "model": model_name, "scores": in_order,
            "usage": usage(results.stats)}
