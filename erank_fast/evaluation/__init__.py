"""Evaluation on TREC-style data (``erank-fast eval``): ``trec`` reads queries, candidates and
qrels and writes runs, ``metrics`` computes nDCG, MRR and the BM25 hybrid, ``runner`` reranks a
dataset and reports."""
