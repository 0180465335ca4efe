"""Overlap resolution: the O(n log n) sweep decides exactly as the quadratic pass it replaced."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.processors import guard_pii
from sluicegate.processors.guard_pii import PiiFinding, resolve_overlaps, scan_pii

pytestmark = pytest.mark.unit

RANKED_KINDS = sorted(guard_pii._RANK)


def oracle(candidates: Iterable[PiiFinding]) -> list[PiiFinding]:
    """The implementation before the sweep (guard_pii._resolve until 2026-11), verbatim."""
    ordered = sorted(candidates, key=lambda f: (guard_pii._RANK[f.kind], f.start - f.end, f.start))
    accepted: list[PiiFinding] = []
    for cand in ordered:
        if all(cand.end <= f.start or cand.start >= f.end for f in accepted):
            accepted.append(cand)
    accepted.sort(key=lambda f: f.start)
    return accepted


@st.composite
def findings(draw: st.DrawFn, max_start: int = 80) -> PiiFinding:
    start = draw(st.integers(0, max_start))
    # Mostly real spans; some empty ones, which no scanner makes, to test the edges of "overlap".
    length = draw(st.one_of(st.integers(1, 24), st.just(0)))
    return PiiFinding(
        kind=draw(st.sampled_from(RANKED_KINDS)),
        start=start,
        end=start + length,
        value=draw(st.sampled_from(["a", "b"])),
        detail=draw(st.sampled_from(["", "v4", "v6"])),
    )


@st.composite
def candidate_lists(draw: st.DrawFn) -> list[PiiFinding]:
    found = draw(st.lists(findings(draw(st.sampled_from([10, 80, 400]))), max_size=60))
    if found and draw(st.booleans()):  # exact duplicates: ties the stable sorts must keep
        found += draw(st.lists(st.sampled_from(found), max_size=5))
    return draw(st.permutations(found))


@settings(max_examples=1500, deadline=None)
@given(candidate_lists())
def test_sweep_equals_the_quadratic_oracle(candidates: list[PiiFinding]) -> None:
    assert resolve_overlaps(candidates) == oracle(candidates)


@settings(max_examples=300, deadline=None)
@given(candidate_lists())
def test_result_is_sorted_and_never_overlaps(candidates: list[PiiFinding]) -> None:
    out = resolve_overlaps(candidates)
    assert [f.start for f in out] == sorted(f.start for f in out)
    for a, b in itertools.pairwise(out):
        assert not (a.start < b.end and b.start < a.end)


# Real candidates: fragments that overlap across kinds (a card inside an IBAN, a phone inside a
# card, an email inside a JWT-ish blob, dotted quads that also read as phones).
FRAGMENTS = [
    "jane.doe@example.com",
    "4242 4242 4242 4242",
    "4242424242424242",
    "DE89 3704 0044 0532 0130 00",
    "123-45-6789",
    "+1 555 123 4567",
    "(555) 123-4567",
    "192.168.100.200",
    "2001:db8::8a2e:370:7334",
    "06 12 34 56 78",
    "AKIA" + "IOSFODNN7EXAMPLE",
    "4111 1111 1111 1111 123",
    "020 7946 0958",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from([" ", "  ", ", ", "-", ":", "\n"])),
        min_size=1,
        max_size=40,
    )
)
def test_scanner_candidates_resolve_as_before(parts: list[tuple[str, str]]) -> None:
    text = "".join(f + sep for f, sep in parts)
    candidates = [f for kind in guard_pii.KINDS for f in guard_pii._SCANNERS[kind](text)]
    assert resolve_overlaps(candidates) == oracle(candidates)


def test_dense_prose_resolves_as_before() -> None:
    rng = random.Random(3)
    text = "".join(rng.choice(FRAGMENTS) + rng.choice([" ", ". ", ", "]) for _ in range(800))
    candidates = [f for kind in guard_pii.KINDS for f in guard_pii._SCANNERS[kind](text)]
    resolved = resolve_overlaps(candidates)
    assert len(candidates) > 700 and len(resolved) < len(candidates)  # overlaps were resolved
    assert resolved == oracle(candidates) == scan_pii(text)
