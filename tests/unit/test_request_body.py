"""Untrusted request bodies (pure): what parse_json takes and what it refuses, each refusal with its own 4xx."""

from __future__ import annotations

import json

import pytest

from agentfleet.errors import InvalidRequest, RequestTooLarge, UnsupportedMediaType, http_error
from agentfleet.request_body import charset_of, check_content_encoding, parse_json


@pytest.mark.parametrize("raw, content_type, expected", [
    (b'{"a":[1,{"b":"c"}]}', None, {"a": [1, {"b": "c"}]}),
    (b'{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', None, {"a": "[" * 48}),
    (b'{"a":"\\"[[["}', "application/json; charset=UTF-8", {"a": '"[[['}),
    (b"[" * 32 + b"]" * 32, "application/json; charset=\"utf-8\"", json.loads("[" * 32 + "]" * 32)),
    (b'{"n":99999999999999999999}', "application/json; charset=us-ascii", {"n": 10 ** 20 - 1}),
    (b'["\\\\", ' + b"[" * 30 + b"]" * 30 + b"]", None, ["\\", json.loads("[" * 30 + "]" * 30)]),
    (b'["\\\\\\\"[[[[", 1]', None, ['\\"[[[[', 1]),
    (b'{"a":"' + b"[{" * 40 + b'\\"", "b": [[1]]}', None, {"a": "[{" * 40 + '"', "b": [[1]]}),
], ids=["plain", "brackets-inside-a-string", "escaped-quote", "depth-32", "20-digits",
        "escaped-backslash-then-depth-31", "odd-backslash-run-escapes-the-quote", "escaped-quote-in-long-string"])
def test_parse_json_takes(raw: bytes, content_type: str | None, expected: object) -> None:
    assert parse_json(raw, content_type) == expected


@pytest.mark.parametrize("raw, content_type, error, status, message", [
    (b"[" * 33 + b"]" * 33, None, InvalidRequest, 400, "the request body nests deeper than 32 levels"),
    (b"[" * 100_000, None, InvalidRequest, 400, "the request body nests deeper than 32 levels"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, None, InvalidRequest, 400, "the request body nests deeper than 32 levels"),
    (b'["\\\\", ' + b"[" * 33 + b"]" * 34, None, InvalidRequest, 400,
     "the request body nests deeper than 32 levels"),
    (b"{}", "application/json; charset=foo", UnsupportedMediaType, 415,
     "charset 'foo' is not supported: send JSON as UTF-8"),
    (b"{}", "application/json; charset=base64", UnsupportedMediaType, 415,
     "charset 'base64' is not supported: send JSON as UTF-8"),
    (b"{}", "text/plain; charset=" + "\x01" * 50, UnsupportedMediaType, 415,
     "charset '" + "\\x01" * 40 + "' is not supported: send JSON as UTF-8"),
    (b'{"a":"\xff"}', None, InvalidRequest, 400, "the request body is not valid UTF-8"),
    (b"1" * 21, None, InvalidRequest, 400, "the request body is not valid JSON"),
    (b"NaN", None, InvalidRequest, 400, "the request body is not valid JSON"),
    (b"[1e999]", None, InvalidRequest, 400, "the request body is not valid JSON"),
    (b'"' + b'\\"' * 200_000, None, InvalidRequest, 400, "the request body is not valid JSON"),
    (b"{" + b" " * (1 << 20), None, RequestTooLarge, 413, "the request body is larger than 1048576 bytes"),
], ids=["depth-33", "bracket-bomb", "object-bomb", "depth-34-after-an-escaped-backslash", "unknown-charset",
        "non-text-codec", "control-chars-charset",
        "not-utf-8", "21-digits", "nan", "overflowing-float", "unterminated-escapes", "over-1mib"])
def test_parse_json_refuses(raw: bytes, content_type: str | None, error: type, status: int, message: str) -> None:
    with pytest.raises(error) as caught:
        parse_json(raw, content_type)
    assert type(caught.value) is error
    assert http_error(caught.value).status == status
    assert str(caught.value) == message


@pytest.mark.parametrize("header, expected", [
    (None, None), ("application/json", None), ("application/json; charset=UTF-8", "utf-8"),
    ('application/json;charset="utf-8"', "utf-8"), ("application/json; charset=", None),
    ("application/json; boundary=x; CHARSET=Latin-1", "latin-1"),
], ids=["none", "no-param", "upper", "quoted", "empty", "second-param"])
def test_charset_of(header: str | None, expected: str | None) -> None:
    assert charset_of(header) == expected


@pytest.mark.parametrize("encoding, refused", [(None, False), ("identity", False), ("", False), ("gzip", True),
                                                ("br", True), ("x-unknown", True)],
                         ids=["none", "identity", "empty", "gzip", "brotli", "unknown"])
def test_content_encoding(encoding: str | None, refused: bool) -> None:
    if refused:
        with pytest.raises(UnsupportedMediaType):
            check_content_encoding(encoding)
    else:
        check_content_encoding(encoding)
