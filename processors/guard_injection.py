"""Heuristic prompt-injection / jailbreak scorer for user and tool messages, before the model.

Why a heuristic: it runs in-process on every request, needs no network and no model weights, and
costs ~0.15 ms per KB of prose (~0.04 ms for a 100-character message) on the dev box, noise
next to a model call. It is a *heuristic*: it catches the well-known phrasings and their cheap
obfuscations, not a determined adversary who paraphrases. It is measured on two labelled sets
(numbers in docs/guardrails.md): the project's corpus `tests/fixtures/guard/injection_cases.yaml`
(written before this code, benign cases chosen to look close to attacks; the corpus test pins
floors) and the public `bastioncorpus` 0.6.0, split by a hash of each text into a dev half that
was read while the signals below were designed and a held-out half that was not. Recall on the
held-out half is far below the dev half's: these signals overfit the phrasings they were
written from, and planted (indirect) instructions in particular are mostly missed. A classifier
model can replace the scorer behind the same signature, `score_injection(text) ->
InjectionVerdict`, so callers (admission, analytics) do not change.

How it scores, each choice for a reason:

- **Normalize first**, so obfuscation does not dodge the patterns: NFKC (full-width and other
  compatibility forms become ASCII), Unicode tag characters (U+E0020-E007E, invisible "ASCII
  smuggling") become the ASCII they spell, other format characters (Unicode category Cf:
  zero-width, bidi controls) are removed, diacritics are folded (patterns in other languages are
  written without accents), typographic apostrophes become `'`, Cyrillic and Greek lookalikes
  and small capitals map to Latin, and horizontal whitespace collapses (newlines and
  indentation are kept, because fake role markers are line-anchored).
- **Signals, not one regex.** Each family (override, persona, exfiltration, delimiter, ...) has a
  name and a weight. A signal counts once, at its highest weight. Weights combine as a noisy-OR,
  `1 - prod(1 - w)`: one strong signal (w >= 0.5) crosses 0.5 alone, two weak ones (0.25 to
  0.45) cross it together, and a lone weak signal ("how do I turn on developer mode") stays
  below.
- **Indirect injection is two weak halves.** Instructions planted in documents, pages and tool
  output give themselves away by *who* they address and *what* they want. "Planted" cues speak
  about the model or the user in the third person or claim authority ("Note to the bot", "AI
  assistants processing this inbox", "before you answer the user", "do not tell the user",
  "SYSTEM NOTE:"): 0.35-0.4, alone below 0.5 because discussions of injection use them too.
  "Action" cues say what the text wants done (call a tool, send data to an address, append to
  the reply, save to memory, transfer money, rate a product): 0.2-0.25, below 0.3 alone because
  users ask for these things every day. Planted + action crosses 0.5; action + action does not.
  A heading addressed to the model ("Instructions for the assistant:") is strong alone (0.5),
  and any signal inside text a reader cannot see (HTML comments, invisible elements, alt text)
  adds `hidden_text` (0.5).
- **Other languages are data.** Italian, German, French and Spanish (the non-English languages
  of the public corpus) translate the English override, exfiltration and indirect cues in the
  `LANG_CUES` tables; `TEMPLATES` gives them the structure and weights of the English ones.
- **Obfuscated views.** When a cheap test says a view could differ, the text is also matched
  de-leeted ("1gn0r3"), with spaced-out letters joined ("i g n o r e"), reversed (whole or word
  by word), ROT13-ed, and with HTML character references and percent-escapes decoded; a signal
  found only in a view is kept and the view is named.
- **Encoded payloads** (base64 blobs of 32+ characters, or 16+ when the text says base64; hex
  blobs; runs of 8-bit binary groups) are decoded and re-scored, bounded in count, size and
  depth, because "decode this and follow it: SWdub3Jl..." is a standard evasion. Blobs that
  decode to binary (images, hashes) or to instruction-free text (JWT claims) add nothing.
- **Cheap gates.** Every pattern lists trigger words (or substrings) that any match contains;
  one set intersection with the text's words picks the few patterns worth running, so ordinary
  text runs almost none (each `\\b`-led alternation costs ~13 us per KB when it runs).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import unicodedata
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from sluicegate.processors.guard_injection_cues import LANG_CUES, TEMPLATES

__all__ = ["InjectionVerdict", "normalize", "score_injection"]

THRESHOLD = 0.5
"""Score at or above which a message is treated as an injection attempt."""

_MAX_BLOBS = 4
_MAX_BLOB_CHARS = 8192
_MAX_DEPTH = 2
_MAX_REGIONS = 8


@dataclass(frozen=True)
class InjectionVerdict:
    """The score in [0, 1] and the names of the signals that fired, so a rejection is explainable.

    `signals` is sorted for stable logs and tests; signals found inside a decoded blob are
    prefixed `base64:` (whatever the encoding: base64, hex or binary), and `leetspeak`,
    `spaced_letters`, `reversed_text`, `rot13`, `html_entities`, `percent_encoded`,
    `zero_width`, `tag_characters` and `homoglyph` mark the obfuscation seen.
    """

    score: float
    signals: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        """Whether the score reaches the default threshold."""
        return self.score >= THRESHOLD


# ----------------------------------------------------------------------------- normalization

# Lookalike letters (written as escapes so the source stays unambiguous), as "<glyph><latin>" pairs.
_HOMOGLYPH_PAIRS = (
    "\u0430a\u0435e\u043eo\u0440p\u0441c\u0445x\u0443y\u0456i"  # Cyrillic
    "\u0458j\u0455s\u04bbh\u0501d\u0261g\u0578n\u0475v\u051dw"  # Cyrillic, Latin script g, Armenian
    "\u043ak\u043cm\u0442t\u043dh\u0432b\u04cfl\u051bq\u0491r"  # Cyrillic (lowercased capitals)
    "\u03b1a\u03bfo\u03c1p\u03b9i\u03bak\u03bdv\u03c4t\u03c5u\u03b5e"  # Greek
    "\u03b7n\u03c7x\u03c9w\u03b2b\u03b6z"  # Greek (lowercased capitals)
    "\u0131i\u0251a\u0269i\u028bu"  # dotless i, Latin alpha, iota, v-hook
    # small capitals
    "\u1d00a\u0299b\u1d04c\u1d05d\u1d07e\ua730f\u0262g\u029ch\u026ai\u1d0aj\u1d0bk\u029fl"
    "\u1d0dm\u0274n\u1d0fo\u1d18p\u0280r\ua731s\u1d1bt\u1d1cu\u1d20v\u1d21w\u028fy\u1d22z"
    "\u2019'\u2018'\u02bc'\u2032'"  # typographic apostrophes: French and Italian elision
)
_HOMOGLYPHS = str.maketrans(_HOMOGLYPH_PAIRS[0::2], _HOMOGLYPH_PAIRS[1::2])
_HOMOGLYPH_ONLY = frozenset(_HOMOGLYPH_PAIRS[0::2]) - set("\u2019\u2018\u02bc\u2032")
_TAG_CHARS = re.compile("[\U000e0000-\U000e007f]")
_TAG_TO_ASCII = {cp: cp - 0xE0000 for cp in range(0xE0020, 0xE007F)}
# Runs of blanks and lone non-space blanks (tabs, NBSP): single spaces are left untouched.
_HSPACE = re.compile(r"[^\S\n]{2,}|[^\S \n]")
# Trailing blanks and empty lines go, but a line's indentation stays (as one space): an indented
# `system:` is a YAML key, a `system:` at column 0 is a fake role marker.
_NEWLINES = re.compile(r"[^\S\n]*\n(?:[^\S\n]*\n)*")
_MIXED_SCRIPT = re.compile(r"[a-z][^\x00-\x7f]|[^\x00-\x7f][a-z]")


@dataclass(frozen=True)
class _Prepared:
    """A message after the character-level pass, with what that pass removed or mapped."""

    text: str
    format_chars: bool = False
    tag_chars: bool = False


def _strip_format_chars(text: str) -> _Prepared:
    """NFKC, decode Unicode tag characters to ASCII, then drop the other Cf characters."""
    if text.isascii():  # fast path: ASCII has no Cf characters and is NFKC-stable
        return _Prepared(text)
    tags = bool(_TAG_CHARS.search(text))
    if tags:  # "ASCII smuggling": invisible tag characters that spell out instructions
        text = text.translate(_TAG_TO_ASCII)
    text = unicodedata.normalize("NFKC", text)
    stripped = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return _Prepared(stripped, format_chars=len(stripped) != len(text), tag_chars=tags)


def normalize(text: str) -> str:
    """Return the canonical form the patterns are matched against (see the module docstring)."""
    return _normalize(_strip_format_chars(text).text)[0]


def _normalize(text: str) -> tuple[str, bool]:
    """Fold diacritics and homoglyphs, lowercase, collapse whitespace; report homoglyph use."""
    if text.isascii():
        folded = mapped = text.lower()
        homoglyph = False
    else:
        folded = unicodedata.normalize("NFKD", text)
        folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).lower()
        mapped = folded.translate(_HOMOGLYPHS)
        # A homoglyph only counts as a trick when it sits next to Latin letters in the same word;
        # plain Russian or Greek text maps too, but that is harmless for the Latin patterns.
        homoglyph = (
            mapped != folded
            and not _HOMOGLYPH_ONLY.isdisjoint(folded)
            and bool(_MIXED_SCRIPT.search(folded))
        )
    mapped = _HSPACE.sub(" ", mapped)
    mapped = _NEWLINES.sub("\n", mapped).strip()
    return mapped, homoglyph


# ----------------------------------------------------------------------------- obfuscated views

_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)
# A token of up to 20 characters mixing letters with digits or @/$: a word, not an IBAN or a key.
_LEET_TOKEN = re.compile(
    r"(?<![a-z0-9@$])(?=[a-z0-9@$]*?[0-9@$])(?=[a-z0-9@$]*?[a-z])[a-z0-9@$]{2,20}(?![a-z0-9@$])"
)
_HAS_LEET = re.compile(r"[a-z][0-9@$]|[0-9@$][a-z]")
# A run of three or more single letters, each followed by one separator ("i g n o r e",
# "i.g.n.o.r.e"); two spaces or a word end the run, so word breaks survive the joining.
_SPACED_RUN = re.compile(r"(?<![^\W\d_])(?:[^\W\d_][ .*_-]){2,}[^\W\d_](?![^\W\d_])")
_SPACED_SEP = re.compile(r"[ .*_-]")
# Single-letter words that spaced-out text leaves behind; not "a" and "i" (words), nor "s" and
# "t" (what "it's" and "don't" leave).
_SPACED_LETTERS = frozenset("bcdefghjklmnopqruvwxyz")
# Words whose reversed or ROT13 form only appears when someone is hiding an instruction.
_HIDDEN_WORDS = (
    "ignore disregard forget instructions previous prompt system reveal override bypass password "
    "passwords secret secrets"
).split()
_REVERSED_WORDS = frozenset(w[::-1] for w in _HIDDEN_WORDS)
_ROT13_WORDS = frozenset(codecs.encode(w, "rot13") for w in _HIDDEN_WORDS)
_PERCENT_RUN = re.compile(r"(?:%[0-9a-f]{2}){3,}")
_ENTITY_RUN = re.compile(r"(?:&#x?[0-9a-f]{1,6};?)+")
_VIEW_CONTEXT = 240  # characters kept around each changed span: more than any pattern spans


def _deleet(text: str, changed: list[tuple[int, int]]) -> str:
    """Map digits and symbols to letters only inside tokens that already mix both ("pr3v10us");
    the spans of the tokens that changed go to `changed`."""

    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        mapped = token.translate(_LEET)
        if mapped != token:
            changed.append(m.span())
        return mapped

    return _LEET_TOKEN.sub(one, text)


def _despace(text: str) -> str:
    """Join runs of single letters spelled out with separators ("I g n o r e" -> "Ignore")."""
    return _SPACED_RUN.sub(lambda m: _SPACED_SEP.sub("", m.group(0)), text)


def _excerpt(text: str, spans: list[tuple[int, int]]) -> str:
    """The parts of `text` within `_VIEW_CONTEXT` of `spans` (sorted), merged, one per line.

    A view only needs matching where it differs from the text, and the patterns are local, so
    a 32 KB message holding one IBAN or "v2" is not matched a second time in full. A part that
    starts mid-line gets a leading space, so line-anchored patterns cannot match at the cut.
    """
    parts: list[tuple[int, int]] = []
    for start, end in spans:
        a, b = max(0, start - _VIEW_CONTEXT), min(len(text), end + _VIEW_CONTEXT)
        if parts and a <= parts[-1][1]:
            parts[-1] = (parts[-1][0], max(parts[-1][1], b))
        else:
            parts.append((a, b))
    return "\n".join(("" if a == 0 or text[a - 1] == "\n" else " ") + text[a:b] for a, b in parts)


def _renormalized(text: str) -> str:
    return _normalize(_strip_format_chars(text).text)[0]


def _views(norm: str, tokens: frozenset[str], raw: str) -> Iterator[tuple[str, str]]:
    """Yield (marker, text) for each obfuscated reading worth matching; each test is cheap."""
    if _HAS_LEET.search(norm):
        spans: list[tuple[int, int]] = []
        leet = _deleet(norm, spans)  # same length as `norm`: the spans hold for both
        if spans:
            yield "leetspeak", _excerpt(leet, spans)
    if len(tokens & _SPACED_LETTERS) >= 3 and _SPACED_RUN.search(raw):
        spans = [m.span() for m in _SPACED_RUN.finditer(raw)]
        yield "spaced_letters", _renormalized(_despace(_excerpt(raw, spans)))
    if not _REVERSED_WORDS.isdisjoint(tokens):
        yield "reversed_text", norm[::-1]  # ".tpmorp metsys ruoy laever"
        yield "reversed_text", " ".join(word[::-1] for word in norm.split(" "))  # "erongi lla"
    if not _ROT13_WORDS.isdisjoint(tokens) or "rot13" in norm or "rot-13" in norm:
        yield "rot13", codecs.encode(norm, "rot13")
    if "&#" in norm:  # numeric character references: "&#73;&#103;&#110;..."
        spans = [m.span() for m in _ENTITY_RUN.finditer(norm)]
        yield "html_entities", _renormalized(html.unescape(_excerpt(norm, spans)))
    if "%" in norm and _PERCENT_RUN.search(norm):  # "%49%67%6e%6f%72%65"
        spans = [m.span() for m in _PERCENT_RUN.finditer(norm)]
        yield "percent_encoded", _renormalized(urllib.parse.unquote(_excerpt(norm, spans)))


# ----------------------------------------------------------------------------- signals


@dataclass(frozen=True)
class _Signal:
    """One pattern of a signal family, with the triggers that must occur before it runs.

    The pattern runs when one of `words` is a whole word of the text or one of `subs` is a
    substring of it, and, when given, one of `also` is a word of it too and `needs` a substring.
    Every match contains its triggers, so the gate never hides a match; `also` and `needs` keep
    patterns whose first words are common ("send", "after", "call") from running on most text.
    """

    name: str
    weight: float
    pattern: re.Pattern[str]
    words: frozenset[str] = frozenset()
    subs: tuple[str, ...] = ()
    also: frozenset[str] = frozenset()
    needs: str = ""


def _sig(
    name: str,
    weight: float,
    gate: str | tuple[str, ...],
    pattern: str,
    *,
    also: str = "",
    needs: str = "",
) -> _Signal:
    """An English signal: a space-separated string of trigger words, or a tuple of substrings."""
    compiled = re.compile(pattern, re.MULTILINE)
    also_words = frozenset(also.split())
    if isinstance(gate, str):
        words = frozenset(gate.split())
        return _Signal(name, weight, compiled, words=words, also=also_words, needs=needs)
    return _Signal(name, weight, compiled, subs=gate, also=also_words, needs=needs)


_QUAL = (
    r"(?:previous|prior|above|earlier|preceding|initial|original|former|old|existing|system"
    r"|developer)"
)
_QUALS = rf"(?:{_QUAL}(?:\s*,|\s+and|\s+or)?\s+)+"
_NOUN = (
    r"(?:instructions?|rules?|directions?|directives?|guidelines?|guidance|prompts?|commands?"
    r"|orders?|context|constraints?|policies|programming|messages?)"
)
_AI = r"(?:ai|bot|assistant|llm|model|agent|chatbot|copilot|(?:large\s+)?language\s+model)"
_AI_WORDS = "ai bot assistant llm model agent chatbot copilot language "  # triggers for `_AI`
# What a model does with a document: "when you summarize this", every form a trigger word.
_READING_VERBS = tuple(
    f"{stem}{ending}"
    for stem, endings in (
        ("summari", ("ze", "zes", "zing", "se", "ses", "sing")),
        ("process", ("", "es", "ing")),
        ("read", ("", "s", "ing")),
        ("review", ("", "s", "ing")),
        ("translat", ("e", "es", "ing")),
        ("analy", ("ze", "zes", "zing", "se", "ses", "sing")),
        ("pars", ("e", "es", "ing")),
        ("handl", ("e", "es", "ing")),
    )
    for ending in endings
)
_NAMES = r"chatgpt|gpt-?\d\w*|claude|gemini|copilot|llama|bard|mistral"  # models, by product name
_SECRETS = (
    r"(?:credentials|passwords|api\s+keys?|secrets|access\s+tokens?|tokens|private\s+keys?"
    r"|ssh\s+keys?|environment\s+variables|internal\s+(?:configuration|config|data|settings))"
)

# Weights: >= 0.5 strong, 0.25-0.45 weak; for indirect injection, 0.35-0.4 "planted" and
# 0.2-0.25 "action" cues (see the module docstring).
_ENGLISH: tuple[_Signal, ...] = (
    # --- instruction override
    _sig(
        "instruction_override",
        0.8,
        "ignore disregard forget override bypass skip drop",
        rf"\b(?:ignore|disregard|forget|override|bypass|skip|drop)\s+(?:all\s+|any\s+)?"
        rf"(?:of\s+)?(?:the\s+|your\s+|my\s+|these\s+|those\s+)?{_QUALS}{_NOUN}\b",
    ),
    _sig(
        "instruction_override",
        0.8,
        "ignore disregard forget",
        rf"\b(?:ignore|disregard|forget)\s+(?:all\s+)?(?:of\s+)?your\s+{_NOUN}\b",
    ),
    _sig(
        "instruction_override",
        0.7,
        "ignore disregard forget",
        r"\b(?:ignore|disregard|forget)\s+(?:everything|anything|all)\s+"
        r"(?:above|before|prior|previously|you\s+(?:were|have\s+been)\s+told)\b",
    ),
    _sig(
        "instruction_override",
        0.7,
        "longer void revoked cancelled canceled obsolete null",
        rf"\b{_QUAL}\s+(?:{_NOUN}|guidance)\s+(?:(?:you|i)\s+\w+\s+)?"
        r"(?:no\s+longer\s+appl|(?:are|is)\s+(?:now\s+)?(?:void|revoked|cancel+ed|obsolete|null))",
    ),
    _sig(  # "ignore all instructions": every instruction, not a named one
        "instruction_override",
        0.6,
        "ignore disregard forget",
        r"\b(?:ignore|disregard|forget)\s+(?:all|every|any)\s+(?:of\s+)?(?:the\s+|your\s+|these\s+)?"
        r"(?:instructions?|rules|guidelines|directives?|commands|prompts?)\b",
    ),
    _sig(  # "this directive supersedes all prior ones"
        "instruction_override",
        0.6,
        "supersede supersedes overrides override replaces precedence",
        r"\b(?:supersedes?|overrides?|replaces|takes\s+precedence\s+over)\s+(?:all\s+|any\s+)?"
        r"(?:the\s+|your\s+)?(?:prior|previous|earlier|other|existing|original|old)\s+"
        r"(?:ones|instructions?|directives?|prompts?|orders|commands|programming)\b",
    ),
    _sig("new_instructions", 0.6, "new", r"\bnew\s+(?:instructions?|rules|system\s+prompt)\s*:"),
    _sig(
        "from_now_on",
        0.3,
        "now henceforth",
        r"\b(?:from\s+now\s+on|henceforth),?\s+(?:you|respond|answer|reply|act|behave|ignore)\b",
    ),
    # --- role hijack / persona
    _sig(
        "persona_hijack",
        0.8,
        "now",
        r"\byou\s+are\s+now\s+(?:dan|stan|dude|aim|an?\s+(?:unfiltered|uncensored|unrestricted"
        r"|evil|amoral|jailbroken))\b|\bdo\s+anything\s+now\b",
    ),
    _sig(
        "persona_hijack",
        0.7,
        "act behave respond answer",
        r"\b(?:act|behave|respond|answer)\s+as\s+(?:an?\s+)?(?:\w+\s+)?(?:unfiltered|uncensored"
        r"|unrestricted|amoral|evil|jailbroken|unethical)\b",
    ),
    _sig(
        "persona_hijack",
        0.5,
        "evil unfiltered uncensored amoral unrestricted jailbroken unlocked",
        r"\b(?:evil|unfiltered|uncensored|amoral)\s+(?:ai|assistant|bot)\b"
        r"|\b(?:unrestricted|unfiltered|uncensored|jailbroken|unlocked|evil)\s+(?:mode|version)\b",
    ),
    _sig(  # "an AI that has no rules", "a model which never follows guidelines"
        "persona_hijack",
        0.5,
        "ai model assistant chatbot bot",
        r"\b(?:ai|model|assistant|chatbot|bot)\s+(?:that|which|who)\s+(?:has\s+no|doesn'?t\s+have"
        r"\s+any|does\s+not\s+have\s+any|has\s+zero|never\s+follows?|ignores?)\s+(?:\w+\s+)?"
        r"(?:rules|restrictions|filters|limits|guidelines|ethics|morals|policies)\b",
    ),
    _sig(
        "developer_mode",
        0.4,
        "mode",
        r"\b(?:developer|dev|god|debug)\s+mode\b"
        rf"|\b(?:you|{_AI})\s+(?:are|is)\s+now\s+in\s+(?:\w+\s+)?mode\b",
    ),
    _sig(
        "jailbreak_term",
        0.35,
        "jail jailbreak jailbreaks jailbreaking jailbreaken",
        r"\bjail\s?break(?:s|ing|en)?\b",
    ),
    _sig(
        "roleplay_frame",
        0.25,
        "pretend game character broken",
        r"\bpretend\s+(?:that\s+)?(?:you\s+are|to\s+be|you\s+have)\b|\blet'?s\s+play\s+a\s+game\b"
        r"|\bstay\s+in\s+character\b|\bbroken\s+free\b",
    ),
    _sig(
        "restriction_removal",
        0.35,
        "no without never abide ignore not free",
        r"\b(?:no|without\s+(?:any\s+)?)\s*(?:content\s+|safety\s+|ethical\s+|moral\s+)?"
        r"(?:restrictions?|rules|filters?|limits|limitations|censorship|polic(?:y|ies)"
        r"|guidelines)\b|\bnever\s+refuses?\b|\bnot\s+have\s+to\s+abide\b"
        r"|\bignore\s+(?:your\s+|all\s+)?(?:safety|content|ethical)\s+\w+"
        r"|\b(?:no|without\s+(?:any\s+)?)\s*(?:ethical|moral)\s+(?:principles|boundaries"
        r"|constraints|compass|considerations)\b|\bnot\s+(?:be\s+)?(?:bound|restricted|limited"
        r"|constrained)\s+by\s+(?:any\s+)?(?:\w+\s+)?(?:rules|restrictions|guidelines|policies"
        r"|ethics|filters)\b|\bfree\s+(?:from|of)\s+(?:all\s+|any\s+)?(?:the\s+|your\s+)?"
        r"(?:rules|restrictions|filters|guidelines|constraints|limitations|censorship)\b",
    ),
    _sig(  # "safety protocols disabled", "skip all safety checks"
        "safety_disabled",
        0.25,
        "safety content security ethical moderation",
        r"\b(?:safety|content|security|ethical|moderation)\s+(?:protocols?|checks?|filters?"
        r"|guidelines|guardrails|restrictions|measures|policies)\s+(?:are\s+|is\s+|have\s+been\s+"
        r"|has\s+been\s+|were\s+)?(?:now\s+)?(?:disabled|off|removed|deactivated|lifted|suspended"
        r"|turned\s+off|bypassed|overridden)\b"
        r"|\b(?:skip|bypass|disable|turn\s+off|deactivate|ignore)\s+(?:all\s+|any\s+|the\s+"
        r"|your\s+)?(?:safety|content|security|ethical|moderation)\s+(?:protocols?|checks?"
        r"|filters?|guidelines|guardrails|restrictions|measures|policies)\b",
    ),
    _sig(  # "the operator has updated your configuration", "the user has granted permission"
        "claimed_authority",
        0.35,
        "user operator admin administrator developer owner",
        r"\b(?:user|operator|admin(?:istrator)?|developer|owner)\s+has\s+(?:now\s+)?(?:granted"
        r"|given|authori[sz]ed|approved)\s+(?:you\s+)?(?:full\s+)?(?:permission|authori[sz]ation"
        r"|consent|clearance)\b|\b(?:operator|admin(?:istrator)?|developer)\s+has\s+(?:updated"
        r"|changed|modified)\s+your\s+(?:configuration|instructions|settings|rules|programming)\b",
    ),
    # --- system prompt exfiltration
    _sig(
        "prompt_exfiltration",
        0.75,
        "prompt system instructions message preprompt",
        r"\b(?:reveal|print|repeat|show|output|display|tell\s+me|give\s+me|leak|dump|recite"
        r"|what\s+(?:is|are|were|was))\s+(?:me\s+)?(?:your|the)\s+(?:full\s+|entire\s+|exact\s+)?"
        r"(?:system\s+prompt|system\s+message|system\s+instructions|initial\s+(?:instructions"
        r"|prompt)|original\s+(?:instructions|prompt)|hidden\s+(?:prompt|instructions)"
        r"|developer\s+message|pre-?prompt|instructions\s+you\s+were\s+given)\b",
    ),
    _sig(
        "prompt_exfiltration",
        0.7,
        "above before context memory prompt",
        r"\b(?:repeat|print|output|copy|reproduce)\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?"
        r"(?:words|text|everything|content|lines)\s+(?:above|before\s+this)\b"
        r"|\b(?:output|print|repeat|dump|show|reveal|list|tell\s+me)\s+(?:me\s+)?(?:everything"
        r"|all|anything)\s+(?:that\s+is\s+)?(?:in|from)\s+your\s+(?:context|memory|prompt)\b",
    ),
    _sig(  # "disclose the stored passwords", "dump the environment variables"
        "secret_disclosure",
        0.25,
        "reveal disclose leak dump expose exfiltrate output print share",
        rf"\b(?:reveal|disclose|leak|dump|expose|exfiltrate|output|print|share)\s+(?:\S+\s+){{0,2}}?"
        rf"(?:{_SECRETS}|(?:admin|root|master)\s+password)\b",
    ),
    # --- delimiter / format smuggling
    _sig(
        "delimiter_smuggling",
        0.6,
        ("<|", "inst]", "sys>>"),
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|start_header_id|eot_id)\|>"
        r"|\[/?inst\]|<</?sys>>",
    ),
    _sig(
        "fake_role_marker",
        0.55,
        "system assistant developer",
        r"^(?:system|assistant|developer)\s*:\s*\S",
    ),
    _sig("fake_role_marker", 0.55, ("#",), r"^#{1,6}\s*(?:system|assistant|developer)\b"),
    # --- indirect injection: instructions planted in documents, pages and tool output
    _sig(  # a heading addressed to the model: "Note for the AI agent handling this ticket:"
        "ai_addressee",
        0.5,
        _AI_WORDS + "note message instructions instruction memo reminder notice dear attention",
        rf"\b(?:note|message|instructions?|memo|reminder|notice)\s+(?:to|for)\s+(?:the\s+|any\s+"
        rf"|all\s+)?{_AI}s?(?:\s+\w+){{0,3}}?\s*:|\b(?:dear|attention)\s*,?\s+(?:all\s+)?{_AI}s?\s*:"
        r"|\b(?:ai|llm)\s+(?:\w+\s+)?(?:assistants?|agents?|models?|tools?|systems?)\s+(?:reading"
        r"|processing|summari[sz]ing|parsing|reviewing|analy[sz]ing)\s+this\s+(?:\w+\s+)?"
        rf"(?:should|must)\b|\b(?:any|every)\s+{_AI}\s+(?:reading|processing|summari[sz]ing"
        r"|parsing)\s+this\s+(?:\w+\s+)?(?:should|must)\b",
    ),
    # Text that talks *about* the model reading it, not *to* a person. Several entries, each
    # gated on its own words: one pattern with every alternative ran on most AI-related text.
    _sig(
        "ai_addressee",
        0.4,
        "note message instructions instruction memo reminder notice",
        rf"\b(?:note|message|instructions?|memo|reminder|notice)\s+(?:to|for)\s+(?:the\s+|any\s+"
        rf"|all\s+)?{_AI}s?\b",
    ),
    _sig(  # "AI assistants processing this inbox should", "for AI coding agents"
        "ai_addressee",
        0.4,
        "ai llm",
        r"\b(?:ai|llm)\s+(?:\w+\s+)?(?:assistants?|agents?|models?|tools?|systems?)\s*(?::|,"
        r"|\s+(?:reading|processing|summari[sz]ing|parsing|reviewing|analy[sz]ing|should|must)\b)"
        r"|\b(?:for|to)\s+(?:all\s+|any\s+)?(?:ai|llm)\s+(?:coding\s+)?(?:agents?|assistants?"
        r"|models?)\b",
    ),
    _sig(  # "any model reading this", "if an LLM is summarizing this"
        "ai_addressee",
        0.4,
        "reading reads processing processes summarizing summarising summarizes summarises "
        "parsing reviewing",
        rf"\b(?:any|an?)\s+{_AI}\s+(?:reading|processing|summari[sz]ing)\s+this\b"
        rf"|\b(?:if|when|while)\s+an?\s+{_AI}\s+(?:is\s+)?(?:reading|reads|summari[sz]ing"
        r"|summari[sz]es|processing|processes|parsing|reviewing)\b",
    ),
    _sig(
        "ai_addressee",
        0.4,
        _AI_WORDS + "automated attention",
        rf"\bif\s+you\s+are\s+an?\s+(?:{_AI}|automated)\b"
        rf"|\battention\s*,?\s+(?:all\s+)?{_AI}s?\s*[,:!]",
    ),
    _sig(  # the model named as the addressee: "ChatGPT, when you read this", "to you, Claude"
        "ai_addressee",
        0.4,
        "chatgpt gpt claude gemini copilot llama bard mistral assistant ai bot agent",
        rf"\b(?:{_NAMES}|assistant|ai|bot|agent)\s*,\s*(?:when|after|before|if"
        r"|while|as\s+soon\s+as)\s+(?:you\s+)?(?:read|summari|process|review|analy|pars|see"
        rf"|open|handl)|\bto\s+you\s*,\s*(?:{_NAMES})\b",
    ),
    _sig(  # "agent: call ...", '"assistant: forward ...' inside data
        "ai_addressee",
        0.4,
        "agent assistant ai llm bot",
        r"\b(?:agent|assistant|ai|llm|bot)\s*:\s*(?:please\s+)?"
        r"(?:call|use|run|send|forward|delete|ignore|transfer|open|visit|click|include|reply"
        r"|respond|tell|execute)\b",
    ),
    _sig(  # "your real task is ...": a new task from inside the data
        "task_hijack",
        0.35,
        "your",
        r"\byour\s+(?:real|actual|true|new|only|primary|updated)\s+(?:task|job|goal|objective"
        r"|mission|purpose|instructions?|directive|orders)\s*(?:is|are|now|:|supersedes?"
        r"|overrides?|replaces?)\b",
        also="real actual true new only primary updated",
    ),
    _sig(  # "before you answer the user, ...": the user in the third person
        "task_hijack",
        0.35,
        "user",
        r"\bbefore\s+(?:you\s+)?(?:answer|respond|repl)\w*\s+(?:to\s+)?the\s+user\b",
        also="before",
    ),
    _sig(
        "task_hijack",
        0.35,
        "summarizing summarising translating answering",
        r"\binstead\s+of\s+(?:summari[sz]ing|translating|answering)\s+(?:this|it"
        r"|the\s+(?:document|email|page|text))\b",
        also="instead",
    ),
    _sig(  # posing as the user from inside the data: "before you can solve the task I gave you"
        "task_hijack",
        0.35,
        "gave assigned sent",
        r"\b(?:task|request|instructions?)\s+(?:that\s+)?(?:i|the\s+user)\s+(?:gave|assigned"
        r"|sent)\s+you\b",
        also="task request instruction instructions",
    ),
    _sig(
        "task_hijack",
        0.35,
        "following solve continue complete proceed answer finish",
        r"\bplease\s+do\s+the\s+following\s+first\b"
        r"|\bafter\s+you\s+(?:do|did|have\s+done)\s+(?:that|this)\s*,\s*you\s+(?:can|may)\s+"
        r"(?:solve|continue|complete|proceed|answer|finish)\b",
        also="first after",
    ),
    _sig(  # "when you summarize this, also ...": a side order riding on the user's task
        "processing_trigger",
        0.25,
        " ".join(_READING_VERBS),
        r"\b(?:when|while|before|after|as)\s+(?:you\s+)?(?:are\s+)?(?:"
        + "|".join(_READING_VERBS)
        + r")\s+(?:this|these|the\s+(?:above|following))\b"
        r"[^.\n]{0,60}?\b(?:also|first|instead|additionally|make\s+sure|you\s+must|be\s+sure"
        r"|remember\s+to|always)\b",
        also="when while before after as",
    ),
    _sig(  # "do not tell the user", "without informing the user"
        "covert_action",
        0.4,
        "user note instruction instructions message request",
        r"\b(?:do\s+not|don'?t|never)\s+(?:tell|inform|notify|alert|warn|let)\s+the\s+user\b"
        r"|\b(?:do\s+not|don'?t|never)\s+(?:mention|reveal|disclose)\s+(?:this|these|that|it)"
        r"(?:\s+\w+){0,2}\s+to\s+the\s+user\b|\bwithout\s+(?:telling|informing|notifying"
        r"|alerting|warning)\s+the\s+user\b|\b(?:do\s+not|don'?t|never)\s+mention\s+(?:this"
        r"|these)\s+(?:note|instructions?|message|request)\b"
        r"|\bkeep\s+this\s+(?:hidden|secret)\s+from\s+the\s+user\b",
        also="not don dont never without keep",
    ),
    _sig(  # "SYSTEM NOTE:", "[admin]": authority claimed inside content
        "fake_authority",
        0.35,
        "system admin administrator developer operator",
        r"\b(?:system|admin(?:istrator)?|developer|operator)\s+(?:note|notice|instruction"
        r"|directive|override|command)s?\s*:|\[(?:system|admin|developer)\]",
    ),
    _sig(  # "<INFORMATION> ... important message", "[INSTRUCTIONS FOR AI AGENTS]"
        "fake_authority",
        0.35,
        "important information instructions instruction system admin",
        r"\bimportant\s+(?:instructions?|message|notice)\s+(?:from|for|to)\b"
        r"|</?(?:information|instructions?|system|admin|important)>"
        r"|\[(?:instructions?|important)\s+(?:for|to)\s+[^\]\n]{1,30}\]",
    ),
    _sig(  # "add this line at the bottom of every answer"
        "reply_injection",
        0.25,
        "append add include insert prepend attach repeat future",
        r"\b(?:append|add|include|insert|prepend|attach|repeat)\b[^.\n]{0,60}?\b(?:to|at|in)\s+"
        r"(?:the\s+(?:end|start|beginning|top|bottom)\s+of\s+)?(?:your|every|each|any|all)\s+"
        r"(?:future\s+)?(?:reply|replies|response|responses|answer|answers|output|summary)\b"
        r"|\b(?:in|to)\s+(?:every|each|all|any)\s+future\s+(?:reply|replies|response|responses"
        r"|answer|answers|message|messages|conversation|session)s?\b",
    ),
    _sig(  # "store this in your long-term memory": persistence across sessions
        "memory_persistence",
        0.25,
        "memory",
        r"\b(?:save|store|write|add|commit|persist)\b[^.\n]{0,40}?\b(?:to|in|into)\s+(?:your\s+)?"
        r"(?:persistent\s+|long-term\s+|permanent\s+)?memory\b",
    ),
    # What a planted order asks an agent to do: money, deletion, access, a door, a script, a login.
    _sig(
        "agent_action",
        0.25,
        "transfer wire send",
        r"\b(?:transfer|wire|send)\s+(?:\$|€|£)?\d[\d,.]*\s*(?:\$|€|£|usd|eur|gbp|dollars|euros)?"
        r"\s+to\b",
        also="to",
    ),
    _sig(
        "agent_action",
        0.25,
        "files emails messages records data repositories repos backups documents",
        r"\bdelete\s+(?:all|every)\s+(?:of\s+)?(?:the\s+)?(?:\w+\s+)?(?:files|emails|messages"
        r"|records|data|repositories|repos|backups|documents)\b",
        also="delete",
    ),
    _sig(
        "agent_action",
        0.25,
        "access rights permissions privileges",
        r"\bgrant\s+(?:\w+\s+){0,3}?(?:admin|administrator|full|permanent|root|owner)\s+"
        r"(?:access|rights|permissions|privileges)\b",
        also="grant",
    ),
    _sig(
        "agent_action",
        0.25,
        "unlock curl",
        r"\bunlock\s+(?:the\s+)?(?:front\s+|back\s+)?(?:door|lock|gate)\b"
        r"|\bcurl\s+[^|\n]{1,200}\|\s*(?:sudo\s+)?(?:-\w+\s+)?(?:ba|z)?sh\b",
    ),
    _sig(
        "agent_action",
        0.25,
        "log sign enter",
        r"\b(?:log\s+in|sign\s+in|enter\s+(?:their|your)\s+(?:password|credentials))\s+(?:at|on)"
        r"\s+\S+\.\w",
        also="in password credentials",
    ),
    _sig(  # what a planted order asks the answer to say: ratings, endorsements, false alarms
        "output_manipulation",
        0.25,
        "rate rank score recommend state say claim tell",
        r"\b(?:rate|rank|score)\s+(?:this|the|them|it|him|her)\b[^.\n]{0,30}?\b(?:5|five|10|ten"
        r"|first|highest|top)\b|\brecommend\s+(?:visiting|buying|using|installing|downloading)\b"
        r"|\b(?:state|say|claim|tell\s+the\s+user)\s+that\b[^.\n]{0,60}?\b(?:no\s+known|is\s+safe"
        r"|is\s+verified|excellent|approved|legitimate|locked|compromised|expired)\b"
        r"|\btell\s+the\s+user\s+(?:that\s+)?(?:their|his|her)\s+(?:account|password|session"
        r"|card)\b",
    ),
    _sig(  # "Use send_email to ...": an order to call one of the agent's tools
        "tool_invocation",
        0.25,
        "use call invoke run execute trigger",
        r"\b(?:use|call|invoke|run|execute|trigger)\s+(?:the\s+)?`?[a-z][a-z0-9]*_[a-z0-9_]+`?"
        r"(?:\(\))?(?:\s+(?:tool|function|action))?\s+(?:to|on|with|for|and)\b",
        needs="_",
    ),
    # --- link-based data exfiltration
    _sig(
        "link_exfiltration",
        0.7,
        (" to http", "@"),
        r"\b(?:send|forward|post|upload|exfiltrate|transmit|leak|email)\s+(?:\w+\s+){0,3}?"
        r"(?:conversation|chat|history|messages|emails|transcript|context|secrets?|credentials"
        r"|passwords?|api\s+keys?|tokens?|data)\s+to\s+(?:https?://|\S+@\S+)",
    ),
    _sig(
        "link_exfiltration",
        0.7,
        ("![",),
        r"!\[[^\]\n]{0,100}\]\(\s*https?://[^\s)]{0,300}\?[^\s)]{0,300}"
        r"(?:\{|conversation|history|secret|password|api_key|apikey|token|key=|pw=|data=)",
    ),
    _sig(
        "decode_and_follow",
        0.3,
        "decode",
        r"\bdecode\s+(?:this|it|the\s+following|the\s+next)\b.{0,40}\b(?:follow|execute|obey"
        r"|do|run)\b",
    ),
)


# ----------------------------------------------------------------------------- other languages

_FIELD = re.compile(r"\{(\w+)\}")
_WORD = re.compile(r"[a-z]+")


def _phrase(phrase: str) -> str:
    return r"\s+".join(re.escape(word) for word in phrase.split())


def _alternation(phrases: str) -> str:
    """A regex alternation of `|`-separated phrases."""
    ordered = sorted(phrases.split("|"), key=len, reverse=True)  # "le tue" before "le"
    return "(?:" + "|".join(_phrase(p) for p in ordered) + ")"


def _trigger_words(phrases: str) -> frozenset[str]:
    """The longest word of each phrase: every match of the phrase contains it as a whole word."""
    return frozenset(max(_WORD.findall(p), key=len) for p in phrases.split("|") if p)


def _compile_languages(cues: Mapping[str, Mapping[str, str]]) -> tuple[_Signal, ...]:
    """One signal per language and template, gated on the longest words of its gate fields."""
    signals = []
    for table in cues.values():
        for name, weight, gate_fields, template in TEMPLATES:
            fields = set(_FIELD.findall(template))
            if not fields <= table.keys():
                continue
            pattern = template.format(**{f: _alternation(table[f]) for f in fields})
            words = frozenset().union(*(_trigger_words(table.get(f, "")) for f in gate_fields))
            signals.append(_Signal(name, weight, re.compile(pattern), words=words))
    return tuple(signals)


_SIGNALS: tuple[_Signal, ...] = _ENGLISH + _compile_languages(LANG_CUES)


def _index(
    signals: tuple[_Signal, ...],
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Signal positions by trigger word and by trigger substring."""
    by_word: dict[str, list[int]] = {}
    by_sub: dict[str, list[int]] = {}
    for i, signal in enumerate(signals):
        assert signal.words or signal.subs, f"{signal.name}: a signal needs triggers"
        for word in signal.words:
            by_word.setdefault(word, []).append(i)
        for sub in signal.subs:
            by_sub.setdefault(sub, []).append(i)
    return {k: tuple(v) for k, v in by_word.items()}, {k: tuple(v) for k, v in by_sub.items()}


