"""The chat page at `/` in a real headless Chromium (Debian's package, installed by e2e/apt-install.sh when this user
may; skipped with the reason otherwise), driven over the Chrome DevTools Protocol on a websocket (aiohttp): no
WebDriver in between. The runtime is real (runtime_kit.serve) and the model and the documents are hostile: the
answer, a tool argument, citation titles, headings and a `javascript:` source all carry markup. A question typed into
the page must show its steps, the citations (each a link: to an http(s) source, or to the runtime's own route for
the document, which a click opens in the page with the key), tokens, cost and the Budget's remaining spend, with
every hostile string as text and none of it as an element, an attribute or a script run; a citation whose url is
anything but an http(s) URL or a path on this server (`javascript:`, `data:`, another host) is no link."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from agentfleet.retrieval.store import Hit

from agentfleet.runtime.server import WEB_DIR
from agentfleet.runtime.sources import document_id
from runtime_kit import ALICE, action, final, make_config, scripted, serve

REPO = Path(__file__).resolve().parents[3]
PAGE_DEADLINE_S = 30.0

# What the documents and the model say: each string must reach the page as text and nowhere as markup.
ANSWER = ('Vacation is 25 days [1]. <img src=x onerror="alert(1)"> <script>window.__pwned = "answer"</script> '
          '<a href="javascript:alert(2)">click</a> <svg onload="alert(3)"></svg>')
TOOL_ARG = '<img src=x onerror="alert(4)">'
TITLE = 'Vacation <img src=x onerror="alert(5)">'
HEADING = '<b onmouseover="alert(6)">Carry-over</b>'
JS_SOURCE = 'javascript:alert(7)//handbook.md'
HTTPS_SOURCE = 'https://docs.example.com/handbook/vacation?x="><script>alert(8)</script>'
PLAIN_SOURCE = "handbook-expenses.md"
HOSTILE_TEXTS = (ANSWER, TOOL_ARG, TITLE, HEADING, JS_SOURCE)


def _hit(id_: str, source: str, title: str, trail: tuple[str, ...], score: float, text: str) -> Hit:
    return Hit(id=id_, score=score, text=text, source=source, title=title, trail=trail, start=0, end=len(text))


DOCS = [_hit("h1", HTTPS_SOURCE, TITLE, ("Vacation", HEADING), 0.9, "Employees earn 25 days of paid vacation."),
        _hit("h2", JS_SOURCE, "Leave <script>alert(9)</script>", ("Leave",), 0.8, "Sick leave: 10 days."),
        _hit("h3", PLAIN_SOURCE, "Expenses", ("Expenses",), 0.7, "Receipts within 30 days.")]


class Store:
    """What the cited-source route reads: a document's chunks for the caller (alice may read them all)."""

    collection = "docs"

    def exists(self) -> bool:
        return True

    def document_chunks(self, doc_key: str, principal: Any, *, limit: int) -> list[Hit]:
        return [h for h in DOCS if document_id(h.source) == doc_key and principal.user == "alice"][:limit]


class Retriever:
    cache = None
    store = Store()

    def search(self, query: str, principal: Any, *, k: int) -> list[Hit]:
        return DOCS[:k]


def hostile_model(body: dict[str, Any], headers: dict[str, str]) -> str:
    """After retrieve-first: a calculator call whose argument is markup (it fails), then the answer (a final
    action, or free text when the runtime's answer step asks for it without a schema)."""
    if not body.get("response_format"):
        return ANSWER
    tool_turns = sum(1 for m in body["messages"] if m["role"] == "tool")
    return action("calculator", expression=TOOL_ARG) if tool_turns < 2 else final(ANSWER)


PRICES = [{"model": "large", "inputPerMTokensUsd": 2.0, "outputPerMTokensUsd": 6.0},
          {"model": "small", "inputPerMTokensUsd": 0.5, "outputPerMTokensUsd": 1.0}]
BUDGET_USD, BUDGET_TOKENS = 5.0, 100_000


# --- the page's Content-Security-Policy ------------------------------------------------------------------------

