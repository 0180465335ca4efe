"""Document parsers: bytes of a file → `ParsedDocument`s (plain text, title, metadata).

What ingestion (`sluicegate ingest`, the upload endpoint) calls before it publishes
`DocumentSubmitted`. Every parser returns text in one shape the chunkers understand: paragraphs
separated by blank lines and headings written as Markdown (`## Title`), whatever the source
format, so heading-aware chunking works for HTML and Markdown alike.

- PDF (pypdf): the text layer, page by page; no OCR, so a scanned PDF is `EmptyDocumentError`;
  `page_starts` maps character offsets to pages.
- HTML (the standard library's `html.parser`): main text only — `<main>`/`<article>` when
  present; scripts, styles, nav, asides and page headers/footers dropped; headings kept.
- Markdown: as is, minus front matter (→ metadata); setext headings rewritten as `#`; links and
  images reduced to their text.
- Plain text: UTF-8, else Windows-1252; binary input is refused.
- JSON, JSON Lines, CSV, TSV: one document per object or row; a text field becomes the text,
  the other fields metadata.

HTML uses `html.parser` rather than selectolax or BeautifulSoup: it ships with Python (nothing
to install or pin), is maintained with CPython, and is lenient with broken markup; ingestion is
off the request path, so the speed of a C parser such as selectolax buys nothing we need.

Errors (all `DocumentError`, a `SluicegateError`): `UnsupportedFormatError` (no parser for the
media type), `UnreadableDocumentError` (corrupt, encrypted or binary input; `reason`),
`EmptyDocumentError` (parsed, but no text). Each carries `source` and `media_type`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol

import yaml

from sluicegate.errors import SluicegateError

PDF, HTML, MARKDOWN, TEXT = "application/pdf", "text/html", "text/markdown", "text/plain"
JSON, JSONL, CSV, TSV = (
    "application/json",
    "application/x-ndjson",
    "text/csv",
    "text/tab-separated-values",
)
_BY_SUFFIX = {
    ".pdf": PDF,
    ".html": HTML,
    ".htm": HTML,
    ".xhtml": HTML,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".txt": TEXT,
    ".text": TEXT,
    ".rst": TEXT,
    ".json": JSON,
    ".jsonl": JSONL,
    ".ndjson": JSONL,
    ".csv": CSV,
    ".tsv": TSV,
}
SUFFIXES = frozenset(_BY_SUFFIX)  # what a directory walk (`sluicegate ingest DIR`) picks up
# Fields whose value is taken as the text of a record when `text_fields` is not given.
TEXT_FIELD_NAMES = ("text", "content", "body", "abstract", "description", "summary")


class DocumentError(SluicegateError):
    """A document could not be turned into text."""

    def __init__(self, message: str, *, source: str, media_type: str | None = None) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.media_type = media_type


class UnsupportedFormatError(DocumentError):
    """No parser for this media type."""


class UnreadableDocumentError(DocumentError):
    """Corrupt, encrypted or binary input; `reason` says which."""

    def __init__(
        self, message: str, *, source: str, media_type: str | None = None, reason: str
    ) -> None:
        super().__init__(message, source=source, media_type=media_type)
        self.reason = reason


class EmptyDocumentError(DocumentError):
    """Parsed, but there is no text (a scanned PDF, an empty file, an empty row)."""


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """One document's text and what is known about it.

    `doc_id` is stable for the same input: the source itself, or `<source>#<id or row>` for a
    record of a JSON/CSV file. `page_starts[i]` is the character offset where page i+1 begins
    (PDF only), so a chunk's span can be cited with its page.
    """

    doc_id: str
    text: str
    media_type: str
    source_uri: str
    title: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    page_starts: tuple[int, ...] = ()

    def page_of(self, offset: int) -> int | None:
        """1-based page holding `offset`, or None when the format has no pages."""
        if not self.page_starts:
            return None
        return max(i for i, start in enumerate(self.page_starts) if start <= offset) + 1


class DocumentParser(Protocol):
    def run(self, data: bytes, *, source: str) -> list[ParsedDocument]: ...


# -- helpers ----------------------------------------------------------------------------------


def decode_text(data: bytes, *, source: str, media_type: str = TEXT) -> str:
    """UTF-8 (BOM allowed), else Windows-1252; NUL bytes or control noise mean binary input."""
    if b"\x00" in data[:8192]:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16").replace("\r\n", "\n")
        raise UnreadableDocumentError(
            "binary data, not text", source=source, media_type=media_type, reason="binary"
        )
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise UnreadableDocumentError(
            "not UTF-8 or Windows-1252 text",
            source=source,
            media_type=media_type,
            reason="encoding",
        )
    controls = sum(1 for ch in text[:8192] if ord(ch) < 32 and ch not in "\n\r\t\f")
    if controls > 0.05 * min(len(text), 8192):
        raise UnreadableDocumentError(
            "binary data, not text", source=source, media_type=media_type, reason="binary"
        )
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _tidy(text: str) -> str:
    """Trailing spaces off, at most one blank line in a row."""
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _require_text(doc: ParsedDocument) -> ParsedDocument:
    if not doc.text.strip():
        raise EmptyDocumentError("no text", source=doc.source_uri, media_type=doc.media_type)
    return doc


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# -- PDF --------------------------------------------------------------------------------------


class PdfParser:
    """The PDF's text layer, page by page (pypdf). Pages are separated by a blank line."""

    def run(self, data: bytes, *, source: str) -> list[ParsedDocument]:
        from pypdf import PdfReader

        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise UnreadableDocumentError(
                    "encrypted PDF", source=source, media_type=PDF, reason="encrypted"
                )
            pages = [_tidy(page.extract_text() or "") for page in reader.pages]
            info = reader.metadata or {}
            title = getattr(info, "title", None) or None
            author = getattr(info, "author", None)
        except UnreadableDocumentError:
            raise
        except Exception as exc:  # pypdf raises many types on corrupt files; translate them here
            raise UnreadableDocumentError(
                f"unreadable PDF ({type(exc).__name__}: {exc})",
                source=source,
                media_type=PDF,
                reason="corrupt",
            ) from exc
        starts, parts, offset = [], [], 0
        for text in pages:
            starts.append(offset)
            parts.append(text)
            offset += len(text) + 2
        text = "\n\n".join(parts)
        if not text.strip():
            raise EmptyDocumentError(
                "no text layer (scanned PDF? OCR is not built in)", source=source, media_type=PDF
            )
        metadata = {"pages": str(len(pages))}
        if author:
            metadata["author"] = str(author)
        return [
            ParsedDocument(
                doc_id=source,
                text=text,
                media_type=PDF,
                source_uri=source,
                title=str(title) if title else None,
                metadata=metadata,
                page_starts=tuple(starts),
            )
        ]


