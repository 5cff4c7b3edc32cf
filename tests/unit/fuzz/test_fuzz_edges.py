"""The fuzzer: hypothesis draws requests from the published OpenAPI documents of the runtime and the router
(every operation, with bodies from their JSON schemas, then mutated) and from hostile generators (raw bytes,
deep nesting, huge numbers, odd and non-text charsets, broken Content-Encoding, malformed framing, any method on
any path), sends each byte for byte over a raw socket to the real servers, and checks the edge rule: never a
5xx, and every 4xx the application answers is an OpenAI error body `{"error": {message, type, param, code}}`.
Requests whose framing the HTTP parser itself refuses get the same OpenAI body (http_edge), or a closed
connection. On a failure hypothesis shrinks to the smallest reproducing request and prints its
bytes; a found case becomes a row of test_edge_inputs.py. FUZZ_EXAMPLES (default 5,200 per server, with the
fixed rows and a few from the throttle, above 10,000 requests a run) scales it."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agentfleet.runtime.openapi import router_openapi, runtime_openapi
from fuzz_kit import ADMIN_TOKEN, ALICE, Reply, edges, http, request_bytes

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5200"))
DOCS = {"runtime": runtime_openapi(), "router": router_openapi()}
SENT = {"runtime": 0, "router": 0}
FIVE_XX: list[str] = []
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "FOO"]
CHARSETS = ["utf-8", "UTF-8", '"utf-8"', "us-ascii", "latin-1", "utf-16", "utf-32", "foo", "base64", "hex",
            "zlib", "rot13", "bz2", "uu", "quopri", "idna", "punycode", "", "x" * 300, "utf-8; charset=foo"]
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                 "application/json; boundary=x", "*/*", ";;;", "application/json; charset"]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory):
    # A throttle limit the fuzzer's wrong keys cannot reach in one run: its own tests are in test_edge_inputs.
    with edges(tmp_path_factory.mktemp("fuzz"), body_timeout_s=0.5, write_timeout_s=2.0,
               app={"auth": {"apiKeysSecretRef": {"name": "keys", "key": "keys.yaml"},
                             "failedAttempts": {"perAddressPerMinute": 0, "perKeyPrefixPerMinute": 0}}}) as e:
        yield e
    _report(e)


def _report(e: Any) -> None:
    line = (f"fuzzer: {SENT['runtime']} requests to the runtime, {SENT['router']} to the router, "
            f"{len(FIVE_XX)} answered 5xx, {len(e.unhandled.records)} unhandled errors logged")
    print("\n" + line)
    out = os.environ.get("FUZZ_REPORT")
    if out:
        Path(out).write_text(json.dumps({**SENT, "five_xx": len(FIVE_XX), "unhandled": e.unhandled.records}))


# --- JSON values and JSON schema -> strategies ---------------------------------------------------------------

_SCALARS = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False)
            | st.text(max_size=40))
JSON_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def from_schema(schema: dict[str, Any], doc: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that mostly satisfy `schema` (its types, enums, required properties), sometimes anything: the
    validator must refuse what is wrong, not only accept what is right."""
    schema = _resolve(schema, doc)
    if depth > 6:
        return _SCALARS
    if "enum" in schema:
        base: st.SearchStrategy[Any] = st.sampled_from(schema["enum"])
    elif "const" in schema:
        base = st.just(schema["const"])
    elif "anyOf" in schema or "oneOf" in schema:
        base = st.one_of([from_schema(s, doc, depth + 1) for s in schema.get("anyOf", schema.get("oneOf"))])
    else:
        kind = schema.get("type")
        if kind == "object":
            props = schema.get("properties", {})
            required = set(schema.get("required", []))
            base = st.fixed_dictionaries(
                {k: from_schema(v, doc, depth + 1) for k, v in props.items() if k in required},
                optional={k: from_schema(v, doc, depth + 1) for k, v in props.items() if k not in required})
        elif kind == "array":
            base = st.lists(from_schema(schema.get("items", {}), doc, depth + 1),
                            min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 4), 4))
        elif kind == "string":
            base = st.text(max_size=min(schema.get("maxLength", 60), 60))
        elif kind == "integer":
            base = st.integers(schema.get("minimum", -(2 ** 64)), schema.get("maximum", 2 ** 64))
        elif kind == "number":
            base = st.floats(allow_nan=False, allow_infinity=False)
        elif kind == "boolean":
            base = st.booleans()
        elif kind == "null":
            base = st.none()
        else:
            base = JSON_VALUES
    return st.one_of(base, base, base, JSON_VALUES) if depth else base


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method.upper(), op) for path, ops in doc["paths"].items() for method, op in ops.items()]


