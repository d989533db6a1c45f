"""``erank-fast serve``: the HTTP rerank server (needs the ``serve`` extra; ``replicas`` also
``ray``). ``app`` holds the routes, ``service`` the reranker behind them, ``formats`` the
response shapes, ``schema`` the request shapes, ``middleware`` metrics and guards."""

from erank_fast.server.app import create_app, serve
from erank_fast.server.middleware import ServerLimits

__all__ = ["ServerLimits", "create_app", "serve"]
