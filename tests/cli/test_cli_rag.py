"""`sluicegate ingest` and the `rag` verbs: which files, what is published, what is refused."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydantic import ValidationError

from sluicegate.cli import parser
from sluicegate.cli_rag import Progress, _metadata, documents_of, files_of, rechunk_settings
from sluicegate.processors.ingestion import InvalidDocumentError
from sluicegate.schemas.models import DocumentSubmitted
from sluicegate.settings import KnowledgeBaseSettings, RagSettings, Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "docs" / "deep").mkdir(parents=True)
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\nInstall it.")
    (tmp_path / "docs" / "deep" / "page.html").write_text(
        "<html><body><h1>T</h1><p>Hi</p></body></html>"
    )
    (tmp_path / "docs" / "rows.csv").write_text("id,text\n1,first\n2,second\n")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "docs" / ".hidden.md").write_text("# secret")
    (tmp_path / "docs" / "empty.txt").write_text("  \n")
    return tmp_path


def test_a_directory_gives_its_files_of_known_formats(tree: Path) -> None:
    names = [p.name for p in files_of([str(tree / "docs")])]
    assert names == ["page.html", "empty.txt", "guide.md", "rows.csv"]
    assert files_of([str(tree / "docs" / "image.png")]) == [tree / "docs" / "image.png"]


def test_documents_of_parses_each_file_and_reports_the_bad_ones(tree: Path) -> None:
    files = [*files_of([str(tree / "docs")]), tree / "docs" / "image.png"]
    out = dict(
        documents_of(
            files,
            settings=Settings(rag=RagSettings()),
            knowledge_base="docs",
            tenant_id="acme",
            acl=["role:ops"],
            metadata={"team": "infra"},
            text_fields=None,
        )
    )
    guide = out[tree / "docs" / "guide.md"]
    assert isinstance(guide[0], DocumentSubmitted) and guide[0].acl == ["role:ops"]
    assert guide[0].metadata["team"] == "infra" and guide[0].tenant_id == "acme"
    assert [d.doc_id for d in out[tree / "docs" / "rows.csv"]] == [
        f"{tree / 'docs' / 'rows.csv'}#1",
        f"{tree / 'docs' / 'rows.csv'}#2",
    ]
    assert isinstance(out[tree / "docs" / "empty.txt"], Exception)
    assert isinstance(out[tree / "docs" / "image.png"], Exception)  # binary text


def test_documents_of_refuses_an_oversized_text(tree: Path) -> None:
    (tree / "big.txt").write_text("word " * 1000)
    ((_, outcome),) = documents_of(
        [tree / "big.txt"],
        settings=Settings(rag=RagSettings(max_document_bytes=1024)),
        knowledge_base="docs",
        tenant_id="acme",
        acl=[],
        metadata={},
        text_fields=None,
    )
    assert isinstance(outcome, InvalidDocumentError) and outcome.reason == "too_large"


def test_metadata_pairs() -> None:
    assert _metadata(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ValueError):
        _metadata(["nope"])


def test_the_progress_bar_is_silent_off_a_terminal() -> None:
    out = io.StringIO()
    bar = Progress(3, out=out)
    bar.update(1, "a.md")
    bar.close()
    assert out.getvalue() == ""


def test_rechunk_changes_only_the_options_given_and_validates_them() -> None:
    kb = KnowledgeBaseSettings(chunker="sliding", chunk_tokens=200, overlap_tokens=40)
    settings = Settings(rag=RagSettings(knowledge_bases={"docs": kb}))
    args = parser().parse_args(["rag", "rechunk", "--kb", "docs", "--chunk-tokens", "64"])
    chunking = rechunk_settings(settings, "docs", args)
    assert (chunking.chunker, chunking.chunk_tokens, chunking.overlap_tokens) == (
        "sliding",
        64,
        40,
    )
    unconfigured = rechunk_settings(settings, "wiki", args)  # the defaults, resized
    assert (unconfigured.chunker, unconfigured.chunk_tokens) == ("recursive", 64)
    overlapping = parser().parse_args(
        ["rag", "rechunk", "--kb", "docs", "--chunk-tokens", "32", "--overlap-tokens", "32"]
    )
    with pytest.raises(ValidationError, match="overlap_tokens"):
        rechunk_settings(settings, "docs", overlapping)


def test_the_rag_verbs_parse_beside_the_worker_and_reindex() -> None:
    reindex = parser().parse_args(["rag", "--reindex", "--kb", "docs", "--collection", "v2"])
    assert (reindex.rag_command, reindex.reindex, reindex.collection) == (None, True, "v2")
    delete = parser().parse_args(["rag", "delete", "--kb", "docs", "a.md", "rows.csv#1"])
    assert (delete.rag_command, delete.tenant, delete.doc_ids) == (
        "delete",
        "default",
        ["a.md", "rows.csv#1"],
    )
