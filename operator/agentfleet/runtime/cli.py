"""`agentfleet serve` (the AgentApp Deployment's command) and `agentfleet ask` (a terminal client that prints
the streamed answer, its citations, steps, tokens and cost). aiohttp and the server are imported inside the
commands so `agentfleet --help` stays fast."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parsers", "load_config", "key_for_user", "AskError", "DEFAULT_URL", "citation_line"]

DEFAULT_URL = "http://127.0.0.1:8080"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="run an AgentApp's runtime server from its rendered runtime.yaml")
    s.add_argument("--config", required=True, help="runtime configuration (the AgentApp's ConfigMap runtime.yaml)")
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--state-dir", default=None, help="where the SQLite ledger lives (default $AGENTFLEET_STATE_DIR)")
    s.set_defaults(func=_cmd_serve)

    a = sub.add_parser("ask", help="ask an AgentApp a question; prints the streamed answer, citations and cost")
    a.add_argument("question")
    who = a.add_mutually_exclusive_group()
    who.add_argument("--key", default=os.environ.get("AGENTFLEET_API_KEY"),
                     help="API key (default $AGENTFLEET_API_KEY)")
    who.add_argument("--as", dest="as_user", metavar="USER",
                     help="ask as this user: their key is read from the key store (--keys)")
    a.add_argument("--keys", default=os.environ.get("AGENTFLEET_KEYS"),
                   help="key store for --as: YAML of API key -> {user, tenant, groups} (default $AGENTFLEET_KEYS, "
                        "else the keys.yaml that `agentfleet up` wrote under .agentfleet/<app>/)")
    a.add_argument("--url", default=os.environ.get("AGENTFLEET_URL", DEFAULT_URL))
    a.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the whole answer")
    a.add_argument("--json", action="store_true", help="print the final agentfleet summary as JSON")
    a.set_defaults(func=_cmd_ask)


def load_config(path: str) -> Any:
    import yaml

    from ..api.runtime_config import RuntimeConfig

    try:
        doc = yaml.safe_load(Path(path).read_text("utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"error: {path}: cannot read the runtime configuration: {e}") from None
    try:
        return RuntimeConfig.model_validate(doc)
    except Exception as e:  # pydantic's ValidationError names every bad field
        raise SystemExit(f"error: {path}: invalid runtime configuration: {e}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import SpecError
    from .server import serve

    logging.basicConfig(level=logging.INFO, format='{"ts":"%(asctime)s","level":"%(levelname)s",'
                                                   '"logger":"%(name)s","msg":"%(message)s"}')
    config = load_config(args.config)
    try:
        serve(config, host=args.host, port=args.port, state_dir=args.state_dir)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


class AskError(Exception):
    """Why `ask` cannot find the key to send (the message names the file and the user, never a key)."""


def key_for_user(user: str, keys_file: str | os.PathLike[str] | None, *, cwd: Path | None = None) -> str:
    """The API key of `user` in a key store: `keys_file`, else the one run directory's keys.yaml under
    ./.agentfleet/ (what `agentfleet up` writes)."""
    import yaml

    if keys_file:
        path = Path(keys_file)
    else:
        found = sorted((cwd or Path.cwd()).glob(".agentfleet/*/keys.yaml"))
        if not found:
            raise AskError("--as needs a key store: pass --keys FILE or set $AGENTFLEET_KEYS (no "
                           ".agentfleet/<app>/keys.yaml here from `agentfleet up`)")
        if len(found) > 1:
            raise AskError(f"--as: several run directories have a keys.yaml ({', '.join(str(p) for p in found)}); "
                           "choose one with --keys")
        path = found[0]
    try:
        doc = yaml.safe_load(path.read_text("utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise AskError(f"{path}: cannot read the key store: {type(e).__name__}") from None
    if not isinstance(doc, dict):
        raise AskError(f"{path}: expected a mapping of API key -> {{user, tenant, groups}}")
    users = []
    for key, entry in doc.items():
        name = entry.get("user") if isinstance(entry, dict) else None
        if name == user and isinstance(key, str):
            return key
        if isinstance(name, str):
            users.append(name)
    known = ", ".join(sorted(set(users))) or "none"
    raise AskError(f"unknown user {user!r} in {path} (users there: {known})")


def _cmd_ask(args: argparse.Namespace) -> int:
    if args.as_user:
        try:
            args.key = key_for_user(args.as_user, args.keys)
        except AskError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if not args.key:
        print("error: --key (or $AGENTFLEET_API_KEY) or --as USER is required", file=sys.stderr)
        return 2
    return asyncio.run(_ask(args))


async def _ask(args: argparse.Namespace) -> int:
    import aiohttp

    body = {"messages": [{"role": "user", "content": args.question}], "stream": True}
    url = args.url.rstrip("/") + "/v1/chat/completions"
    summary: dict[str, Any] | None = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout, sock_connect=5)) as s:
            async with s.post(url, json=body, headers={"Authorization": f"Bearer {args.key}"}) as r:
                if r.status != 200:
                    err = (await r.json(content_type=None) or {}).get("error", {})
                    print(f"error: HTTP {r.status} {err.get('code', '')}: {err.get('message', '')}", file=sys.stderr)
                    return 1
                async for raw in r.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    msg = json.loads(line[5:])
                    if "error" in msg:
                        print(f"\nerror: {msg['error'].get('message')}", file=sys.stderr)
                        return 1
                    ext = msg.get("agentfleet") or {}
                    if ext.get("type") == "step":
                        st = ext["step"]
                        print(f"  step {st['n']} {st['agent']} {st['kind']} [{st['role']}] {st['action'] or ''}"
                              f"{' error: ' + st['error'] if st['error'] else ''}", file=sys.stderr, flush=True)
                    for c in msg.get("choices") or ():
                        text = (c.get("delta") or {}).get("content")
                        if text:
                            print(text, end="", flush=True)
                    if "stop_reason" in ext:
                        summary = ext
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        print(f"error: {url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print()
    if summary is None:
        print("error: the stream ended without a summary", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for c in summary["citations"]:
        print(citation_line(c, args.url))
    u = summary["usage"]
    models = ", ".join(summary["models"]) or "none"
    print(f"-- {summary['stop_reason']}{': ' + summary['detail'] if summary['detail'] else ''}; "
          f"{summary['steps']} steps; {u['total_tokens']} tokens ({u['prompt_tokens']} prompt, "
          f"{u['completion_tokens']} completion); ${summary['cost_usd']:.6f}; models: {models}")
    return 0 if summary["stop_reason"] == "answered" else 3


def citation_line(c: dict, base_url: str) -> str:
    """`[n] title (link)`: the citation's own http(s) URL, or its `/v1/sources/<doc_id>` path on the app it came
    from (the document as the caller may read it); its source name when it carries no link."""
    link = c.get("url") or c["source"]
    if isinstance(link, str) and link.startswith("/"):
        link = base_url.rstrip("/") + link
    return f"[{c['n']}] {c.get('title') or c['source']} ({link})"
