"""`sluicegate serve`: run the inference pools as Ray Serve replicas (serving/ray_serve.py).

    sluicegate serve                                   # a local Ray node, every pool
    sluicegate serve --pool default --pool gpu         # these pools only
    sluicegate serve --address ray://head:10001        # join an existing cluster

It replaces `sluicegate inference` for the pools it serves (the replicas consume the same
topics in per-pool groups: do not run both on one pool). It blocks, running the lag
autoscaler, until SIGINT/SIGTERM, then removes the pools (replicas drain and commit) and leaves
the cluster. ray is the optional `ray` extra and is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Callable
from typing import Any

from sluicegate.settings import Settings


def add_parsers(sub: Any) -> dict[str, Callable[[Settings, argparse.Namespace], int]]:
    serve = sub.add_parser("serve", help="run the inference pools as Ray Serve replicas")
    serve.add_argument("--address", help="ray://host:port of a cluster to join; else a local one")
    serve.add_argument(
        "--pool", action="append", dest="pools", help="a pool to serve (repeat); default: all"
    )
    return {"serve": cmd_serve}


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.serving.ray_serve import client_auth_env

    client_auth_env(args.address or settings.ray.address)  # before ray is imported
    try:
        import ray  # noqa: F401
    except ImportError:
        print("sluicegate serve needs ray: pip install 'sluicegate[ray]'")
        return 2
    from sluicegate.serving import ray_serve
    from sluicegate.streams.topics import ensure_topics

    serving = settings.ray
    if args.address:
        serving = serving.model_copy(update={"address": args.address})
    # Every deployment pool and the batch lane, as `sluicegate inference` consumes them.
    lane = [settings.batch.pool] if settings.batch.consume else []
    pools = args.pools or [*settings.pools, *lane]
    ensure_topics(settings)
    ray_serve.connect(serving)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    autoscaler = None
    try:
        ray_serve.deploy(settings, serving, pools)
        print(f"serving pools {', '.join(pools)} on Ray; Ctrl-C to stop")
        autoscaler = ray_serve.driver_autoscaler(settings, serving, pools)
        if autoscaler is not None:
            autoscaler.run(stop, serving.lag_interval_s)
        else:
            stop.wait()
    finally:
        if autoscaler is not None:
            autoscaler.close()
        ray_serve.remove_pools(pools)
        ray_serve.shutdown("all" if serving.address is None else "serve")
    return 0