class _Inline(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.open: str | None = None
        self.text: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            assert tag not in self.text, f"the page has more than one {tag} element"
            self.open, self.text[tag] = tag, []

    def handle_endtag(self, tag: str) -> None:
        self.open = None

    def handle_data(self, data: str) -> None:
        if self.open:
            self.text[self.open].append(data)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_csp_allows_exactly_the_pages_own_script_and_style():
    html = (WEB_DIR / "index.html").read_text()
    parser = _Inline()
    parser.feed(html)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    fix = "; put the hash this test computes into the page's Content-Security-Policy"
    assert directives["script-src"] == _csp_hash("".join(parser.text["script"])), "script-src" + fix
    assert directives["style-src"] == _csp_hash("".join(parser.text["style"])), "style-src" + fix
    assert directives["default-src"] == "'none'" and directives["connect-src"] == "'self'"


# --- a headless Chromium over the DevTools protocol ---------------------------------------------------------------

def _chromium() -> str:
    found = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
    if found:
        return found
    proc = subprocess.run(["bash", str(REPO / "e2e" / "apt-install.sh"), "chromium", "chromium"],
                          capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.skip(f"no Chromium: apt-install.sh exited {proc.returncode}: {proc.stderr.strip()[-200:]}")
    return lines[-1]


@pytest.fixture(scope="module")
def chromium() -> str:
    return _chromium()


@dataclass
class Page:
    """One tab, spoken to in CDP: commands wait for their answer; console errors, uncaught exceptions and
    JavaScript dialogs (an injected `alert`) are recorded as they arrive."""

    ws: aiohttp.ClientWebSocketResponse
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    next_id: int = 0

    async def send(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        return await asyncio.wait_for(fut, 20)

    async def pump(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            m = json.loads(msg.data)
            if "id" in m:
                fut = self.pending.pop(m["id"])
                if "error" in m:
                    fut.set_exception(AssertionError(f"CDP error: {m['error']}"))
                else:
                    fut.set_result(m.get("result"))
                continue
            method, p = m.get("method"), m.get("params", {})
            if method == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                self.errors.append(f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}")
            elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                self.errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                          for a in p["args"]))
            elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                self.errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif method == "Page.javascriptDialogOpening":
                self.dialogs.append(p["message"])
                asyncio.get_running_loop().create_task(self.send("Page.handleJavaScriptDialog", accept=False))

    async def evaluate(self, expression: str) -> Any:
        out = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise AssertionError(f"{expression[:80]}: {out['exceptionDetails']}")
        return out["result"].get("value")

    async def wait_for(self, expression: str, deadline_s: float = PAGE_DEADLINE_S) -> Any:
        """Poll a JavaScript condition until it is truthy, with a deadline."""
        end = time.monotonic() + deadline_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < end, f"not true within {deadline_s}s: {expression}; errors: {self.errors}"
            await asyncio.sleep(0.05)

    async def type_into(self, selector: str, text: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    async def click(self, selector: str) -> None:
        box = await self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                                  ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


@contextlib.asynccontextmanager
async def browser(chromium: str, profile: Path) -> AsyncIterator[Page]:
    flags = ["--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"]
    if os.geteuid() == 0:
        flags.insert(0, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    log_path = profile.parent / "chromium.log"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(chromium, *flags, stdout=log, stderr=log)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
    pump = None
    try:
        port_file = profile / "DevToolsActivePort"  # Chromium writes its chosen port here
        end = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert proc.returncode is None, f"Chromium exited: {log_path.read_text()[-2000:]}"
            assert time.monotonic() < end, f"Chromium did not open its DevTools port: {log_path.read_text()[-2000:]}"
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
            target = next(t for t in await r.json() if t["type"] == "page")
        ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        pump = asyncio.get_running_loop().create_task(page.pump())
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        yield page
    finally:
        if pump is not None:
            pump.cancel()
        await session.close()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# What the test reads from the live DOM after the answer.
DOM_REPORT = """(() => {
  const turn = document.querySelector("#log .turn:last-child");
  const text = (sel) => Array.from(turn.querySelectorAll(sel), (e) => e.textContent);
  const onAttrs = [];
  for (const e of document.querySelectorAll("*"))
    for (const a of e.attributes) if (/^on/i.test(a.name)) onAttrs.push(e.tagName + " " + a.name);
  return {
    state: turn.dataset.state,
    question: turn.querySelector(".question").textContent,
    answer: turn.querySelector(".answer").textContent,
    stepsSummary: turn.querySelector("details.steps > summary").textContent,
    steps: text(".step"),
    cites: Array.from(turn.querySelectorAll(".cites li"), (li) => {
      const a = li.querySelector("a");
      return {text: li.textContent, href: a ? a.getAttribute("href") : null, protocol: a ? a.protocol : null,
              rel: a ? a.rel : null, target: a ? a.target : null};
    }),
    meta: turn.querySelector(".meta").textContent,
    budget: turn.querySelector(".budget").textContent,
    bodyText: document.body.textContent,
    counts: {img: document.querySelectorAll("img").length, svg: document.querySelectorAll("svg").length,
             script: document.querySelectorAll("script").length, b: document.querySelectorAll("b").length,
             iframe: document.querySelectorAll("iframe").length},
    links: Array.from(document.querySelectorAll("a[href]"), (a) => a.protocol),
    onAttrs,
    pwned: window.__pwned || null,
    key: sessionStorage.getItem("agentfleet-key"),
  };
})()"""


# The page's own renderer, given citation urls a document or a remote agent could carry.
LINK_CASES = ["javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)", "\tjava\nscript:alert(1)",
              "data:text/html,<script>alert(1)</script>", "vbscript:msgbox(1)", "//evil.example/x",
              "/\\evil.example/x", "/\t/evil.example/x", "", None, "/v1/sources/0123abcd",
              "https://docs.example.com/a?b=1"]
EXPECTED_LINKS = [None] * 11 + ["/v1/sources/0123abcd", "https://docs.example.com/a?b=1"]
HOSTILE_LINKS = """(() => %s.map((url, i) => {
  const li = citationItem({n: i + 1, title: "t", source: "s.md", url, headings: []});
  const a = li.querySelector("a");
  return a ? a.getAttribute("href") : null;
}))()""" % json.dumps(LINK_CASES)


def test_chat_page_shows_steps_citations_cost_and_budget_and_renders_hostile_text_as_text(chromium, tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()

    async def go():
        async with browser(chromium, profile) as page, scripted(hostile_model) as m:
            cfg = make_config(tmp_path, large_url=m.url, index_uri=str(tmp_path / "unused.db"),
                              budget={"window": "day", "limits": {"costUsd": BUDGET_USD, "tokens": BUDGET_TOKENS},
                                      "prices": PRICES})
            async with serve(cfg, tmp_path, retriever=Retriever()) as s:
                end = time.monotonic() + PAGE_DEADLINE_S
                while not s.runtime.budget_seen:  # the runtime's first read of its Budget (at start-up)
                    assert time.monotonic() < end, "the runtime never read its Budget"
                    await asyncio.sleep(0.05)
                await page.send("Page.navigate", url=s.url + "/")
                await page.wait_for("document.readyState === 'complete' && !!document.getElementById('q')")
                await page.type_into("#key", ALICE)
                await page.type_into("#q", "How many vacation days do I get?")
                await page.click("#ask")
                await page.wait_for("(() => { const t = document.querySelector('#log .turn:last-child');"
                                    " return t && t.dataset.state !== 'streaming'; })()")
                dom = await page.evaluate(DOM_REPORT)
                # A click on the plain path's citation opens the document in the page, fetched with the key
                await page.click("#log .turn:last-child .cites li:nth-child(3) a")
                opened = await page.wait_for("(() => { const d = document.querySelector("
                                             "'#log .turn:last-child .cites li:nth-child(3) .doc');"
                                             " return d && d.textContent !== 'loading\u2026' && d.textContent; })()")
                location = await page.evaluate("location.pathname")
                rendered = await page.evaluate(HOSTILE_LINKS)
                return dom, opened, location, rendered, page.errors, page.dialogs

    dom, opened, location, rendered, errors, dialogs = asyncio.run(go())
    assert dom["state"] == "done", dom
    assert dom["question"] == "How many vacation days do I get?" and dom["key"] == ALICE
    # The answer, exactly as the model wrote it, as text.
    assert dom["answer"] == ANSWER
    # The steps: retrieve-first (no model call), the plan's calculator call with its hostile argument (it fails),
    # the small model's final_answer and the large model writing the answer.
    assert dom["stepsSummary"] == "4 steps"
    retrieve, calc, decide, answer = dom["steps"]
    assert retrieve.startswith("assistant retrieve retrieve(query: How many vacation days do I get?) · 0.0")
    assert "[1] Vacation > " + HEADING in retrieve and "tokens" not in retrieve
    assert calc.startswith(f"assistant plan [sim-model] calculator(expression: {TOOL_ARG}) · ")
    assert calc.endswith("error: calculator: not an arithmetic expression") and calc.count("error: ") == 1
    assert decide.startswith("assistant tool_format [sim-model] final_answer() · ")
    assert answer.startswith("assistant answer [sim-model] ")
    assert all(re.search(r" · \d+\.\d{3} s · \d+ tokens · \$\d+\.\d{6}", s) for s in (calc, decide, answer))
    # Citations: the https source links to exactly that URL (a new tab, without a referrer); the javascript: source
    # and the plain path link to this runtime's route for their document (a relative path), never to the source.
    by_n = {c["text"].split("]")[0] + "]": c for c in dom["cites"]}
    assert set(by_n) == {"[1]", "[2]", "[3]"}
    https, js, plain = by_n["[1]"], by_n["[2]"], by_n["[3]"]
    assert https["protocol"] == "https:" and https["href"].startswith("https://docs.example.com/handbook/vacation?")
    assert "<script>" not in https["href"] and https["rel"] == "noopener noreferrer" and https["target"] == "_blank"
    assert TITLE in https["text"] and HEADING in https["text"]
    assert js["href"] == f"/v1/sources/{document_id(JS_SOURCE)}" and js["protocol"] == "http:"
    assert JS_SOURCE in js["text"] and "Leave <script>alert(9)</script>" in js["text"]
    assert plain["href"] == f"/v1/sources/{document_id(PLAIN_SOURCE)}" and plain["target"] == ""
    assert PLAIN_SOURCE in plain["text"]
    # ... which the page fetched with the key and shows as text, staying on the page
    assert opened == "Receipts within 30 days." and location == "/"
    # A hostile citation url is never a link; a path on this server and an http(s) URL are
    assert rendered == EXPECTED_LINKS, rendered
    # Tokens, cost and the remaining budget, as the summary reported them.
    meta = dom["meta"]
    tokens = re.search(r"(\d+) tokens \((\d+) in, (\d+) out\)", meta)
    assert tokens and int(tokens[1]) == int(tokens[2]) + int(tokens[3]) > 0, meta
    cost = float(re.search(r"\$(\d+\.\d{6})", meta)[1])
    per_step = [re.search(r" · (\d+) tokens · \$(\d+\.\d{6})", s) for s in (calc, decide, answer)]
    assert int(tokens[1]) == sum(int(m[1]) for m in per_step)  # the task's tokens are its steps' tokens
    assert cost > 0 and cost == pytest.approx(sum(float(m[2]) for m in per_step), abs=4e-6)
    assert meta.startswith("answered · 4 steps · ")
    # Read at start-up or, if the runtime's timer ran meanwhile, after this answer's spend.
    assert dom["budget"].startswith("Budget spend: "), dom["budget"]
    assert any(f"${v:.6f} left" in dom["budget"] for v in (BUDGET_USD, BUDGET_USD - cost)), dom["budget"]
    assert any(f" · {v} tokens left" in dom["budget"] for v in (BUDGET_TOKENS, BUDGET_TOKENS - int(tokens[1])))
    # Every hostile string is on the page as text, and none of it became markup or ran.
    for hostile in HOSTILE_TEXTS:
        assert hostile in dom["bodyText"], hostile
    assert dom["counts"] == {"img": 0, "svg": 0, "script": 1, "b": 0, "iframe": 0}, dom["counts"]
    assert dom["onAttrs"] == [] and dom["pwned"] is None and dialogs == []
    assert set(dom["links"]) <= {"http:", "https:"}, dom["links"]
    assert errors == [], errors
