"""Banned topics: keyword, phrase and regex scoring on normalized text, with the terms that matched.

A tenant lists topics its answers must not be about (:class:`~sluicegate.settings.BannedTopic`):
each has keywords or phrases, optional regexes, and a threshold. Matching, each choice for a
reason:

* **Normalized text.** The text goes through the injection scorer's :func:`normalize` (NFKC,
  format characters dropped, accents and common homoglyphs folded, lowercase, blanks collapsed),
  so an accented, full-width or Cyrillic-lookalike spelling of a word matches the plain
  keyword. Keywords are normalized the same way when the matcher is built.
* **Whole words.** A keyword matches only between non-word characters: "rapist" never fires on
  "therapist", "ass" never on "class". A trailing ``*`` opts into longer words ("bomb*": bombs,
  bomber). Inside a phrase, any run of spaces, hyphens or underscores matches the phrase's
  space ("pipe bomb" = "pipe-bomb" = "pipe   bomb").
* **One pass for every keyword.** All keywords of the topics that apply to a tenant compile into
  one trie-shaped regex (common prefixes shared, a first-character lookahead in front), so the
  scan is one C-level ``finditer`` whatever the number of keywords; the matched words map back
  to their topics through a dictionary.
* **Score and threshold.** Each *distinct* term that matches adds its weight (1 for list-form
  keywords and patterns); repeats add nothing, so one word said ten times is still one signal.
  A topic fires when its score reaches its threshold (1 by default: any term). A ``threshold: 2``
  with weak, ambiguous keywords ("gun", "shoot", "ammo") asks for two of them together.
* **Explained.** A :class:`TopicMatch` names the topic, its score and threshold, and the terms
  (canonical keywords, or the pattern's source) that matched.

Patterns (regexes) run with ``re.IGNORECASE`` on the same normalized text, one ``search`` each;
they are the tenant's own code, so a pattern that backtracks badly is the tenant's cost. A
pattern that opens with a literal ("how to (?:make|build)") is found by a fast substring
search; one that opens with ``\b`` is tried at every position (about 13 us per KB each).

No model is downloaded or needed. A semantic classifier (the cache's embedder, comparing answer
sentences with a few example sentences per topic) could catch paraphrases keywords miss; see
docs/guardrails.md for why it is not the default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sluicegate.processors.guard_injection import normalize
from sluicegate.settings import BannedTopic

__all__ = ["TopicMatch", "TopicMatcher", "canonical_keyword"]

_SEPARATORS = re.compile(r"[\s\-_]+")
_EXACT, _WILD = 0, 1  # end-of-term markers in the trie (string keys are characters)
_MAX_KEYWORD = 200


@dataclass(frozen=True, slots=True)
class TopicMatch:
    """A topic that fired: its score reached its threshold through ``terms``."""

    name: str
    score: float
    threshold: float
    terms: tuple[str, ...]

    def explain(self) -> str:
        return f"{self.name} ({self.score:g}>={self.threshold:g}: {', '.join(self.terms)})"


def canonical_keyword(keyword: str) -> str:
    """The form a keyword is matched in: normalized, separators as one space, ``*`` kept."""
    wild = keyword.rstrip().endswith("*")
    core = _SEPARATORS.sub(" ", normalize(keyword.rstrip().rstrip("*"))).strip()
    if not core:
        raise ValueError(f"empty keyword: {keyword!r}")
    if len(core) > _MAX_KEYWORD:
        raise ValueError(f"keyword longer than {_MAX_KEYWORD} characters: {keyword[:40]!r}...")
    return core + "*" if wild else core


def _weighted(terms: list[str] | dict[str, float]) -> dict[str, float]:
    return dict(terms) if isinstance(terms, dict) else dict.fromkeys(terms, 1.0)


@dataclass(frozen=True, slots=True)
class _Topic:
    name: str
    threshold: float
    patterns: tuple[tuple[str, float, re.Pattern[str]], ...]


class _Compiled:
    """The keyword regex and pattern list for one set of topics."""

    def __init__(self, topics: Sequence[BannedTopic]) -> None:
        self.topics = tuple(
            _Topic(
                t.name,
                t.threshold,
                tuple(
                    (source, weight, re.compile(source, re.IGNORECASE))
                    for source, weight in _weighted(t.patterns).items()
                ),
            )
            for t in topics
        )
        # canonical term -> [(topic name, weight)]; wildcard terms keyed without their "*".
        self.exact: dict[str, list[tuple[str, float]]] = {}
        self.wild: dict[str, list[tuple[str, float]]] = {}
        for topic in topics:
            for keyword, weight in _weighted(topic.keywords).items():
                term = canonical_keyword(keyword)
                table = self.wild if term.endswith("*") else self.exact
                table.setdefault(term.rstrip("*"), []).append((topic.name, weight))
        self.keywords = _trie_regex(self.exact, self.wild)

    def scores(self, text: str) -> dict[str, dict[str, float]]:
        """topic name -> {matched term: weight}."""
        # ASCII needs no folding, and the keyword regex absorbs separator runs itself: lower()
        # gives the same matches as normalize() at a fifth of the cost.
        norm = text.lower() if text.isascii() else normalize(text)
        hits: dict[str, dict[str, float]] = {}
        if self.keywords is not None:
            for m in self.keywords.finditer(norm):
                word = _SEPARATORS.sub(" ", m.group(0))
                for name, weight, term in self._terms(word):
                    hits.setdefault(name, {})[term] = weight
        for topic in self.topics:
            for source, weight, pattern in topic.patterns:
                if pattern.search(norm):
                    hits.setdefault(topic.name, {})[f"/{source}/"] = weight
        return hits

    def _terms(self, word: str) -> Iterable[tuple[str, float, str]]:
        for name, weight in self.exact.get(word, ()):
            yield name, weight, word
        for end in range(len(word), 0, -1):
            for name, weight in self.wild.get(word[:end], ()):
                yield name, weight, word[:end] + "*"


def _trie_regex(*tables: dict[str, list[tuple[str, float]]]) -> re.Pattern[str] | None:
    """One regex for all terms: a character trie, word-bounded, exact or open-ended at the end."""
    trie: dict[str | int, dict] = {}
    for marker, table in enumerate(tables):
        for term in table:
            node = trie
            for ch in term:
                node = node.setdefault(ch, {})
            node[marker] = {}
    if not trie:
        return None
    first = "".join(sorted(re.escape(ch) for ch in trie if isinstance(ch, str) and ch != " "))
    return re.compile(rf"(?=[{first}])(?<!\w)" + _emit(trie))


def _emit(node: dict[str | int, dict]) -> str:
    chars = sorted(k for k in node if isinstance(k, str))
    alternatives = [_atom(ch) + _emit(node[ch]) for ch in chars]
    # Longer terms first (greedy); the regex backtracks to a shorter term that ends here.
    if _WILD in node:
        alternatives.append(r"\w*")
    elif _EXACT in node:
        alternatives.append(r"(?!\w)")
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _atom(ch: str) -> str:
    return r"[\s\-_]+" if ch == " " else re.escape(ch)


class TopicMatcher:
    """Finds the banned topics a text is about, per tenant (topics may be tenant-scoped)."""

    def __init__(self, topics: Sequence[BannedTopic]) -> None:
        names = [t.name for t in topics]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"topic names must be unique: {', '.join(duplicates)}")
        self._by_name = {t.name: t for t in topics}
        shared = [t for t in topics if t.tenants is None]
        self._shared = _Compiled(shared)
        tenants = {tenant for t in topics for tenant in t.tenants or ()}
        self._per_tenant = {
            tenant: _Compiled([t for t in topics if t.tenants is None or tenant in t.tenants])
            for tenant in tenants
        }

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._by_name)

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def match(self, text: str, *, tenant: str | None = None) -> tuple[TopicMatch, ...]:
        """The topics that fire on ``text`` for ``tenant``, sorted by name."""
        if not text or not self._by_name:
            return ()
        compiled = self._per_tenant.get(tenant, self._shared) if tenant else self._shared
        found = []
        for name, terms in sorted(compiled.scores(text).items()):
            topic = self._by_name[name]
            score = round(sum(terms.values()), 6)
            if score >= topic.threshold:
                found.append(TopicMatch(name, score, topic.threshold, tuple(sorted(terms))))
        return tuple(found)
