"""MCP servers as agent tools (the official `mcp` package, streamable HTTP). At start-up, and again whenever a
server's tools are unknown, each server listed in the AgentApp's `tools.mcpServers` is asked for its tools; each
becomes a tool named `<server>__<tool>` with the server's input schema. A call opens a short MCP session
(initialize, call_tool, close): one server restarting never leaves a dead session behind, at the price of a
round trip per call. Every request to a server carries the headers of its `headersSecretRef` (mounted by render as
one file per header under MCP_HEADERS_DIR/<server>/, read per call so a rotated Secret applies), and every tool
call carries the caller's identity: `X-Agentfleet-Tenant`, `X-Agentfleet-User` and `X-Agentfleet-Groups`, taken
from the task's authenticated principal, never from the model or the request body (identity_headers). Their
results are observations like any other tool's. Errors (unreachable, a tool error) become the observation's
text, never an exception out of the loop."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from ..api.agentapp import MCPServer
from ..names import MCP_HEADERS_DIR, MCP_HEADERS_DIR_ENV
from ..retrieval.filters import Principal
from ..telemetry import DISABLED, Telemetry
from .actions import ToolSchema
from .agent import ToolFailed
from .runs import MCP_SEPARATOR

__all__ = ["McpTool", "McpTools", "McpError", "SEPARATOR", "identity_headers", "secret_headers",
           "TENANT_HEADER", "USER_HEADER", "GROUPS_HEADER"]

log = logging.getLogger("agentfleet.runtime.mcp")
SEPARATOR = MCP_SEPARATOR  # "<server>__<tool>", one spelling with the runs rules
LIST_TIMEOUT_S = 10.0
MAX_RESULT_CHARS = 6000
TENANT_HEADER, USER_HEADER, GROUPS_HEADER = "X-Agentfleet-Tenant", "X-Agentfleet-User", "X-Agentfleet-Groups"
_IDENTITY = {h.lower() for h in (TENANT_HEADER, USER_HEADER, GROUPS_HEADER)}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")  # an RFC 9110 token
MAX_HEADER_VALUE = 8192


def identity_headers(principal: Principal) -> dict[str, str]:
    """The caller, as an MCP server can read it. Names are percent-encoded UTF-8 (RFC 3986, nothing left
    unescaped), so any tenant, user or group name (commas, non-ASCII) is one ASCII token; groups are joined by
    commas. An absent user is sent as an empty value, never omitted (a server must not take a missing header
    for a default)."""
    return {TENANT_HEADER: quote(principal.tenant, safe=""),
            USER_HEADER: quote(principal.user or "", safe=""),
            GROUPS_HEADER: ",".join(quote(g, safe="") for g in principal.groups)}


def secret_headers(directory: Path) -> dict[str, str]:
    """A mounted Secret as headers: each regular file whose name is an HTTP header name, its content (stripped of
    a trailing newline) the value. Identity headers are the runtime's alone and are dropped here; so are values
    that would break the header line."""
    out: dict[str, str] = {}
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return out
    for path in entries:
        name = path.name
        if name.startswith(".") or not _HEADER_NAME.match(name) or name.lower() in _IDENTITY:
            continue
        try:
            value = path.read_text("utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            continue
        if len(value) > MAX_HEADER_VALUE or any(c in value for c in "\r\n\0"):
            log.warning("MCP header %s in %s is not a valid header value: not sent", name, directory)
            continue
        out[name] = value
    return out


class McpError(ToolFailed):
    """Its message becomes the observation the model sees."""


@dataclass(frozen=True)
class McpTool:
    server: str
    url: str
    tool: str
    schema: ToolSchema
    has_secret_headers: bool = False


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
    # Where headersSecretRef Secrets are mounted; None: MCP_HEADERS_DIR_ENV, else names.MCP_HEADERS_DIR.
    headers_dir: Path | None = None
    telemetry: Telemetry = DISABLED  # a tool call carries the execute_tool span as `traceparent`

    def _headers(self, server: str, has_secret: bool, principal: Principal | None) -> dict[str, str]:
        root = self.headers_dir or Path(os.environ.get(MCP_HEADERS_DIR_ENV) or MCP_HEADERS_DIR)
        headers = secret_headers(root / server) if has_secret else {}
        if principal is not None:
            headers.update(identity_headers(principal))
        return headers

    async def _list(self, server: MCPServer) -> list[McpTool]:
        from mcp import ClientSession
        from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

        has_secret = server.headers_secret_ref is not None
        # Listing happens at start-up, for no one: it carries the Secret's headers only.
        async with create_mcp_http_client(headers=self._headers(server.name, has_secret, None)) as http, \
                streamable_http_client(server.url, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
        out = []
        for t in listed.tools:
            name = f"{server.name}{SEPARATOR}{t.name}"
            params = dict(t.input_schema or {"type": "object", "properties": {}})
            out.append(McpTool(server.name, server.url, t.name,
                               ToolSchema(name, (t.description or t.title or t.name)[:500], params), has_secret))
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

    async def call(self, name: str, arguments: Mapping[str, Any], principal: Principal) -> str:
        """Call tool `name` as `principal` (the task's authenticated caller: agent.py passes ctx.principal)."""
        from mcp import ClientSession
        from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

        t = self.tools.get(name)
        if t is None:
            raise McpError(f"unknown MCP tool {name}")
        try:
            headers = self.telemetry.inject(self._headers(t.server, t.has_secret_headers, principal))
            async with create_mcp_http_client(headers=headers) as http, \
                    streamable_http_client(t.url, http_client=http) as streams:
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
