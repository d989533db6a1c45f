"""Batch reranking of query files at scale: inputs, resumable outputs, and a Ray actor pool
(``erank-fast rerank-batch``)."""
