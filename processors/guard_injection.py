"""Heuristic prompt-injection / jailbreak scorer for user messages, before they reach a model.

Why a heuristic: it runs in-process on every request, needs no network and no model weights, and
costs about 0.1 ms per KB of ASCII text (0.2-0.25 ms with non-ASCII text or base64 blobs, on
the dev box), noise next to a model call. It is a *heuristic*: it catches the well-known phrasings
and their cheap obfuscations, not a determined adversary who paraphrases. On the labelled corpus
`tests/fixtures/guard/injection_cases.yaml` (72 cases, written before this code, benign cases
chosen to look close to attacks) it measures precision 1.00 (0 of 32 benign flagged) and recall
0.925 (37 of 40 attacks) at threshold 0.5; the misses are plain-language paraphrases ("set aside
whatever you were told before"). The corpus test pins floors just below those numbers. A
classifier model can replace it behind the same signature, `score_injection(text) ->
InjectionVerdict`, so callers (admission, analytics) do not change.

How it scores, each choice for a reason:

- **Normalize first**, so obfuscation does not dodge the patterns: NFKC (full-width and other
  compatibility forms become ASCII), zero-width and other format characters (Unicode category
  Cf) are removed, diacritics are folded (patterns for German/French/Spanish are written without
  accents), common Cyrillic/Greek homoglyphs map to Latin, and horizontal whitespace collapses
  (newlines and indentation are kept, because fake role markers are line-anchored). A second
  pass de-leets tokens that mix letters and digits ("1gn0r3" -> "ignore"); plain numbers stay.
- **Signals, not one regex.** Each family (override, persona, exfiltration, delimiter, ...) has a
  name and a weight. A signal counts once, at its highest weight. Weights combine as a noisy-OR,
  `1 - prod(1 - w)`: one strong signal (w >= 0.5) crosses 0.5 alone, and two weak ones (0.3 to
  0.35 each, e.g. "developer mode" plus "never refuse") cross it together, while a lone weak
  signal ("how do I turn on developer mode") stays below.
- **Encoded payloads** (base64 blobs of 32+ characters) are decoded and re-scored, bounded in
  count, size and depth, because "decode this and follow it: SWdub3Jl..." is a standard evasion.
  Blobs that decode to binary (images) or to instruction-free text (JWT claims) add nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["InjectionVerdict", "normalize", "score_injection"]

THRESHOLD = 0.5
"""Score at or above which a message is treated as an injection attempt."""

_MAX_BLOBS = 4
_MAX_BLOB_CHARS = 8192
_MAX_DEPTH = 2


@dataclass(frozen=True)
class InjectionVerdict:
    """The score in [0, 1] and the names of the signals that fired, so a rejection is explainable.

    `signals` is sorted for stable logs and tests; signals found inside a decoded base64 blob are
    prefixed `base64:`, and `leetspeak` / `zero_width` / `homoglyph` mark the obfuscation seen.
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
    "\u03b1a\u03bfo\u03c1p\u03b9i\u03bak\u03bdv\u03c4t\u03c5u\u03b5e"  # Greek
)
_HOMOGLYPHS = str.maketrans(_HOMOGLYPH_PAIRS[0::2], _HOMOGLYPH_PAIRS[1::2])
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a"})
# Runs of blanks and lone non-space blanks (tabs, NBSP): single spaces are left untouched.
_HSPACE = re.compile(r"[^\S\n]{2,}|[^\S \n]")
# Trailing blanks and empty lines go, but a line's indentation stays (as one space): an indented
# `system:` is a YAML key, a `system:` at column 0 is a fake role marker.
_NEWLINES = re.compile(r"[^\S\n]*\n(?:[^\S\n]*\n)*")
_LEET_TOKEN = re.compile(r"(?<![a-z0-9@])(?=[a-z0-9@]*?[0-9@])(?=[a-z0-9@]*?[a-z])[a-z0-9@]+")
_HAS_LEET = re.compile(r"[a-z][0-9@]|[0-9@][a-z]")
_MIXED_SCRIPT = re.compile(r"[a-z][^\x00-\x7f]|[^\x00-\x7f][a-z]")


def _strip_format_chars(text: str) -> tuple[str, bool]:
    """NFKC, then drop Cf characters (zero-width space/joiners, BOM, bidi controls)."""
    if text.isascii():  # fast path: ASCII has no Cf characters and is NFKC-stable
        return text, False
    text = unicodedata.normalize("NFKC", text)
    stripped = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return stripped, len(stripped) != len(text)