OPERATIONS = {server: _operations(doc) for server, doc in DOCS.items()}

# --- request parts ----------------------------------------------------------------------------------------

HEADER_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " -_.,;=/:+*\"'()[]{}<>@?", max_size=60)
_PATH_CHARS = string.ascii_letters + string.digits + "-._~%/?&=#@!$'()*+,;:" + "\u00e9"


@st.composite
def _content_type(draw: st.DrawFn) -> str | None:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return None
    ct = draw(st.sampled_from(CONTENT_TYPES))
    if kind == 3:
        ct += f"; charset={draw(st.sampled_from(CHARSETS))}"
    return ct


@st.composite
def _auth(draw: st.DrawFn, server: str) -> dict[str, str]:
    good = ALICE if server == "runtime" else ADMIN_TOKEN
    value = draw(st.sampled_from([f"Bearer {good}", f"Bearer {good}", None, f"bearer {good[:-1]}x", "Bearer",
                                  "Basic Zm9vOmJhcg==", f"Bearer  {good} ", "Bearer \u00e9\u00e9\u00e9\u00e9"]))
    if value is None:
        return {}
    return {"Authorization": value}


def _body_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


HOSTILE_BODIES = st.one_of(
    st.binary(max_size=200),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(1, 8000).map(lambda n: b'{"messages":[{"role":"user","content":"hi"}],"max_tokens":' + b"9" * n + b"}"),
    st.sampled_from([b"NaN", b"Infinity", b'{"max_tokens":1e999}', b'{"a":-Infinity}', b"\xef\xbb\xbf{}",
                     b'{"input":"\\ud800"}', b'"\\', b"{" * 100, b'{"messages":' + b"[" * 40, b"\x00" * 10,
                     b'{"messages":[{"role":"user","content":[{"type":"text","text":5}]}]}',
                     b'{"messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":[]}',
                     b'{"input":' + b'"' + b"a" * 40000 + b'"}']),
    JSON_VALUES.map(_body_bytes),
    st.text(max_size=100).map(lambda t: t.encode("utf-16")),
)


@st.composite
def openapi_requests(draw: st.DrawFn, server: str) -> tuple[bytes, bool]:
    """A request for one operation of the server's OpenAPI document: its path parameters, query, headers and
    body drawn from the schemas, any of them sometimes replaced by something hostile."""
    doc = DOCS[server]
    path, method, op = draw(st.sampled_from(OPERATIONS[server]))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(METHODS))
    query: dict[str, str] = {}
    headers = draw(_auth(server))
    for param in op.get("parameters", []):
        value = draw(st.one_of(from_schema(param["schema"], doc).map(str), st.text(alphabet=_PATH_CHARS, max_size=40)))
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", _quote(value) or "x")
        elif param["in"] == "query" and draw(st.booleans()):
            query[param["name"]] = value
        elif param["in"] == "header" and draw(st.booleans()):
            headers[param["name"]] = "".join(c for c in value if " " <= c <= "~")
    if query:
        path += "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in query.items())
    body: bytes | None = None
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema is not None or draw(st.integers(0, 4)) == 0:
        choice = draw(st.integers(0, 3))
        if choice <= 1 and schema is not None:
            body = _body_bytes(draw(from_schema(schema, doc)))
        elif choice == 2:
            body = draw(HOSTILE_BODIES)
        else:
            body = _body_bytes(draw(JSON_VALUES))
    ct = draw(_content_type())
    if ct is not None:
        headers["Content-Type"] = ct
    if draw(st.integers(0, 7)) == 0:
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "foo"]))
    for _ in range(draw(st.integers(0, 2))):
        headers[draw(st.sampled_from(["X-Forwarded-For", "Accept", "Accept-Encoding", "Last-Event-ID",
                                      "X-Session-Id", "Idempotency-Key", "Expect", "Range", "Cookie"]))] = \
            draw(HEADER_TEXT)
    # A method outside RFC 9110's registry is refused by the HTTP parser itself (a plain-text 400).
    return request_bytes(method, path, headers=headers, body=body), method in ("FOO", "CONNECT")


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


