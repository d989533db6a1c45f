"""``erank-fast serve --replicas N``: the HTTP server of ``erank_fast.server`` as the ingress of
a Ray Serve deployment with N replicas (or autoscaling between 1 and N on ongoing requests).

Each replica builds the same FastAPI app (``create_app``) in its own process and loads its own
Reranker, so every endpoint, limit, error and API key behaves as in the single-process server;
Ray Serve's proxy spreads requests over the replicas. Concurrent requests routed to one replica
share its engine's steps, so each replica takes up to ``max_ongoing_requests`` at once. A client
that disconnects has its request cancelled by Ray Serve in the replica; the app's cancellation
(``finally``: the request's cancel event) then reaches that replica's engine. ``/metrics`` and
``/v1/models`` answer from whichever replica the proxy picks (per-replica figures).
Needs the ``ray`` extra (``pip install -e ".[ray,serve]"``)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from erank_fast.validation import positive_int

MAX_ONGOING_REQUESTS = 64  # per replica: its engine batches them into shared steps


def build_application(load: Callable[[], object], *, model_name: str, limits, replicas: int,
                      threads_per_replica: int, autoscale: bool = False):
    """The Ray Serve application: one deployment whose replicas each run ``create_app(load)``.
    ``load`` must be picklable (it runs in the replicas)."""
    from ray import serve

    positive_int("replicas", replicas)
    positive_int("threads_per_replica", threads_per_replica)

    def build_app():
        import torch

        from erank_fast.server import create_app

        torch.set_num_threads(threads_per_replica)
        return create_app(load, model_name=model_name, limits=limits)

    scaling = ({"autoscaling_config": {"min_replicas": 1, "max_replicas": replicas,
                                       "target_ongoing_requests": MAX_ONGOING_REQUESTS // 2}}
               if autoscale else {"num_replicas": replicas})
    ingress = serve.deployment(name="erank_fast", max_ongoing_requests=MAX_ONGOING_REQUESTS,
                               ray_actor_options={"num_cpus": threads_per_replica},
                               **scaling)(serve.ingress(build_app)())
    return ingress.bind()


def run(load: Callable[[], object], *, model_name: str, limits, replicas: int,
        threads_per_replica: int, host: str = "127.0.0.1", port: int = 8000,
        autoscale: bool = False, ray_address: str | None = None,
        until: threading.Event | None = None) -> int:
    """Start Ray (local unless ``ray_address``), deploy, and serve until SIGINT / SIGTERM (or
    ``until`` is set); then shut Serve down. Returns 0."""
    import ray
    from ray import serve

    stop = until or threading.Event()
    if until is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    if ray_address:
        ray.init(address=ray_address, log_to_driver=False)
    else:
        ray.init(num_cpus=replicas * threads_per_replica, include_dashboard=False,
                 log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        app = build_application(load, model_name=model_name, limits=limits, replicas=replicas,
                                threads_per_replica=threads_per_replica, autoscale=autoscale)
        serve.run(app, name="erank_fast", route_prefix="/", blocking=False)
        print(f"erank-fast serve: {replicas} replica(s) on http://{host}:{port}", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