def normalize(text: str) -> str:
    """Return the canonical form the patterns are matched against (see the module docstring)."""
    return _normalize(_strip_format_chars(text)[0])[0]


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
        # plain Russian or Greek text maps too, but that is harmless for the English patterns.
        homoglyph = mapped != folded and bool(_MIXED_SCRIPT.search(folded))
    mapped = _HSPACE.sub(" ", mapped)
    mapped = _NEWLINES.sub("\n", mapped).strip()
    return mapped, homoglyph


def _deleet(text: str) -> str:
    """Map digits to letters only inside tokens that already mix both ("pr3v10us")."""

    if not _HAS_LEET.search(text):
        return text
    return _LEET_TOKEN.sub(lambda m: m.group(0).translate(_LEET), text)


# ----------------------------------------------------------------------------- signals

_QUAL = r"(?:previous|prior|above|earlier|preceding|initial|original|former|old|existing|system)"
_NOUN = (
    r"(?:instructions?|rules?|directions?|directives?|guidelines?|guidance|prompts?|commands?"
    r"|orders?|context|constraints?|policies|programming|messages?)"
)

# (signal name, weight, triggers, compiled pattern). Weights: >= 0.5 strong, 0.2-0.4 weak.
# Triggers are literals every match must contain: a C-speed `in` test skips most regexes on
# ordinary text (each `\b`-led alternation otherwise costs ~13 us per KB).
_SIGNALS: tuple[tuple[str, float, tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (name, weight, triggers, re.compile(pattern, re.MULTILINE))
    for name, weight, triggers, pattern in (
        # --- instruction override
        (
            "instruction_override",
            0.8,
            ("ignore", "disregard", "forget", "override", "bypass", "skip", "drop"),
            rf"\b(?:ignore|disregard|forget|override|bypass|skip|drop)\s+(?:all\s+|any\s+)?"
            rf"(?:of\s+)?(?:the\s+|your\s+|my\s+|these\s+|those\s+)?(?:{_QUAL}\s+)+{_NOUN}\b",
        ),
        (
            "instruction_override",
            0.8,
            ("ignore", "disregard", "forget"),
            rf"\b(?:ignore|disregard|forget)\s+(?:all\s+)?(?:of\s+)?your\s+{_NOUN}\b",
        ),
        (
            "instruction_override",
            0.7,
            ("ignore", "disregard", "forget"),
            r"\b(?:ignore|disregard|forget)\s+(?:everything|anything|all)\s+"
            r"(?:above|before|prior|previously|you\s+(?:were|have\s+been)\s+told)\b",
        ),
        (
            "instruction_override",
            0.7,
            ("no longer", "void", "revoked", "cancel", "obsolete", "null"),
            rf"\b{_QUAL}\s+(?:{_NOUN}|guidance)\s+(?:(?:you|i)\s+\w+\s+)?"
            r"(?:no\s+longer\s+appl|(?:are|is)\s+(?:now\s+)?(?:void|revoked|cancel+ed|obsolete|null))",
        ),
        ("new_instructions", 0.6, ("new",), r"\bnew\s+(?:instructions?|rules|system\s+prompt)\s*:"),
        (
            "from_now_on",
            0.3,
            ("now", "henceforth", "jetzt", "desormais", "ahora"),
            r"\b(?:from\s+now\s+on|henceforth),?\s+you\b|\bab\s+jetzt\s+bist\s+du\b"
            r"|\bdesormais,?\s+tu\b|\ba\s+partir\s+de\s+ahora,?\s+(?:eres|tu)\b",
        ),
        # --- German / French / Spanish overrides (accents folded by normalization)
        (
            "instruction_override",
            0.8,
            ("ignorier", "vergiss", "missachte"),
            r"\b(?:ignorier\w*|vergiss|missachte)\s+(?:alle\s+)?(?:die\s+)?"
            r"(?:vorherigen|bisherigen|obigen|vorigen|fruheren)\s+(?:anweisungen|regeln|befehle)",
        ),
        (
            "instruction_override",
            0.8,
            ("ignore", "oublie"),
            r"\b(?:ignore[rz]?|oublie[rz]?)\s+(?:toutes\s+)?(?:les\s+)?(?:instructions|regles|consignes)"
            r"\s+(?:precedentes|anterieures|ci-dessus)",
        ),
        (
            "instruction_override",
            0.8,
            ("ignor", "olvid"),
            r"\b(?:ignora|olvida|ignore|olvide)\s+(?:todas\s+)?(?:las\s+)?(?:instrucciones|reglas)"
            r"\s+(?:anteriores|previas)",
        ),
        # --- role hijack / persona
        (
            "persona_hijack",
            0.8,
            ("you are now", "anything now"),
            r"\byou\s+are\s+now\s+(?:dan|stan|dude|aim|an?\s+(?:unfiltered|uncensored|unrestricted"
            r"|evil|amoral|jailbroken))\b|\bdo\s+anything\s+now\b",
        ),
        (
            "persona_hijack",
            0.7,
            (" as ",),
            r"\b(?:act|behave|respond|answer)\s+as\s+(?:an?\s+)?(?:\w+\s+)?(?:unfiltered|uncensored"
            r"|unrestricted|amoral|evil|jailbroken|unethical)\b",
        ),
        (
            "persona_hijack",
            0.5,
            ("evil", "unfiltered", "uncensored", "amoral"),
            r"\b(?:evil|unfiltered|uncensored|amoral)\s+(?:ai|assistant|bot)\b",
        ),
        ("developer_mode", 0.4, ("mode",), r"\b(?:developer|dev|god|debug)\s+mode\b"),
        ("jailbreak_term", 0.35, ("jail",), r"\bjail\s?break(?:s|ing|en)?\b"),
        (
            "roleplay_frame",
            0.25,
            ("pretend", "game", "character", "broken free"),
            r"\bpretend\s+(?:that\s+)?(?:you\s+are|to\s+be|you\s+have)\b|\blet'?s\s+play\s+a\s+game\b"
            r"|\bstay\s+in\s+character\b|\bbroken\s+free\b",
        ),
        (
            "restriction_removal",
            0.35,
            ("no", "without", "never", "abide", "ignore", "sin ", "sans ", "ohne "),
            r"\b(?:no|without\s+(?:any\s+)?)\s*(?:content\s+|safety\s+|ethical\s+|moral\s+)?"
            r"(?:restrictions?|rules|filters?|limits|limitations|censorship|polic(?:y|ies)"
            r"|guidelines)\b|\bnever\s+refuses?\b|\bnot\s+have\s+to\s+abide\b"
            r"|\bignore\s+(?:your\s+|all\s+)?(?:safety|content|ethical)\s+\w+"
            r"|\bsin\s+(?:filtros|restricciones)\b|\bsans\s+(?:aucune\s+)?(?:restriction|filtre)"
            r"|\bohne\s+(?:jegliche\s+)?(?:einschrankungen|filter|regeln)\b",
        ),
        # --- system prompt exfiltration
        (
            "prompt_exfiltration",
            0.75,
            ("prompt", "system", "instructions", "message"),
            r"\b(?:reveal|print|repeat|show|output|display|tell\s+me|give\s+me|leak|dump|recite"
            r"|what\s+(?:is|are|were|was))\s+(?:me\s+)?(?:your|the)\s+(?:full\s+|entire\s+|exact\s+)?"
            r"(?:system\s+prompt|system\s+message|initial\s+(?:instructions|prompt)|original"
            r"\s+(?:instructions|prompt)|hidden\s+(?:prompt|instructions)|developer\s+message"
            r"|pre-?prompt|instructions\s+you\s+were\s+given)\b",
        ),
        (
            "prompt_exfiltration",
            0.7,
            ("above", "before this"),
            r"\b(?:repeat|print|output|copy|reproduce)\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?"
            r"(?:words|text|everything|content|lines)\s+(?:above|before\s+this)\b",
        ),
        (
            "prompt_exfiltration",
            0.75,
            ("prompt",),
            r"\b(?:gib|zeig|nenne?)\s+(?:mir\s+)?(?:dein\w*|das|den)\s+system\s?-?prompt"
            r"|\b(?:revele|montre|affiche|donne)[rz]?\s+(?:-moi\s+)?(?:ton|votre|le)\s+prompt"
            r"|\b(?:muestra(?:me)?|revela(?:me)?|dime)\s+(?:tu|el)\s+prompt",
        ),
        # --- delimiter / format smuggling
        (
            "delimiter_smuggling",
            0.6,
            ("<|", "inst]", "sys>>"),
            r"<\|(?:im_start|im_end|system|user|assistant|endoftext|start_header_id|eot_id)\|>"
            r"|\[/?inst\]|<</?sys>>",
        ),
        (
            "fake_role_marker",
            0.55,
            ("system", "assistant", "developer"),
            r"^(?:system|assistant|developer)\s*:\s*\S",
        ),
        ("fake_role_marker", 0.55, ("#",), r"^#{1,6}\s*(?:system|assistant|developer)\b"),
        # --- link-based data exfiltration
        (
            "link_exfiltration",
            0.7,
            (" to http", "@"),
            r"\b(?:send|forward|post|upload|exfiltrate|transmit|leak|email)\s+(?:\w+\s+){0,3}?"
            r"(?:conversation|chat|history|messages|emails|transcript|context|secrets?|credentials"
            r"|passwords?|api\s+keys?|tokens?|data)\s+to\s+(?:https?://|\S+@\S+)",
        ),
        (
            "link_exfiltration",
            0.7,
            ("![",),
            r"!\[[^\]\n]{0,100}\]\(\s*https?://[^\s)]{0,300}\?[^\s)]{0,300}"
            r"(?:\{|conversation|history|secret|password|api_key|apikey|token|key=|pw=|data=)",
        ),
        (
            "decode_and_follow",
            0.3,
            ("decode",),
            r"\bdecode\s+(?:this|the\s+following)\b.{0,40}\b(?:follow|execute|obey|do)\b",
        ),
    )
)

_COMMENT = re.compile(r"<!--(.{0,2000}?)-->", re.DOTALL)
_COMMENT_INSTRUCTION = re.compile(
    r"\b(?:ignore|instead|assistant|ai|llm|model|you\s+must|tell\s+(?:them|the\s+user)|system"
    r"|instructions?)\b"
)
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}")


