"""The error tree. Every failure a user can cause or meet is one of these, named by resource and field path;
`control` maps them to kopf (permanent vs. temporary) and the servers map them to OpenAI-style HTTP errors."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Problem", "AgentfleetError", "SpecError", "DependencyMissing", "UpstreamError"]


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class AgentfleetError(Exception):
    """Base of everything agentfleet raises on purpose."""

    reason = "Error"


class SpecError(AgentfleetError):
    """The object is wrong: retrying cannot help, the user must change it."""

    reason = "InvalidSpec"

    def __init__(self, ref: str, problems: list[Problem]):
        self.ref = ref
        self.problems = problems
        super().__init__(f"{ref}: " + "; ".join(str(p) for p in problems))

    @property
    def message(self) -> str:
        return "; ".join(str(p) for p in self.problems)


class DependencyMissing(AgentfleetError):
    """An object this one references does not exist (yet): wait and retry, it may appear."""

    reason = "DependencyMissing"

    def __init__(self, ref: str, missing: list[str]):
        self.ref = ref
        self.missing = missing
        super().__init__(f"{ref}: waiting for " + ", ".join(missing))

    @property
    def message(self) -> str:
        return "waiting for " + ", ".join(self.missing)


class UpstreamError(AgentfleetError):
    """Something outside agentfleet failed (API server, Prometheus, Milvus): retry later."""

    reason = "UpstreamError"
