"""`agentfleet operator`: run kopf with agentfleet's handlers and settings."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

import kopf

from ..render import Defaults
from .kube import Kube

__all__ = ["run"]


def run(*, namespaces: Sequence[str] = (), standalone: bool = True, liveness: str | None = None,
        defaults: Defaults | None = None, kube: Kube | None = None, stop_flag: threading.Event | None = None,
        ready_flag: threading.Event | None = None, verbose: bool = False) -> None:
    """Blocks until stopped. No namespaces means every namespace (cluster-wide)."""
    from . import handlers  # noqa: F401  (registers the handlers with kopf's default registry)

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    memo = kopf.Memo(kube=kube, defaults=defaults)
    asyncio.run(kopf.operator(
        standalone=standalone,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
        memo=memo,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    ))