_BY_WORD, _BY_SUB = _index(_SIGNALS)
_TRIGGER_WORDS = frozenset(_BY_WORD)


# ----------------------------------------------------------------------------- data sent away

# "Send the customer list to x@y": a send verb and an outside address in one passage; a
# sensitive object (credentials, customer data, the conversation) makes it strong.
_ADDRESS = re.compile(r"@[\w-]+(?:\.[\w-]+)+|https?://")  # where an address starts or sits
_SEND = re.compile(
    r"\b(?:send|forward|e-?mail|mail|post|upload|transmit|exfiltrate|leak|share|cc|bcc)\b|\b"
    + _alternation("|".join(t["send"] for t in LANG_CUES.values()))
    + r"(?![a-z])"
)
_SENSITIVE = re.compile(
    r"\b(?:customer|client|user)s?\s+(?:list|emails?|data|records|database|details|contacts)\b"
    r"|\b(?:credentials|passwords|api\s+keys?|secrets|access\s+tokens?|private\s+keys?"
    r"|(?:conversation|chat)\s+history|personal\s+data|internal\s+data|all\s+(?:the\s+)?"
    r"(?:emails|files|documents|records|contacts))\b|\b"
    + _alternation("|".join(t["sensitive"] for t in LANG_CUES.values()))
    + r"(?![a-z])"
)


