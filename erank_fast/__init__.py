"""erank_fast: fast serving and training of ERank-style generative pointwise rerankers."""

from erank_fast.engine.work import Cancelled
from erank_fast.reranker import Reranker
from erank_fast.results import CallStats, RerankResult, RerankResults

__all__ = ["Reranker", "RerankResult", "RerankResults", "CallStats", "Cancelled"]
__version__ = "0.1.0"
