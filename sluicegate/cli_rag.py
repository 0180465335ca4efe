"""`sluicegate ingest …` and `sluicegate rag`: knowledge bases from the command line.

    sluicegate ingest docs/ handbook.pdf --kb support --acl role:support --tenant acme
    sluicegate rag                                    # the ingestion worker (chunk, embed, index)
    sluicegate rag --reindex --kb support --collection support_v2 [--from chunks]
    sluicegate rag rechunk --kb support --chunk-tokens 120 [--collection support_v3]
    sluicegate rag delete --kb support --tenant acme guide.md

`rechunk` replays sg.documents through the chunker with the knowledge base's settings changed
by the options given, into a new collection or (without `--collection`) its own, replacing
each document's chunks (serving/rag_replay.py: run_rechunk). `delete` journals a
DocumentDeleted per id, which the rag worker applies behind the document's earlier records.

`ingest` parses each file here (PDF, HTML, Markdown, text, JSON/JSONL, CSV/TSV; a directory is
walked) and publishes one DocumentSubmitted per document to sg.documents (idempotent producer,
acks=all), as an operator who can reach the broker — the tenant is named, like `sluicegate
keys`. A file that does not parse is reported with its reason and skipped; the rest go on. The
rag worker then chunks, embeds and indexes them; `POST /v1/knowledge/{kb}/documents` on the
bridge does the same for callers with a key.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from sluicegate.settings import Settings

PRODUCER = "cli"


class Progress:
    """A one-line progress bar on stderr (only on a terminal; silent in pipes and logs)."""

    def __init__(self, total: int, *, out: TextIO = sys.stderr, width: int = 30) -> None:
        self._total = max(total, 1)
        self._out = out
        self._width = width
        self._live = out.isatty()
        self._started = time.monotonic()

    def update(self, done: int, label: str) -> None:
        if not self._live:
            return
        filled = self._width * done // self._total
        rate = done / max(time.monotonic() - self._started, 1e-6)
        line = f"[{'#' * filled}{'.' * (self._width - filled)}] {done}/{self._total} files "
        line += f"{rate:.1f}/s {label}"[:60]
        self._out.write("\r" + line.ljust(100))
        self._out.flush()

    def close(self) -> None:
        if self._live:
            self._out.write("\n")
            self._out.flush()


def files_of(paths: Sequence[str]) -> list[Path]:
    """The files named, and the files of a known format under a directory named (sorted;
    hidden ones skipped)."""
    from sluicegate.connectors.document_parsers import SUFFIXES

    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            found.append(path)
            continue
        for candidate in sorted(path.rglob("*")):
            hidden = any(part.startswith(".") for part in candidate.relative_to(path).parts)
            if candidate.is_file() and not hidden and candidate.suffix.lower() in SUFFIXES:
                found.append(candidate)
    return found


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta wants key=value, got {pair!r}")
        out[key] = value
    return out


def documents_of(
    files: Sequence[Path],
    *,
    settings: Settings,
    knowledge_base: str,
    tenant_id: str,
    acl: Sequence[str],
    metadata: dict[str, str],
    text_fields: Sequence[str] | None,
) -> Iterator[tuple[Path, list[Any] | Exception]]:
    """Per file: its DocumentSubmitted events, or the error that refused it."""
    from sluicegate.connectors.document_parsers import DocumentError, parse_path
    from sluicegate.processors.ingestion import InvalidDocumentError, submitted

    for path in files:
        try:
            parsed = parse_path(path, text_fields=text_fields)
            events = [
                submitted(
                    doc,
                    knowledge_base=knowledge_base,
                    tenant_id=tenant_id,
                    producer=PRODUCER,
                    acl=acl,
                    metadata=metadata,
                    max_bytes=settings.rag.max_document_bytes,
                )
                for doc in parsed
            ]
        except (DocumentError, InvalidDocumentError) as error:
            yield path, error
            continue
        yield path, events


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from confluent_kafka import Producer

    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.processors.ingestion import InvalidDocumentError, check_acl
    from sluicegate.streams.topics import ensure_topics

    try:
        metadata = _metadata(args.meta or [])
        check_acl(args.tenant, args.acl or [])
    except (ValueError, InvalidDocumentError) as error:
        print(f"ingest: {error}", file=sys.stderr)
        return 2
    files = files_of(args.paths)
    if not files:
        print("ingest: no files", file=sys.stderr)
        return 2
    ensure_topics(settings)
    serde = build_serde(settings)
    producer = Producer(
        {
            **settings.kafka.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
        }
    )
    undelivered: list[str] = []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            undelivered.append(f"{message.key()!r}: {error}")

    topic = settings.topic("documents")
    progress = Progress(len(files))
    sent = chars = 0
    refused: list[dict[str, str]] = []
    started = time.monotonic()
    for done, (path, outcome) in enumerate(
        documents_of(
            files,
            settings=settings,
            knowledge_base=args.kb,
            tenant_id=args.tenant,
            acl=args.acl or [],
            metadata=metadata,
            text_fields=args.text_field,
        ),
        1,
    ):
        if isinstance(outcome, Exception):
            refused.append({"file": str(path), "error": str(outcome)})
            progress.close()
            print(f"ingest: skipped {path}: {outcome}", file=sys.stderr)
        else:
            for event in outcome:
                producer.produce(
                    topic,
                    key=event.doc_id.encode(),
                    value=serde.encode(event),
                    on_delivery=delivered,
                )
                producer.poll(0)
                sent += 1
                chars += len(event.text)
        progress.update(done, path.name)
    progress.close()
    left = producer.flush(60)
    summary = {
        "knowledge_base": args.kb,
        "tenant": args.tenant,
        "topic": topic,
        "files": len(files),
        "documents": sent - len(undelivered) - left,
        "characters": chars,
        "refused": refused,
        "undelivered": undelivered[:20] + ([f"{left} not acknowledged"] if left else []),
        "seconds": round(time.monotonic() - started, 2),
    }
    print(json.dumps(summary))
    return 0 if not (refused or undelivered or left) else 1


CHUNK_OPTIONS = (
    "chunker",
    "chunk_tokens",
    "overlap_tokens",
    "min_chunk_tokens",
    "parent_tokens",
    "breakpoint_percentile",
)


def rechunk_settings(settings: Settings, knowledge_base: str, args: argparse.Namespace) -> Any:
    """The knowledge base's settings (or the defaults) with the chunker options given; the
    settings' own validation applies (ValidationError)."""
    from sluicegate.settings import KnowledgeBaseSettings

    current = settings.rag.knowledge_bases.get(knowledge_base) or KnowledgeBaseSettings()
    changes = {n: getattr(args, n) for n in CHUNK_OPTIONS if getattr(args, n) is not None}
    return KnowledgeBaseSettings.model_validate({**current.model_dump(), **changes})


