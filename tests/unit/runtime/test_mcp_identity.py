"""Identity reaches MCP tools (issue 17): a real MCP server (the `mcp` package, streamable HTTP, in its own process)
echoes the headers each call brought. Every call carries the caller's tenant, user and groups from the
authenticated principal (the model's arguments cannot change them), and the headers of the server's
`headersSecretRef` as mounted files (a Secret key that tries to set an identity header is dropped)."""

import asyncio
import json
from urllib.parse import unquote

import pytest

from agentfleet.retrieval.filters import Principal
from agentfleet.runtime.mcp_tools import identity_headers, secret_headers
from runtime_kit import ALICE, GINA, action, final, make_config, mcp_server, scripted, serve

pytest.importorskip("mcp")

ECHO = '''
import json
import sys
from mcp.server.mcpserver import Context, MCPServer

app = MCPServer("who")


@app.tool()
def whoami(ctx: Context, tenant: str = "") -> str:
    """Echoes the request headers an MCP server can use to know who asked."""
    headers = ctx.request_context.request.headers
    return json.dumps({k.lower(): v for k, v in headers.items() if k.lower().startswith(("x-", "authorization"))},
                      sort_keys=True)


app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
'''


@pytest.fixture(scope="module")
def echo_url(tmp_path_factory):
    with mcp_server(ECHO, tmp_path_factory.mktemp("mcp-echo")) as url:
        yield url


def test_mcp_tools_see_the_caller_and_the_secret_headers(echo_url, tmp_path):
    from agentfleet.runtime.mcp_tools import McpTools

    mounted = tmp_path / "mcp-headers" / "who"   # what render mounts from headersSecretRef
    mounted.mkdir(parents=True)
    (mounted / "Authorization").write_text("Bearer s3cret\n")
    (mounted / "X-Agentfleet-Tenant").write_text("globex")  # a Secret cannot speak for the caller
    (mounted / "bad name").write_text("x")

    def reply(body, headers):
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        if body.get("response_format") is None:
            return "answer"
        # The model tries to name another tenant: that is an argument, never an identity.
        return final("done") if tools else action("who__whoami", tenant="globex")

    async def go():
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, app={"tools": {"builtin": ["calculator"], "mcpServers": [
                {"name": "who", "url": echo_url, "headersSecretRef": {"name": "who-headers"}}]}})
            tools = McpTools(cfg.tools.mcp_servers, headers_dir=tmp_path / "mcp-headers")
            async with serve(cfg, tmp_path, external=tools) as s:
                return [await s.run_to_end("who am I?", key=key, deadline_s=60) for key in (ALICE, GINA)]

    alice, gina = asyncio.run(go())
    seen = [json.loads(run["steps"][0]["observation"]) for run in (alice, gina)]
    assert seen[0] == {"authorization": "Bearer s3cret", "x-agentfleet-groups": "all,eng",
                       "x-agentfleet-tenant": "acme", "x-agentfleet-user": "alice"}
    assert (seen[1]["x-agentfleet-tenant"], seen[1]["x-agentfleet-user"]) == ("globex", "gina")
    assert seen[1]["authorization"] == "Bearer s3cret"


@pytest.mark.parametrize("principal,want", [
    (Principal("acme", ("eng", "all"), user="alice"), ("acme", "alice", "all,eng")),
    (Principal("acme"), ("acme", "", "")),
    (Principal("a,b", ("g,1", "é"), user="ü\r\nX-Evil: 1"),
     ("a%2Cb", "%C3%BC%0D%0AX-Evil%3A%201", "g%2C1,%C3%A9")),
], ids=["plain", "no-user-no-groups", "commas-newlines-unicode-escaped"])
def test_identity_headers_are_one_ascii_token_each(principal, want):
    got = identity_headers(principal)
    assert (got["X-Agentfleet-Tenant"], got["X-Agentfleet-User"], got["X-Agentfleet-Groups"]) == want
    assert all(v.isascii() and "\n" not in v and "\r" not in v for v in got.values())
    assert [unquote(g) for g in got["X-Agentfleet-Groups"].split(",") if g] == list(principal.groups)


@pytest.mark.parametrize("files,want", [
    ({"Authorization": "Bearer t\n"}, {"Authorization": "Bearer t"}),
    ({"X-Agentfleet-User": "root", "x-agentfleet-groups": "admin"}, {}),
    ({"X-Two": "a\nb"}, {}),
    ({"has space": "v", ".hidden": "v"}, {}),
], ids=["trailing-newline-stripped", "identity-headers-dropped", "multiline-value-dropped", "bad-names-dropped"])
def test_secret_headers_from_a_mounted_secret(tmp_path, files, want):
    for name, value in files.items():
        (tmp_path / name).write_text(value)
    assert secret_headers(tmp_path) == want


def test_no_mounted_secret_is_no_headers(tmp_path):
    assert secret_headers(tmp_path / "absent") == {}
