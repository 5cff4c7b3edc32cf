"""`agentfleet operator`: run kopf with agentfleet's handlers and settings."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import kopf

from ..render import Defaults
from .kube import Kube

__all__ = ["run"]


def run(*, namespaces: Sequence[str] = (), standalone: bool = True, liveness: str | None = None,
        defaults: Defaults | None = None, kube: Kube | None = None, stop_flag: threading.Event | None = None,
        ready_flag: threading.Event | None = None, verbose: bool = False, log_format: str = "full") -> None:
    """Blocks until stopped. No namespaces means every namespace (cluster-wide). `log_format` json gives one
    JSON object per line, with the object's namespace/name under "object"."""
    from . import handlers  # noqa: F401  (registers the handlers with kopf's default registry)

    if threading.current_thread() is threading.main_thread():
        kopf.configure(verbose=verbose, log_format=kopf.LogFormat[log_format.upper()], log_refkey="object")
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
