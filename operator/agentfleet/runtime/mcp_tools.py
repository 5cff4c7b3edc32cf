"""MCP servers as agent tools (the official `mcp` package, streamable HTTP). At start-up, and again whenever a
server's tools are unknown, each server listed in the AgentApp's `tools.mcpServers` is asked for its tools; each
becomes a tool named `<server>__<tool>` with the server's input schema. A call opens a short MCP session
(initialize, call_tool, close): one server restarting never leaves a dead session behind, at the price of a
round trip per call. MCP servers never see the caller's identity; their results are observations like any other
tool's. Errors (unreachable, a tool error) become the observation's text, never an exception out of the loop."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..api.agentapp import MCPServer
from .actions import ToolSchema
from .agent import ToolFailed
from .runs import MCP_SEPARATOR

__all__ = ["McpTool", "McpTools", "McpError", "SEPARATOR"]

log = logging.getLogger("agentfleet.runtime.mcp")
SEPARATOR = MCP_SEPARATOR  # "<server>__<tool>", one spelling with the runs rules
LIST_TIMEOUT_S = 10.0
MAX_RESULT_CHARS = 6000


class McpError(ToolFailed):
    """Its message becomes the observation the model sees."""


@dataclass(frozen=True)
class McpTool:
    server: str
    url: str
    tool: str
    schema: ToolSchema


def _text(result: Any) -> str:
    parts = []
    for block in getattr(result, "content", None) or ():
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(block, 'type', 'content')}]")
    return "\n".join(parts)[:MAX_RESULT_CHARS]


@dataclass
class McpTools:
    servers: Sequence[MCPServer]
    tools: dict[str, McpTool] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    async def _list(self, server: MCPServer) -> list[McpTool]:
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        async with streamable_http_client(server.url) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
        out = []
        for t in listed.tools:
            name = f"{server.name}{SEPARATOR}{t.name}"
            params = dict(t.input_schema or {"type": "object", "properties": {}})
            out.append(McpTool(server.name, server.url, t.name,
                               ToolSchema(name, (t.description or t.title or t.name)[:500], params)))
        return out

    async def refresh(self) -> None:
        """(Re)list the tools of every server whose tools are unknown; a failure is kept as that server's
        problem (readiness reports it) and its tools stay unavailable until a later refresh succeeds."""
        known = {t.server for t in self.tools.values()}
        for server in self.servers:
            if server.name in known:
                continue
            try:
                found = await asyncio.wait_for(self._list(server), LIST_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - any transport or protocol failure is the server's problem
                self.problems[server.name] = f"MCP server {server.name} unreachable: {type(e).__name__}"
                log.warning("MCP server %s (%s): %s", server.name, server.url, e)
                continue
            self.problems.pop(server.name, None)
            for t in found:
                self.tools[t.schema.name] = t

    def schemas_for(self, names: Sequence[str]) -> list[ToolSchema]:
        """The tools an agent may use: `names` holds server names (all their tools) or full tool names."""
        wanted = set(names)
        return [t.schema for n, t in self.tools.items() if n in wanted or t.server in wanted]

    async def call(self, name: str, arguments: Mapping[str, Any]) -> str:
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        t = self.tools.get(name)
        if t is None:
            raise McpError(f"unknown MCP tool {name}")
        try:
            async with streamable_http_client(t.url) as streams:
                async with ClientSession(streams[0], streams[1]) as session:
                    await session.initialize()
                    result = await session.call_tool(t.tool, dict(arguments))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the model sees that the tool failed, not our internals
            log.warning("MCP tool %s failed: %s", name, e)
            raise McpError(f"{name}: the MCP server did not answer ({type(e).__name__})") from None
        text = _text(result)
        if getattr(result, "is_error", False):
            raise McpError(f"{name}: {text or 'the tool reported an error'}")
        return text