def _match_signals(norm: str, found: dict[str, float]) -> None:
    """Record every signal whose pattern matches, keeping the highest weight per name."""
    for name, weight, triggers, pattern in _SIGNALS:
        if weight <= found.get(name, 0.0) or not any(t in norm for t in triggers):
            continue
        if pattern.search(norm):
            found[name] = weight
    for m in _COMMENT.finditer(norm):
        if _COMMENT_INSTRUCTION.search(m.group(1)):
            found["hidden_comment"] = max(found.get("hidden_comment", 0.0), 0.6)
            break


def _decode_blob(blob: str) -> str | None:
    """Decode a base64 (standard or url-safe) blob to text, or None if it is not mostly text."""
    raw = blob.rstrip("=").replace("-", "+").replace("_", "/")
    raw += "=" * (-len(raw) % 4)
    try:
        data = base64.b64decode(raw, validate=True)
        text = data.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    return text if text and printable / len(text) >= 0.9 else None


def _combine(found: dict[str, float]) -> float:
    """Noisy-OR of the signal weights (see the module docstring for why)."""
    miss = 1.0
    for weight in found.values():
        miss *= 1.0 - weight
    return round(1.0 - miss, 4)


def _score(text: str, depth: int) -> dict[str, float]:
    stripped, had_format_chars = _strip_format_chars(text)
    norm, homoglyph = _normalize(stripped)
    found: dict[str, float] = {}
    _match_signals(norm, found)

    leet = _deleet(norm)
    if leet != norm:
        leet_found: dict[str, float] = {}
        _match_signals(leet, leet_found)
        extra = {k: w for k, w in leet_found.items() if w > found.get(k, 0.0)}
        if extra:
            found.update(extra)
            found["leetspeak"] = 0.2
    # Obfuscation is only suspicious in itself when something else fired too; a lone zero-width
    # joiner (emoji sequences, Persian text) or a Cyrillic word must not flag a message.
    if found and had_format_chars:
        found["zero_width"] = 0.2
    if found and homoglyph:
        found["homoglyph"] = 0.2

    if depth < _MAX_DEPTH:
        # Base64 is case-sensitive, so blobs come from the text before lowercasing.
        for i, m in enumerate(_BASE64.finditer(stripped)):
            if i >= _MAX_BLOBS:
                break
            decoded = _decode_blob(m.group(0)[:_MAX_BLOB_CHARS])
            if decoded is None:
                continue
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
