"""Each parser on real files: a PDF made here with pypdf, and HTML/Markdown/CSV/JSON/text
fixtures in tests/fixtures/documents/."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from sluicegate.connectors.document_parsers import (
    CSV,
    HTML,
    JSON,
    JSONL,
    MARKDOWN,
    PDF,
    TEXT,
    DocumentError,
    EmptyDocumentError,
    UnreadableDocumentError,
    UnsupportedFormatError,
    detect_media_type,
    parse,
    parse_path,
)
from sluicegate.errors import SluicegateError
from sluicegate.processors.chunking import RecursiveChunker, load_tokenizer

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "documents"


def make_pdf(pages: list[str], *, title: str | None = None, password: str | None = None) -> bytes:
    """A real PDF with a text layer: Helvetica text drawn line by line on each page."""
    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    font_ref = writer._add_object(font)  # pypdf has no public call for a bare indirect object
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font_ref})}
        )
        escaped = (
            line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            for line in text.split("\n")
        )
        ops = ["BT", "/F1 12 Tf", "72 720 Td", "14 TL", *(f"({e}) Tj T*" for e in escaped), "ET"]
        stream = DecodedStreamObject()
        stream.set_data("\n".join(ops).encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
    if title:
        writer.add_metadata({"/Title": title})
    if password:
        writer.encrypt(password)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def test_pdf_text_pages_and_title(tmp_path) -> None:
    path = tmp_path / "manual.pdf"
    path.write_bytes(
        make_pdf(["Chapter one (setup).\nPlug it in.", "Chapter two."], title="Manual")
    )
    [doc] = parse_path(path)
    assert doc.media_type == PDF and doc.title == "Manual"
    assert "Chapter one (setup)." in doc.text and "Chapter two." in doc.text
    assert doc.metadata["pages"] == "2"
    assert doc.page_starts[0] == 0
    assert doc.page_of(doc.text.index("Chapter two")) == 2
    assert doc.page_of(doc.text.index("Plug it in")) == 1
    assert doc.doc_id == str(path)


def test_pdf_without_text_is_empty_and_encrypted_is_unreadable() -> None:
    with pytest.raises(EmptyDocumentError):
        parse(make_pdf([""]), source="scan.pdf")
    with pytest.raises(UnreadableDocumentError) as caught:
        parse(make_pdf(["secret"], password="pw"), source="locked.pdf")
    assert caught.value.reason == "encrypted" and caught.value.media_type == PDF


def test_pdf_with_an_empty_user_password_opens() -> None:
    [doc] = parse(make_pdf(["open sesame"], password=""), source="owner-only.pdf")
    assert "open sesame" in doc.text


def test_corrupt_pdf_is_a_typed_error() -> None:
    with pytest.raises(UnreadableDocumentError) as caught:
        parse(b"%PDF-1.7\n this is not really a pdf", source="broken.pdf")
    assert caught.value.reason == "corrupt"
    assert isinstance(caught.value, DocumentError) and isinstance(caught.value, SluicegateError)


def test_html_keeps_main_text_and_headings() -> None:
    [doc] = parse_path(FIXTURES / "guide.html")
    assert doc.media_type == HTML and doc.title == "Kettle Guide"
    assert doc.metadata == {"description": "How to descale the Model K kettle", "lang": "en"}
    assert doc.text.startswith("# Descaling the Model K\n\nLimescale builds up when hard water")
    assert "## What you need\n\n- White vinegar\n- Water" in doc.text
    assert "four weeks & more often" in doc.text  # entities decoded, whitespace collapsed
    assert "Soft | 8 weeks" in doc.text
    assert "rinse --twice\n  then boil" in doc.text  # <pre> keeps its layout
    for chrome in ("tracking", "Menu item", "Home", "descaler!", "Kettle Corp", "color: red"):
        assert chrome not in doc.text


def test_html_without_main_keeps_the_body_minus_chrome() -> None:
    markup = b"<html><body><nav>menu</nav><h2>Title</h2><p>Body text.</p><footer>f</footer>"
    [doc] = parse(markup, source="page.html")
    assert doc.text == "## Title\n\nBody text."
    assert doc.title == "Title"  # no <title>: the first heading


def test_markdown_front_matter_setext_and_links() -> None:
    [doc] = parse_path(FIXTURES / "notes.md")
    assert doc.media_type == MARKDOWN and doc.title == "Release notes"
    assert doc.metadata == {"version": "2.4", "tags": '["kafka", "rag"]'}
    assert doc.text.startswith("# Overview\n")
    assert "adds hybrid retrieval and a diagram citations" in doc.text
    assert "internal" not in doc.text and "https://" not in doc.text
    assert "## Breaking changes" in doc.text


def test_plain_text_decodes_and_normalises_newlines() -> None:
    [doc] = parse_path(FIXTURES / "plain.txt")
    assert doc.media_type == TEXT and doc.title is None
    assert doc.text == "Plain notes.\n\nSecond paragraph with café."
    [latin] = parse("caf\xe9 cr\xe8me".encode("cp1252"), source="old.txt")
    assert latin.text == "café crème"


def test_binary_and_empty_input_are_refused() -> None:
    with pytest.raises(UnreadableDocumentError) as caught:
        parse(b"\x00\x01\x02binary\x00", source="blob.txt")
    assert caught.value.reason == "binary"
    with pytest.raises(EmptyDocumentError):
        parse(b"   \n", source="blank.txt")
    with pytest.raises(UnsupportedFormatError):
        parse(b"PK\x03\x04", source="sheet.xlsx", media_type="application/vnd.ms-excel")


def test_csv_rows_become_documents_with_metadata() -> None:
    docs = parse_path(FIXTURES / "faq.csv")
    assert [d.doc_id for d in docs] == [f"{FIXTURES / 'faq.csv'}#q1", f"{FIXTURES / 'faq.csv'}#q2"]
    first = docs[0]
    assert first.media_type == CSV and first.title == "Reset password"
    assert first.text == "Open Settings, choose Security, then Reset password."
    assert first.metadata == {"id": "q1", "category": "account"}


def test_csv_with_semicolons_and_no_text_column() -> None:
    docs = parse(b"name;city\nAda;London\nAlan;Wilmslow\n", source="people.csv")
    assert [d.text for d in docs] == ["name: Ada\ncity: London", "name: Alan\ncity: Wilmslow"]
    assert docs[1].doc_id == "people.csv#1"


def test_json_objects_and_json_lines() -> None:
    docs = parse_path(FIXTURES / "products.json")
    assert [d.title for d in docs] == ["Model K kettle", "Model T toaster"]
    assert docs[0].text == "A 1.7 litre kettle with a limescale filter."
    assert docs[0].metadata == {"id": "k-100", "price": "39.5", "tags": '["kitchen", "kettle"]'}
    assert docs[0].media_type == JSON
    lines = b'{"id": 1, "body": "first"}\n\n{"id": 2, "body": "second"}\n'
    docs = parse(lines, source="feed.jsonl", text_fields=["body"])
    assert [(d.doc_id, d.text, d.media_type) for d in docs] == [
        ("feed.jsonl#1", "first", JSONL),
        ("feed.jsonl#2", "second", JSONL),
    ]


def test_malformed_json_is_a_typed_error() -> None:
    with pytest.raises(UnreadableDocumentError) as caught:
        parse(b'{"text": "unterminated', source="bad.json")
    assert caught.value.reason == "corrupt"


def test_media_type_detection() -> None:
    assert detect_media_type("x.PDF", b"") == PDF
    assert detect_media_type("upload", b"%PDF-1.4") == PDF
    assert detect_media_type("upload", b"  <!DOCTYPE html><html>") == HTML
    assert detect_media_type("upload", b'{"a": 1}') == JSON
    assert detect_media_type("https://example.invalid/a.md?x=1", b"") == MARKDOWN
    assert detect_media_type("notes", b"hello") == TEXT


def test_parsed_html_chunks_by_its_headings() -> None:
    [doc] = parse_path(FIXTURES / "guide.html")
    chunks = RecursiveChunker(tokenizer=load_tokenizer(), chunk_tokens=24, min_tokens=0).run(
        doc_id=doc.doc_id, text=doc.text
    )
    sections = {c.section for c in chunks}
    assert {"Descaling the Model K > What you need", "Descaling the Model K > Steps"} <= sections
