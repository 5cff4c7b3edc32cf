"""Untrusted request bodies, pure: bytes and a Content-Type header -> a JSON value, or an InvalidRequest (4xx)
that says why. Both HTTP edges (the runtime and the router) parse through here, so a body is bounded in size,
charset and nesting depth before any other work, and nothing a client sends reaches `json.loads` unchecked (a
deeply nested body would otherwise raise RecursionError, an unknown or non-text charset LookupError: both 500s)."""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidRequest, RequestTooLarge, UnsupportedMediaType

__all__ = ["MAX_JSON_DEPTH", "MAX_JSON_BYTES", "MAX_INT_DIGITS", "charset_of", "check_charset",
           "check_content_encoding", "parse_json"]

MAX_JSON_DEPTH = 32  # an OpenAI chat request nests 6 deep (tools' JSON schemas a few more)
MAX_JSON_BYTES = 1 << 20
MAX_INT_DIGITS = 20  # beyond 64 bits no field of any request we take means anything
# RFC 8259 section 8.1: JSON exchanged between systems is UTF-8. ASCII is a subset of it.
_UTF8 = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
# Every byte but brackets and quotes: deleted before the depth scan. Escapes go first (pairs of backslashes, then
# escaped quotes, as a JSON parser reads a run of backslashes), so what remains splits on quotes into outside /
# inside-a-string segments; an unterminated string runs to the end. All of it is C-speed bytes operations: the
# regex this replaced took 18 % of the router's CPU samples on the routing bench (30 kB agent prompts).
_NOT_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"')


def charset_of(content_type: str | None) -> str | None:
    """The `charset` parameter of a Content-Type header value, lower-cased and unquoted (None when absent)."""
    if not content_type:
        return None
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').strip().lower() or None
    return None


def check_charset(content_type: str | None) -> None:
    charset = charset_of(content_type)
    if charset is not None and charset not in _UTF8:
        shown = charset[:40].encode("unicode_escape").decode("ascii")  # never echo control bytes
        raise UnsupportedMediaType(f"charset '{shown}' is not supported: send JSON as UTF-8",
                                   param="Content-Type")


def check_content_encoding(content_encoding: str | None) -> None:
    """Bodies are taken as sent, uncompressed: the servers run with aiohttp's auto_decompress off, so a
    compressed body can neither expand past the size bound nor name a codec the parser lacks (which aiohttp would
    refuse with a plain-text 400 before any application code)."""
    if content_encoding is not None and content_encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedMediaType("Content-Encoding is not supported: send the body uncompressed",
                                   param="Content-Encoding")


def _depth_exceeds(raw: bytes, max_depth: int) -> bool:
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.translate(None, _NOT_STRUCTURE).split(b'"')[::2])
    if len(outside) <= max_depth:
        return False
    depth = 0
    for b in outside:
        if b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError("integer out of range")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, content_type: str | None = None, *, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of a request body. Refused, each with its own 4xx: a body over `max_bytes` (413), a charset
    other than UTF-8 (415), bytes that are not UTF-8, nesting deeper than `max_depth`, integers longer than
    MAX_INT_DIGITS digits, NaN/Infinity or numbers that overflow a float, and anything `json` rejects (400)."""
    if len(raw) > max_bytes:
        raise RequestTooLarge(f"the request body is larger than {max_bytes} bytes")
    check_charset(content_type)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not valid UTF-8") from None
    if _depth_exceeds(raw, max_depth):
        raise InvalidRequest(f"the request body nests deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_float=_finite_float,
                          parse_constant=_refuse_constant)
    except RecursionError:  # unreachable after the depth check; kept so no parser path can become a 500
        raise InvalidRequest(f"the request body nests deeper than {max_depth} levels") from None
    except ValueError:  # JSONDecodeError, and the bounds above
        raise InvalidRequest("the request body is not valid JSON") from None
