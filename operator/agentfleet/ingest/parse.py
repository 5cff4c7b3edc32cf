"""File bytes -> documents: front matter, title and heading-marked text for Markdown, plain text, HTML, PDF and
JSONL (one document per record). Markup is reduced to Markdown-style headings so one chunker serves every
format. HTML drops boilerplate elements (script, style, nav, header, footer, aside, form); only `<meta>` tags in
its head count as metadata. YAML (front matter, `_access.yaml`) is read by `load_yaml`: safe types only, no
aliases (a few nested aliases expand into gigabytes), and bounded in size."""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import yaml

__all__ = ["ParsedDocument", "ParseError", "parse_file", "split_front_matter", "load_yaml", "FORMATS",
           "FRONT_MATTER_MAX_CHARS", "TITLE_MAX_CHARS", "MAX_TEXT_CHARS", "MAX_PDF_PAGES", "PDF_MAX_SECONDS"]

FORMATS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".html": "html",
           ".htm": "html", ".pdf": "pdf", ".jsonl": "jsonl", ".ndjson": "jsonl"}

_FRONT = re.compile(r"\A\ufeff?---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S)
# Front matter is a title and a few keys; 64 KiB is generous and keeps YAML parsing cheap.
FRONT_MATTER_MAX_CHARS = 65_536
# The store's title field holds 1,024 characters.
TITLE_MAX_CHARS = 1_024
# Per document, whatever the file's size (64 MiB at most): extracted text (20 M characters is ~10,000 pages; a
# compressed PDF can expand far beyond its file), PDF pages, and the time spent extracting a PDF. pypdf bounds each
# decompressed stream itself (75 MB), so a decompression bomb fails its stream, and these bound the sum.
MAX_TEXT_CHARS = 20_000_000
MAX_PDF_PAGES = 5_000
PDF_MAX_SECONDS = 120.0


class ParseError(ValueError):
    """A file that cannot be read as its format: reported and skipped."""


@dataclass
class ParsedDocument:
    source: str                       # path relative to the source directory; JSONL records add `#<id>`
    format: str
    title: str
    text: str                         # headings as `#` lines (Markdown style), not yet cleaned
    meta: dict[str, Any] = field(default_factory=dict)   # front matter or the JSONL record's other keys
    # True when no title came with the document (metadata, <title>, a heading, a JSONL field) and `title` is only
    # its file name or record id: shown to users, but not embedded (a name like `0003` or `final_v2` is noise).
    title_from_name: bool = False

    def __post_init__(self) -> None:
        # A title is shown and embedded with every chunk; metadata can make it arbitrarily long.
        self.title = " ".join(self.title.split())[:TITLE_MAX_CHARS] if len(self.title) > TITLE_MAX_CHARS \
            else self.title


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases: `&a [x, x]` / `*a` nests into exponential expansion (billion laughs)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed here",
                                              event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str, *, max_chars: int) -> Any:
    """Safe YAML without aliases and at most `max_chars` long; raises yaml.YAMLError (aliases, syntax) or
    ValueError (size)."""
    if len(text) > max_chars:
        raise ValueError(f"{len(text)} characters, over the limit of {max_chars}")
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    m = _FRONT.match(text)
    if not m:
        return {}, text
    try:
        meta = load_yaml(m.group(1), max_chars=FRONT_MATTER_MAX_CHARS)
    except yaml.YAMLError as err:
        raise ParseError(f"front matter is not YAML: {err}") from None
    except ValueError as err:
        raise ParseError(f"front matter too large: {err}") from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ParseError("front matter must be a mapping")
    return meta, text[m.end():]


def _first_heading(text: str) -> str | None:
    m = re.search(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, re.M)
    return m.group(1).strip() if m else None


def _stem(relpath: str) -> str:
    name = relpath.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