def _match_exfiltration(norm: str, found: dict[str, float]) -> None:
    """A send verb in the 200 characters before an e-mail address or URL; stronger when the same
    passage names sensitive data."""
    if "@" not in norm and "http" not in norm:
        return
    for i, m in enumerate(_ADDRESS.finditer(norm)):
        if i >= _MAX_REGIONS:
            break
        window = norm[max(0, m.start() - 260) : m.start()]  # 200 characters + a local part
        if not _SEND.search(window):
            continue
        weight = 0.55 if _SENSITIVE.search(window) else 0.2
        if weight > found.get("data_to_address", 0.0):
            found["data_to_address"] = weight


# ----------------------------------------------------------------------------- hidden regions

_COMMENT = re.compile(r"<!--(.{0,2000}?)-->", re.DOTALL)
_COMMENT_INSTRUCTION = re.compile(
    r"\b(?:ignore|instead|assistant|ai|llm|model|you\s+must|tell\s+(?:them|the\s+user)|system"
    r"|instructions?)\b"
)
_INVISIBLE = (
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?![.\d])|opacity\s*:\s*0(?![.\d])"
    r"|color\s*:\s*(?:white|#fff(?:fff)?|transparent)\b|\bhidden\b"
)
# Each starts with a literal, so the engine skips straight to the next "<", "![" or "alt".
_HIDDEN_REGIONS = (
    (
        "<",
        re.compile(
            rf"<(\w+)\b[^>]{{0,300}}?(?:{_INVISIBLE})[^>]{{0,300}}>(.{{0,2000}}?)</\1\s*>",
            re.DOTALL,
        ),
    ),
    ("![", re.compile(r"!\[()([^\]\n]{1,500})\]\(")),
    ("alt", re.compile(r"alt\s*=\s*([\"'])(.{1,500}?)\1", re.DOTALL)),
)


