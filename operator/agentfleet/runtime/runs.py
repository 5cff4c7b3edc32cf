"""Autonomous runs (`POST /v1/runs`): a bounded in-memory registry of tasks nobody watches. A run belongs to the
principal that started it; anyone else asking for its id gets the same answer as for an unknown id. When the
registry is full the oldest finished run is forgotten; when every slot holds a running task a new run is refused.
Runs live in one replica's memory: they do not survive a restart and another replica does not know them."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from ..retrieval.filters import Principal

__all__ = ["Run", "RunRegistry", "RegistryFull"]


class RegistryFull(Exception):
    pass


@dataclass
class Run:
    id: str
    principal: Principal
    created_s: float
    status: str = "queued"  # queued | running | completed | incomplete | failed | cancelled
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def is_done(self) -> bool:
        return self.status not in ("queued", "running")

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "object": "agentfleet.run", "created": int(self.created_s),
                               "status": self.status, "steps": list(self.steps)}
        if self.result is not None:
            out.update(self.result)
        if self.error is not None:
            out["error"] = self.error
        return out


class RunRegistry:
    def __init__(self, *, max_runs: int = 1000, clock: Callable[[], float] = time.time):
        self.max_runs = max_runs
        self.clock = clock
        self._runs: OrderedDict[str, Run] = OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, run_id: str, principal: Principal) -> Run:
        if len(self._runs) >= self.max_runs:
            oldest_done = next((k for k, r in self._runs.items() if r.is_done), None)
            if oldest_done is None:
                raise RegistryFull(f"{self.max_runs} runs are in progress; retry later")
            del self._runs[oldest_done]
        run = Run(run_id, principal, self.clock())
        self._runs[run_id] = run
        return run

    def get(self, run_id: str, principal: Principal) -> Run | None:
        run = self._runs.get(run_id)
        if run is None or run.principal != principal:  # same tenant, groups and user, or nothing
            return None
        return run

    def running(self) -> list[Run]:
        return [r for r in self._runs.values() if not r.is_done]