class _HTMLText(HTMLParser):
    SKIP = {"script", "style", "nav", "header", "footer", "aside", "form", "noscript", "template", "svg"}
    BLOCK = {"p", "div", "section", "article", "main", "li", "tr", "br", "pre", "blockquote", "table", "ul", "ol",
             "dd", "dt", "figcaption"}
    HEAD = {"html", "head", "title", "meta", "link", "base", "style", "script", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.title: list[str] = []
        self.meta: dict[str, str] = {}
        self._skip = 0
        self._in_title = False
        # Only the head's <meta> tags are metadata: a body is content, often pasted from elsewhere.
        self._in_body = False
        self._heading: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.HEAD:
            self._in_body = True
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "meta" and not self._in_body:
            a = dict(attrs)
            if a.get("name") and a.get("content") is not None:
                self.meta[a["name"].lower()] = a["content"] or ""
        elif re.fullmatch(r"h[1-6]", tag) and not self._skip:
            self._heading = int(tag[1])
            self.out.append("\n\n" + "#" * self._heading + " ")
        elif tag in self.BLOCK and not self._skip:
            self.out.append("\n")
        elif tag in ("td", "th") and not self._skip:
            self.out.append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            self._heading = None
            self.out.append("\n\n")
        elif tag in self.BLOCK and not self._skip:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if data.strip() and not self._in_title and not self._skip:
            self._in_body = True  # text outside any head element starts the body, as in a browser
        if self._in_title:
            self.title.append(data)
        elif not self._skip:
            self.out.append(" ".join(data.split()) if self._heading else data)


def _html(relpath: str, text: str) -> ParsedDocument:
    meta, body = split_front_matter(text)
    p = _HTMLText()
    try:
        p.feed(body)
        p.close()
    except Exception as err:  # html.parser raises assorted errors on broken input
        raise ParseError(f"HTML: {err}") from None
    for key in ("tenant", "groups"):  # <meta name="tenant" content="..."> as an alternative to front matter
        if key not in meta and key in p.meta:
            meta[key] = p.meta[key] if key == "tenant" else [g.strip() for g in p.meta[key].split(",") if g.strip()]
    out = "".join(p.out)
    title = str(meta.get("title") or " ".join("".join(p.title).split()) or _first_heading(out) or "")
    return ParsedDocument(relpath, "html", title or _stem(relpath), out, meta, title_from_name=not title)


def _pdf(relpath: str, data: bytes) -> ParsedDocument:
    try:
        from pypdf import PdfReader
        from pypdf.errors import LimitReachedError, PyPdfError

        reader = PdfReader(io.BytesIO(data))
        if len(reader.pages) > MAX_PDF_PAGES:
            raise ParseError(f"PDF: {len(reader.pages)} pages, over the per-document limit of {MAX_PDF_PAGES}")
        started, chars, pages = time.monotonic(), 0, []
        for page in reader.pages:
            text = page.extract_text() or ""
            chars += len(text)
            if chars > MAX_TEXT_CHARS:
                raise ParseError(f"PDF: over {MAX_TEXT_CHARS} characters of text, the per-document limit")
            if time.monotonic() - started > PDF_MAX_SECONDS:
                raise ParseError(f"PDF: text extraction took over {PDF_MAX_SECONDS:.0f} s")
            pages.append(text)
        info_title = (reader.metadata.title if reader.metadata else None) or ""
    except ParseError:
        raise
    except LimitReachedError as err:
        raise ParseError(f"PDF: a stream decompresses past the limit ({err})") from None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as err:
        raise ParseError(f"PDF: {type(err).__name__}: {err}"[:500]) from None
    # Running headers and footers: a line on at least half of 3+ pages is boilerplate.
    if len(pages) >= 3:
        counts: dict[str, int] = {}
        for page in pages:
            for line in {ln.strip() for ln in page.splitlines() if ln.strip()}:
                counts[line] = counts.get(line, 0) + 1
        boiler = {ln for ln, n in counts.items() if n * 2 >= len(pages)}
        pages = ["\n".join(ln for ln in page.splitlines() if ln.strip() not in boiler) for page in pages]
    text = "\n\n".join(pages)
    title = str(info_title).strip()
    return ParsedDocument(relpath, "pdf", title or _stem(relpath), text, {}, title_from_name=not title)


_TEXT_KEYS = ("text", "content", "body", "page_content")


def _jsonl(relpath: str, text: str) -> list[ParsedDocument]:
    docs = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as err:
            raise ParseError(f"line {lineno}: not JSON: {err}") from None
        if not isinstance(rec, dict):
            raise ParseError(f"line {lineno}: a record must be a JSON object")
        key = next((k for k in _TEXT_KEYS if isinstance(rec.get(k), str)), None)
        if key is None:
            raise ParseError(f"line {lineno}: no text field (one of {', '.join(_TEXT_KEYS)})")
        rid = str(rec.get("id", f"L{lineno}"))
        if rid in seen:
            raise ParseError(f"line {lineno}: duplicate id {rid!r}")
        seen.add(rid)
        meta = {k: v for k, v in rec.items() if k != key}
        body = rec[key]
        title = str(rec.get("title") or _first_heading(body) or "")
        docs.append(ParsedDocument(f"{relpath}#{rid}", "jsonl", title or f"{_stem(relpath)} {rid}", body, meta,
                                   title_from_name=not title))
    return docs


def parse_file(relpath: str, data: bytes) -> list[ParsedDocument]:
    """One file's documents (JSONL: one per record). Raises ParseError for unreadable content."""
    ext = "." + relpath.rsplit(".", 1)[-1].lower() if "." in relpath else ""
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise ParseError(f"unsupported format {ext or '(no extension)'}")
    if fmt == "pdf":
        return [_pdf(relpath, data)]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if len(text) > MAX_TEXT_CHARS:
        raise ParseError(f"{len(text)} characters of text, over the per-document limit of {MAX_TEXT_CHARS}")
    if fmt == "jsonl":
        return _jsonl(relpath, text)
    if fmt == "html":
        return [_html(relpath, text)]
    meta, body = split_front_matter(text)
    if fmt == "markdown":
        title = str(meta.get("title") or _first_heading(body) or "")
    else:
        title = str(meta.get("title") or "")
    return [ParsedDocument(relpath, fmt, title or _stem(relpath), body, meta, title_from_name=not title)]