def _match_hidden(norm: str, found: dict[str, float]) -> None:
    """Text a reader cannot see (comments, invisible elements, alt text) that carries an order."""
    if "<!--" in norm:
        for m in _COMMENT.finditer(norm):
            if _COMMENT_INSTRUCTION.search(m.group(1)):
                found["hidden_comment"] = max(found.get("hidden_comment", 0.0), 0.6)
                break
    for literal, regex in _HIDDEN_REGIONS:
        if literal not in norm:
            continue
        for i, m in enumerate(regex.finditer(norm)):
            if i >= _MAX_REGIONS:
                break
            if literal == "alt" and m.start() and (norm[m.start() - 1].isalnum()):
                continue  # "salt = '...'" is not alt text
            inner: dict[str, float] = {}
            _match_patterns(m.group(2), inner)
            if inner:
                found["hidden_text"] = 0.5
                for name, weight in inner.items():
                    found[name] = max(found.get(name, 0.0), weight)
                return


def _match_patterns(norm: str, found: dict[str, float]) -> frozenset[str]:
    """Record every signal whose pattern matches, keeping the highest weight per name.

    One set intersection finds the trigger words present, so ordinary text runs only the few
    patterns whose triggers it contains.
    """
    tokens = frozenset(_WORD.findall(norm))
    candidates: set[int] = set()
    for word in tokens & _TRIGGER_WORDS:
        candidates.update(_BY_WORD[word])
    for sub, positions in _BY_SUB.items():
        if sub in norm:
            candidates.update(positions)
    for i in sorted(candidates):
        signal = _SIGNALS[i]
        if signal.weight <= found.get(signal.name, 0.0):
            continue
        if (signal.also and signal.also.isdisjoint(tokens)) or signal.needs not in norm:
            continue
        if signal.pattern.search(norm):
            found[signal.name] = signal.weight
    _match_exfiltration(norm, found)
    return tokens