def cmd_rechunk(settings: Settings, args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.connectors.vector_store import VectorStoreError, check_collection_name
    from sluicegate.serving.rag_replay import run_rechunk
    from sluicegate.streams.topics import ensure_topics

    try:
        chunking = rechunk_settings(settings, args.kb, args)
        if args.collection:
            check_collection_name(args.collection)
    except (ValidationError, VectorStoreError) as error:
        print(f"rag rechunk: {error}", file=sys.stderr)
        return 2
    ensure_topics(settings)
    report = run_rechunk(
        settings,
        build_serde(settings),
        knowledge_base=args.kb,
        chunking=chunking,
        collection=args.collection,
        progress=_progress,
    )
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    configure = {n: getattr(chunking, n) for n in CHUNK_OPTIONS}
    configure["collection"] = report.collection
    print(json.dumps({**vars(report), f"rag.knowledge_bases.{args.kb}": configure}))
    return 0


def cmd_delete(settings: Settings, args: argparse.Namespace) -> int:
    from sluicegate.cli_kafka import publish_events
    from sluicegate.errors import BrokerError
    from sluicegate.processors.ingestion import InvalidDocumentError, deleted
    from sluicegate.streams.topics import ensure_topics

    try:
        events = [
            deleted(
                knowledge_base=args.kb,
                tenant_id=args.tenant,
                doc_id=doc_id,
                producer=PRODUCER,
                requested_by=PRODUCER,
            )
            for doc_id in args.doc_ids
        ]
    except InvalidDocumentError as error:
        print(f"rag delete: {error}", file=sys.stderr)
        return 2
    ensure_topics(settings)
    try:
        publish_events(settings, "documents", [(e.doc_id, e) for e in events])
    except BrokerError as error:
        print(f"rag delete: {error}", file=sys.stderr)
        return 1
    summary = {
        "knowledge_base": args.kb,
        "tenant": args.tenant,
        "topic": settings.topic("documents"),
        "deleted": [e.doc_id for e in events],
        "status": "submitted",
    }
    print(json.dumps(summary))
    return 0


def _progress(report: Any) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{report.records} records, {report.documents} documents")
        sys.stderr.flush()


def cmd_rag(settings: Settings, args: argparse.Namespace) -> int:
    if args.rag_command == "rechunk":
        return cmd_rechunk(settings, args)
    if args.rag_command == "delete":
        return cmd_delete(settings, args)
    if not args.reindex:
        from sluicegate.serving.rag_worker import run_rag

        run_rag(settings)
        return 0
    if not args.kb or not args.collection:
        print("rag --reindex needs --kb and --collection", file=sys.stderr)
        return 2
    from sluicegate.connectors.schema_registry import build_serde
    from sluicegate.connectors.vector_store import VectorStoreError, check_collection_name
    from sluicegate.serving.rag_replay import run_reindex
    from sluicegate.streams.topics import ensure_topics

    try:
        check_collection_name(args.collection)
    except VectorStoreError as error:
        print(f"rag: {error}", file=sys.stderr)
        return 2
    ensure_topics(settings)
    report = run_reindex(
        settings,
        build_serde(settings),
        knowledge_base=args.kb,
        collection=args.collection,
        source=args.source,
        run_id=args.run_id,
        progress=_progress,
    )
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(json.dumps(vars(report)))
    return 0


def add_parsers(sub: Any) -> dict[str, Callable[[Settings, argparse.Namespace], int]]:
    ingest = sub.add_parser("ingest", help="parse files and submit them to a knowledge base")
    ingest.add_argument("paths", nargs="+", help="files or directories")
    ingest.add_argument("--kb", required=True, help="knowledge base")
    ingest.add_argument(
        "--acl",
        action="append",
        help="who may read: tenant:<id>, role:<name>, group:<name>, user:<key id> (repeat); "
        "none: everyone in the tenant",
    )
    ingest.add_argument("--tenant", default="default", help="owning tenant")
    ingest.add_argument("--meta", action="append", help="key=value metadata on every document")
    ingest.add_argument(
        "--text-field", action="append", help="JSON/CSV: the field(s) holding the text"
    )
    rag = sub.add_parser("rag", help="run the RAG ingestion worker, or re-index by replay")
    rag.add_argument("--reindex", action="store_true", help="replay one KB into a collection")
    rag.add_argument("--kb", help="knowledge base to re-index")
    rag.add_argument("--collection", help="the new collection")
    rag.add_argument(
        "--from",
        dest="source",
        choices=("embeddings", "chunks"),
        default="embeddings",
        help="embeddings: the vectors as they are; chunks: embed again (a new model)",
    )
    rag.add_argument("--run-id", help="with --from embeddings: the vectors of this re-embed run")
    verbs = rag.add_subparsers(dest="rag_command", metavar="{rechunk,delete}")
    rechunk = verbs.add_parser(
        "rechunk", help="replay sg.documents of one KB through the chunker with new settings"
    )
    rechunk.add_argument("--kb", required=True, help="knowledge base to re-chunk")
    rechunk.add_argument("--chunker", choices=("recursive", "sliding", "semantic", "hierarchical"))
    for option, kind, what in (
        ("--chunk-tokens", int, "largest chunk (the child under hierarchical)"),
        ("--overlap-tokens", int, "window overlap (sliding)"),
        ("--min-chunk-tokens", int, "smaller chunks join a neighbour"),
        ("--parent-tokens", int, "parent size (hierarchical)"),
        ("--breakpoint-percentile", float, "distance percentile that breaks (semantic)"),
    ):
        rechunk.add_argument(option, type=kind, help=what)
    rechunk.add_argument(
        "--collection", help="a new collection (default: the KB's own, replacing its chunks)"
    )
    delete = verbs.add_parser("delete", help="remove documents from a knowledge base")
    delete.add_argument("--kb", required=True, help="knowledge base")
    delete.add_argument("--tenant", default="default", help="owning tenant")
    delete.add_argument("doc_ids", nargs="+", metavar="DOCUMENT_ID", help="document id(s)")
    return {"ingest": cmd_ingest, "rag": cmd_rag}
