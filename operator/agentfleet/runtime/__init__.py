"""The AgentApp runtime: the server a user talks to. So far its pure rooms: pricing (what a call costs and what to
reserve for it), routing (which model role a step uses under the Budget's policy) and the key store (API key ->
Principal); identity loads that store from the file the AgentApp's Secret is mounted as."""

from __future__ import annotations

__all__: list[str] = []