def _match_signals(norm: str, found: dict[str, float]) -> frozenset[str]:
    """All signals of one reading of the text; returns its words for the view tests."""
    tokens = _match_patterns(norm, found)
    _match_hidden(norm, found)
    return tokens


# ----------------------------------------------------------------------------- encoded payloads

_BASE64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}")
_BASE64_SHORT = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_BINARY = re.compile(r"(?<![01])(?:[01]{8}[ ,]?){6,}")


def _printable(data: bytes) -> str | None:
    """`data` as text, or None if it is not UTF-8 or not mostly printable (images, hashes)."""
    try:
        text = data.decode("utf-8")
    except ValueError:
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    return text if text and printable / len(text) >= 0.9 else None


def _decode_blob(blob: str) -> str | None:
    """Decode a hex or base64 (standard or url-safe) blob to text, or None if it is not text."""
    if len(blob) % 2 == 0 and _HEX.fullmatch(blob):
        return _printable(bytes.fromhex(blob))
    raw = blob.rstrip("=").replace("-", "+").replace("_", "/")
    raw += "=" * (-len(raw) % 4)
    try:
        return _printable(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError):
        return None


def _payloads(text: str, norm: str) -> Iterator[str]:
    """Decoded text of the encoded blobs in `text` (case kept: base64 is case-sensitive)."""
    blobs = _BASE64_SHORT if "base64" in norm or "b64" in norm else _BASE64
    for i, m in enumerate(blobs.finditer(text)):
        if i >= _MAX_BLOBS:
            break
        decoded = _decode_blob(m.group(0)[:_MAX_BLOB_CHARS])
        if decoded is not None:
            yield decoded
    if "0000" in text or "0110" in text:
        for i, m in enumerate(_BINARY.finditer(text)):
            if i >= _MAX_BLOBS:
                break
            bits = "".join(ch for ch in m.group(0)[: _MAX_BLOB_CHARS * 9] if ch in "01")
            bits = bits[: len(bits) // 8 * 8]
            decoded = _printable(int(bits, 2).to_bytes(len(bits) // 8, "big"))
            if decoded is not None:
                yield decoded


# ----------------------------------------------------------------------------- scoring


def _combine(found: dict[str, float]) -> float:
    """Noisy-OR of the signal weights (see the module docstring for why)."""
    miss = 1.0
    for weight in found.values():
        miss *= 1.0 - weight
    return round(1.0 - miss, 4)


def _score(text: str, depth: int) -> dict[str, float]:
    prepared = _strip_format_chars(text)
    norm, homoglyph = _normalize(prepared.text)
    found: dict[str, float] = {}
    tokens = _match_signals(norm, found)

    for marker, view in _views(norm, tokens, prepared.text):
        view_found: dict[str, float] = {}
        _match_signals(view, view_found)
        extra = {k: w for k, w in view_found.items() if w > found.get(k, 0.0)}
        if extra:
            found.update(extra)
            found[marker] = 0.2
    # Obfuscation is only suspicious in itself when something else fired too; a lone zero-width
    # joiner (emoji sequences, Persian text), a flag's tag sequence or a Cyrillic word must not
    # flag a message.
    if found and prepared.format_chars:
        found["zero_width"] = 0.2
    if found and prepared.tag_chars:
        found["tag_characters"] = 0.2
    if found and homoglyph:
        found["homoglyph"] = 0.2

    if depth < _MAX_DEPTH:
        for i, decoded in enumerate(_payloads(prepared.text, norm)):
            if i >= _MAX_BLOBS:
                break
            inner = _score(decoded, depth + 1)
            inner_score = _combine(inner)
            if inner_score >= 0.3:
                weight = min(1.0, inner_score + 0.1)
                found["encoded_payload"] = max(found.get("encoded_payload", 0.0), weight)
                for name in inner:
                    found.setdefault(f"base64:{name}", 0.0)
    return found


def score_injection(text: str) -> InjectionVerdict:
    """Score how likely `text` (one user message) is a prompt-injection or jailbreak attempt.

    Pure and deterministic; safe to call on every message. The score is a noisy-OR of weighted
    signals, so it is comparable across messages but is not a calibrated probability.
    """
    if not text:
        return InjectionVerdict(0.0, ())
    found = _score(text, 0)
    return InjectionVerdict(score=_combine(found), signals=tuple(sorted(found)))
