"""The operator's edge: kopf handlers and the Kubernetes client. Importing `handlers` registers them."""

from __future__ import annotations

from .kube import Kube
from .operator_main import run

__all__ = ["Kube", "run"]