# -- HTML -------------------------------------------------------------------------------------

_SKIP = {"script", "style", "noscript", "template", "svg", "iframe", "object", "canvas", "head"}
_ALWAYS_BOILERPLATE = {"nav", "aside", "form", "button", "menu", "dialog"}
_PAGE_CHROME = {"header", "footer"}  # boilerplate unless inside <main>/<article>
_MAIN = {"main", "article"}
_BLOCKS = {
    "p", "div", "section", "li", "ul", "ol", "table", "tr", "blockquote", "pre", "dl", "dt", "dd",
    "figure", "figcaption", "address", "hr", "br", "body", "html", "details", "summary",
}  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}


class _HtmlText(HTMLParser):
    """Collects text blocks, noting which were inside the main content."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, bool, bool]] = []  # (text, in main content, list/row item)
        self.title = ""
        self.meta: dict[str, str] = {}
        self.lang = ""
        self._buffer: list[str] = []
        self._skip = 0
        self._boilerplate = 0
        self._main = 0
        self._pre = 0
        self._in_title = False
        self._heading = 0
        self._cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "html" and attributes.get("lang"):
            self.lang = attributes["lang"]
        if tag == "meta":
            name = (attributes.get("name") or attributes.get("property") or "").lower()
            if name in {"description", "author", "keywords", "og:title"}:
                self.meta[name.removeprefix("og:")] = attributes.get("content", "")
            return
        if tag == "title":
            self._in_title = True
        if tag in _SKIP:
            self._skip += 1
            return
        if tag in _ALWAYS_BOILERPLATE or (tag in _PAGE_CHROME and not self._main):
            self._boilerplate += 1
            return
        if tag in _MAIN or attributes.get("role") == "main":
            self._flush()
            self._main += 1
            return
        if tag in _HEADINGS:
            self._flush()
            self._heading = _HEADINGS[tag]
        elif tag in ("td", "th"):
            if self._cell:
                self._buffer.append(" | ")
            self._cell = True
        elif tag == "br":
            self._buffer.append("\n")
        elif tag in _BLOCKS:
            self._flush()
            if tag == "pre":
                self._pre += 1
            if tag == "li":
                self._buffer.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if tag in _ALWAYS_BOILERPLATE or (tag in _PAGE_CHROME and self._boilerplate):
            self._boilerplate = max(0, self._boilerplate - 1)
            return
        if tag in _MAIN:
            self._flush()
            self._main = max(0, self._main - 1)
            return
        if tag in _HEADINGS and self._heading:
            self._flush(prefix="#" * self._heading + " ")
            self._heading = 0
        elif tag == "tr":
            self._flush(item=True)
            self._cell = False
        elif tag == "li":
            self._flush(item=True)
        elif tag in _BLOCKS:
            self._flush()
            if tag == "pre":
                self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if self._skip or self._boilerplate:
            return
        self._buffer.append(data if self._pre else re.sub(r"\s+", " ", data))

    def _flush(self, prefix: str = "", *, item: bool = False) -> None:
        raw = "".join(self._buffer)
        self._buffer = []
        text = raw.strip("\n") if self._pre else re.sub(r"[ \t]+", " ", raw).strip()
        if text and text != "-":
            if not self._pre:
                text = "\n".join(line.strip() for line in text.split("\n"))
            item = item or text.startswith("- ")
            self.blocks.append((prefix + text, self._main > 0, item))

    def close(self) -> None:
        super().close()
        self._flush()


class HtmlParser:
    """Main text with headings kept as Markdown; page chrome and scripts dropped."""

    def run(self, data: bytes, *, source: str) -> list[ParsedDocument]:
        markup = decode_text(data, source=source, media_type=HTML)
        parser = _HtmlText()
        try:
            parser.feed(markup)
            parser.close()
        except AssertionError as exc:  # html.parser's only failure mode on hostile markup
            raise UnreadableDocumentError(
                f"malformed HTML ({exc})", source=source, media_type=HTML, reason="corrupt"
            ) from exc
        main = [(text, item) for text, in_main, item in parser.blocks if in_main]
        blocks = main or [(text, item) for text, _, item in parser.blocks]
        parts: list[str] = []
        for i, (block, item) in enumerate(blocks):
            if i:  # items of one list or table stay on consecutive lines
                parts.append("\n" if item and blocks[i - 1][1] else "\n\n")
            parts.append(block)
        text = _tidy("".join(parts))
        title = re.sub(r"\s+", " ", parser.title).strip() or parser.meta.get("title")
        if not title:
            first = next((b for b, _ in blocks if b.startswith("#")), None)
            title = first.lstrip("#").strip() if first else None
        metadata = {k: v for k, v in parser.meta.items() if v and k != "title"}
        if parser.lang:
            metadata["lang"] = parser.lang
        doc = ParsedDocument(
            doc_id=source,
            text=text,
            media_type=HTML,
            source_uri=source,
            title=title,
            metadata=metadata,
        )
        return [_require_text(doc)]


# -- Markdown and plain text ------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_SETEXT = re.compile(r"^(?P<title>[^\n#>\-*\s][^\n]*)\n(?P<rule>=+|-+)[ \t]*$", re.MULTILINE)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


class MarkdownParser:
    """Markdown kept as Markdown (the chunkers read its headings); front matter → metadata."""

    def run(self, data: bytes, *, source: str) -> list[ParsedDocument]:
        text = decode_text(data, source=source, media_type=MARKDOWN)
        metadata: dict[str, str] = {}
        match = _FRONT_MATTER.match(text)
        if match:
            try:
                front = yaml.safe_load(match.group(1))
            except yaml.YAMLError as exc:
                raise UnreadableDocumentError(
                    f"bad front matter ({exc})",
                    source=source,
                    media_type=MARKDOWN,
                    reason="corrupt",
                ) from exc
            if isinstance(front, dict):
                metadata = {str(k): _str(v) for k, v in front.items() if v is not None}
            text = text[match.end() :]
        text = _SETEXT.sub(
            lambda m: ("# " if m.group("rule")[0] == "=" else "## ") + m.group("title"), text
        )
        text = _tidy(_LINK.sub(r"\1", _IMAGE.sub(r"\1", _COMMENT.sub("", text))))
        title = metadata.pop("title", None)
        if title is None:
            heading = re.search(r"^#[ \t]+(.+?)[ \t#]*$", text, re.MULTILINE)
            title = heading.group(1) if heading else None
        doc = ParsedDocument(
            doc_id=source,
            text=text,
            media_type=MARKDOWN,
            source_uri=source,
            title=title,
            metadata=metadata,
        )
        return [_require_text(doc)]


class TextParser:
    def run(self, data: bytes, *, source: str) -> list[ParsedDocument]:
        text = _tidy(decode_text(data, source=source))
        doc = ParsedDocument(doc_id=source, text=text, media_type=TEXT, source_uri=source)
        return [_require_text(doc)]


# -- records: JSON, JSON Lines, CSV, TSV --------------------------------------------------------


class RecordParser:
    """One document per JSON object or CSV row.

    The text is the first of `text_fields` present (default: `TEXT_FIELD_NAMES`), or, when none
    is, every field as `key: value` lines. `title_field` gives the title and `id_field` the id
    (`<source>#<id>`; the row or array index when absent). Every other field becomes metadata,
    nested values as JSON.
    """

    def __init__(
        self,
        *,
        media_type: str,
        text_fields: Sequence[str] | None = None,
        title_field: str = "title",
        id_field: str = "id",
    ) -> None:
        self._media_type = media_type
        self._text_fields = tuple(text_fields or TEXT_FIELD_NAMES)
        self._title_field = title_field
        self._id_field = id_field

    def run(self, data: bytes, *, source: str) -> list[ParsedDocument]:
        raw = decode_text(data, source=source, media_type=self._media_type)
        records = list(self._records(raw, source))
        # One text field for the whole file: a row whose text is empty is skipped, not rendered.
        text_field = next((f for f in self._text_fields if any(f in r for r in records)), None)
        docs = [
            self._document(record, index, source, text_field)
            for index, record in enumerate(records)
        ]
        docs = [doc for doc in docs if doc.text.strip()]
        if not docs:
            raise EmptyDocumentError(
                "no records with text", source=source, media_type=self._media_type
            )
        return docs

    def _records(self, raw: str, source: str) -> Iterable[Mapping[str, Any]]:
        try:
            if self._media_type == JSON:
                loaded = json.loads(raw)
                items = loaded if isinstance(loaded, list) else [loaded]
            elif self._media_type == JSONL:
                items = [json.loads(line) for line in raw.split("\n") if line.strip()]
            else:
                items = list(self._rows(raw))
        except (json.JSONDecodeError, csv.Error) as exc:
            raise UnreadableDocumentError(
                f"malformed {self._media_type} ({exc})",
                source=source,
                media_type=self._media_type,
                reason="corrupt",
            ) from exc
        for item in items:
            yield item if isinstance(item, Mapping) else {"text": _str(item)}

    def _rows(self, raw: str) -> Iterable[Mapping[str, Any]]:
        delimiter = "\t" if self._media_type == TSV else ","
        if self._media_type == CSV:
            try:
                delimiter = csv.Sniffer().sniff(raw[:4096], delimiters=",;\t|").delimiter
            except csv.Error:
                pass  # keep the comma
        reader = csv.DictReader(io.StringIO(raw), delimiter=delimiter, strict=True)
        for row in reader:
            yield {k: v for k, v in row.items() if k is not None and v is not None}

    def _document(
        self, record: Mapping[str, Any], index: int, source: str, text_field: str | None
    ) -> ParsedDocument:
        if text_field is not None:
            value = record.get(text_field)
            text = "" if value is None else _str(value)
        else:
            text = "\n".join(f"{k}: {_str(v)}" for k, v in record.items() if v not in (None, ""))
        key = record.get(self._id_field)
        title = record.get(self._title_field)
        skip = {text_field, self._title_field}
        metadata = {
            str(k): _str(v) for k, v in record.items() if k not in skip and v not in (None, "")
        }
        return ParsedDocument(
            doc_id=f"{source}#{_str(key) if key not in (None, '') else index}",
            text=_tidy(text),
            media_type=self._media_type,
            source_uri=source,
            title=_str(title) if title not in (None, "") else None,
            metadata=metadata,
        )


# -- entry points -----------------------------------------------------------------------------


def detect_media_type(source: str, data: bytes) -> str:
    """By file suffix, else by the first bytes; plain text when nothing matches."""
    suffix = Path(source.split("?", 1)[0]).suffix.lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    head = data[:512].lstrip().lower()
    if head.startswith(b"%pdf-"):
        return PDF
    if head.startswith((b"<!doctype html", b"<html")) or b"<body" in head:
        return HTML
    if head[:1] in (b"{", b"["):
        return JSON
    return TEXT


def parser_for(
    media_type: str, *, text_fields: Sequence[str] | None = None, source: str = ""
) -> DocumentParser:
    kind = media_type.split(";", 1)[0].strip().lower()
    if kind == PDF:
        return PdfParser()
    if kind in (HTML, "application/xhtml+xml"):
        return HtmlParser()
    if kind == MARKDOWN:
        return MarkdownParser()
    if kind == TEXT:
        return TextParser()
    if kind in (JSON, JSONL, CSV, TSV):
        return RecordParser(media_type=kind, text_fields=text_fields)
    raise UnsupportedFormatError(f"no parser for {media_type}", source=source, media_type=kind)


def parse(
    data: bytes,
    *,
    source: str,
    media_type: str | None = None,
    text_fields: Sequence[str] | None = None,
) -> list[ParsedDocument]:
    """Parse one file's bytes. `source` (a path or URI) names it in ids and errors."""
    kind = media_type or detect_media_type(source, data)
    if not data.strip():
        raise EmptyDocumentError("empty file", source=source, media_type=kind)
    return parser_for(kind, text_fields=text_fields, source=source).run(data, source=source)


def parse_path(
    path: Path, *, source: str | None = None, text_fields: Sequence[str] | None = None
) -> list[ParsedDocument]:
    """Parse a file on disk; `source` defaults to the path as given."""
    name = source or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableDocumentError(str(exc), source=name, reason="io") from exc
    return parse(data, source=name, text_fields=text_fields)
