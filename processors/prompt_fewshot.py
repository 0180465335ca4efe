"""Few-shot examples of a prompt version: which `k` examples a request gets, as user/assistant
pairs.

`select: first` takes the first `k` as published. `select: similarity` ranks the examples by the
cosine similarity of their `input` to the request's query (its last user message) with an
injected embedder (`Callable[[list[str]], numpy.ndarray]`, one row per text), and puts the most
similar example last, next to the query, where in-context examples help most. The examples'
embeddings are computed once per prompt version and embedder (a version is immutable) and kept
in a bounded LRU cache. Without an embedder, or when it fails, selection falls back to `first`
and the `Selection` says so (`note`), so a caller can see why the examples are not the nearest.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sluicegate.processors.prompt_templates import PromptInvalidError

log = logging.getLogger(__name__)

Embedder = Callable[[list[str]], np.ndarray]
SelectMethod = Literal["first", "similarity"]
MAX_EXAMPLES = 200
MAX_K = 50
DEFAULT_K = 3


@dataclass(frozen=True, slots=True)
class Example:
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class FewShotConfig:
    examples: tuple[Example, ...]
    k: int = DEFAULT_K
    select: SelectMethod = "first"

    def to_json(self) -> str:
        return json.dumps(
            {
                "examples": [{"input": e.input, "output": e.output} for e in self.examples],
                "k": self.k,
                "select": self.select,
            },
            sort_keys=True,
        )


@dataclass(frozen=True, slots=True)
class Selection:
    """The examples chosen, how, and (on a fallback) why not by similarity."""

    examples: tuple[Example, ...]
    method: SelectMethod
    note: str | None = None


def parse_few_shot(raw: Mapping[str, Any] | None) -> FewShotConfig | None:
    """`{examples: [{input, output}], k, select}` as published, checked (PromptInvalidError)."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise PromptInvalidError("`few_shot` must be an object {examples, k, select}.")
    unknown = sorted(set(raw) - {"examples", "k", "select"})
    if unknown:
        raise PromptInvalidError(f"few_shot: unknown keys {unknown}.")
    examples = raw.get("examples") or []
    if not isinstance(examples, list) or len(examples) > MAX_EXAMPLES:
        raise PromptInvalidError(f"few_shot.examples must be a list of at most {MAX_EXAMPLES}.")
    parsed: list[Example] = []
    for index, entry in enumerate(examples):
        if (
            not isinstance(entry, Mapping)
            or set(entry) != {"input", "output"}
            or not all(isinstance(entry[f], str) for f in ("input", "output"))
        ):
            raise PromptInvalidError(
                f"few_shot.examples[{index}] must be {{input: string, output: string}}."
            )
        parsed.append(Example(entry["input"], entry["output"]))
    k = raw.get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise PromptInvalidError(f"few_shot.k must be an integer from 1 to {MAX_K}.")
    select = raw.get("select", "first")
    if select not in ("first", "similarity"):
        raise PromptInvalidError("few_shot.select must be `first` or `similarity`.")
    if not parsed:
        return None
    return FewShotConfig(tuple(parsed), k, select)


def example_messages(examples: tuple[Example, ...]) -> list[dict[str, str]]:
    """Each example as a user message and the assistant's answer."""
    out: list[dict[str, str]] = []
    for example in examples:
        out.append({"role": "user", "content": example.input})
        out.append({"role": "assistant", "content": example.output})
    return out


class ExampleEmbeddings:
    """Embeddings of a version's examples, by (version key, embedder), LRU-bounded and safe to
    share between threads (the worst race embeds the same examples twice)."""

    def __init__(self, *, max_entries: int = 256) -> None:
        self._max = max_entries
        self._entries: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        value = compute()
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)


DEFAULT_CACHE = ExampleEmbeddings()


def embedder_key(embed: Embedder) -> Hashable:
    """What tells embedders apart in the cache: a bound method by its object (a new bound
    method object is made on every attribute access), anything else by itself."""
    owner = getattr(embed, "__self__", None)
    if owner is not None:
        return (id(owner), getattr(embed, "__name__", ""))
    return id(embed)


def _normalized(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def select_examples(
    config: FewShotConfig,
    query: str | None,
    *,
    embed: Embedder | None = None,
    version_key: Hashable = None,
    cache: ExampleEmbeddings | None = None,
) -> Selection:
    """The `k` examples for `query`. `version_key` names the prompt version whose examples
    these are (the cache key); without one, nothing is cached."""
    first = config.examples[: config.k]
    if config.select == "first" or len(config.examples) <= config.k:
        return Selection(first, "first")
    if embed is None:
        return Selection(first, "first", "no embedder: the first k examples were used")
    if not query:
        return Selection(first, "first", "no user message to compare: the first k were used")
    cache = cache if cache is not None else DEFAULT_CACHE
    try:
        inputs = [e.input for e in config.examples]
        if version_key is None:
            examples = _normalized(embed(inputs))
        else:
            key = (version_key, embedder_key(embed))
            examples = cache.get(key, lambda: _normalized(embed(inputs)))
        scores = examples @ _normalized(embed([query]))[0]
    except Exception as error:  # a failing embedder must not fail the request
        log.warning("few-shot: the embedder failed (%s); using the first k", error)
        return Selection(first, "first", f"the embedder failed ({error}): the first k were used")
    # Stable ranking (ties keep the published order), most similar last: nearest the query.
    ranked = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[: config.k]
    return Selection(tuple(config.examples[i] for i in reversed(ranked)), "similarity")