@st.composite
def framing(draw: st.DrawFn, server: str) -> tuple[bytes, bool]:
    """Malformed HTTP: lengths that lie, broken chunking, odd request lines and header bytes, early EOF."""
    path = draw(st.sampled_from(["/v1/chat/completions", "/v1/runs", "/admin/drain", "/healthz", "/"]))
    auth = {"Authorization": f"Bearer {ALICE if server == 'runtime' else ADMIN_TOKEN}"}
    body = b'{"messages":[{"role":"user","content":"hi"}],"input":"hi"}'
    kind = draw(st.integers(0, 7))
    if kind == 0:  # Content-Length says more than is sent; the client then goes away
        return request_bytes("POST", path, headers={**auth, "Content-Length": str(len(body) + draw(
            st.integers(1, 10 ** 6)))}, body=body), True
    if kind == 1:  # broken chunk sizes
        chunked = draw(st.sampled_from([b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nab\r\n0\r\n\r\n", b"-1\r\n\r\n",
                                        b"ffffffffffffffffff\r\nx\r\n", b"3;ext=" + b"x" * 9000 + b"\r\nabc\r\n0\r\n\r\n"]))
        return request_bytes("POST", path, headers={**auth, "Transfer-Encoding": "chunked"}, body=chunked), True
    if kind == 2:  # both framings, or two lengths
        hdrs = draw(st.sampled_from([{"Content-Length": str(len(body)), "Transfer-Encoding": "chunked"},
                                     {"Content-Length": f"{len(body)}, {len(body) + 1}"},
                                     {"Content-Length": "-1"}, {"Content-Length": "1e3"},
                                     {"Transfer-Encoding": "gzip, chunked"}]))
        return request_bytes("POST", path, headers={**auth, **hdrs}, body=body, content_length=False), True
    if kind == 3:  # a raw request line
        line = draw(st.binary(max_size=80))
        return line + b"\r\n\r\n", True
    if kind == 4:  # header bytes: controls, non-UTF-8, obs-fold, over-long
        value = draw(st.sampled_from([b"a\x00b", b"\xff\xfe", b"x" * 10000, b"a\r\n b", b"\x7f"]))
        return (f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: ".encode() + value
                + b"\r\n\r\n"), True
    if kind == 5:  # many headers
        n = draw(st.integers(100, 300))
        return (f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                + b"".join(f"X-{i}: v\r\n".encode() for i in range(n)) + b"\r\n"), True
    if kind == 6:  # HTTP/1.0, no Host, absolute-form target
        target = draw(st.sampled_from([path, "http://evil.example" + path, "*", "//" + path]))
        return f"GET {target} HTTP/1.0\r\n\r\n".encode(), True
    # a non-ASCII path
    raw_path = draw(st.binary(min_size=1, max_size=30)).replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")
    return b"GET /" + raw_path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True


def check(server: str, data: bytes, reply: Reply, *, is_framing: bool) -> None:
    shown = data if len(data) <= 600 else data[:600] + b"...(%d bytes)" % len(data)
    if reply.status is None:
        assert is_framing, f"{server} closed without an answer to {shown!r}"
        return
    if reply.status >= 500:
        FIVE_XX.append(repr(shown))
    assert reply.status < 500, f"{server} answered {reply.status} {reply.body[:300]!r} to {shown!r}"
    if reply.status < 400 or data.startswith(b"HEAD "):
        return
    # Framing the HTTP parser refuses (http_edge) answers in the same shape as everything else.
    try:
        err = reply.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"{server} answered {reply.status} without an OpenAI error body: "
                             f"{reply.body[:300]!r} to {shown!r}") from None
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["code"], str), (err, shown)
    assert "Traceback" not in err["message"], (err, shown)


def _port(edge: Any, server: str) -> int:
    return edge.runtime_port if server == "runtime" else edge.router_port


FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
                         suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.mark.parametrize("server", ["runtime", "router"])
def test_no_request_gets_a_5xx_or_a_traceback(edge: Any, server: str) -> None:
    port = _port(edge, server)

    @FUZZ_SETTINGS
    @given(st.one_of(openapi_requests(server), openapi_requests(server), openapi_requests(server),
                     framing(server)))
    def one(case: tuple[bytes, bool]) -> None:
        data, is_framing = case
        SENT[server] += 1
        check(server, data, http(port, data, half_close=is_framing, timeout_s=15), is_framing=is_framing)

    one()
    assert edge.unhandled.records == []
