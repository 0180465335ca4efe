"""The soak's verifier: what the log says happened to every request, next to what clients saw.

Pure (no Kafka, no HTTP): the runner reads sg.requests and sg.responses from the beginning into
`Journaled` and `Final` records, the load loop records one `ClientAttempt` per HTTP attempt, and
`verify` counts

- journaled requests (distinct request_ids on sg.requests),
- answered (the first final result is a ResponseReady), failed explicitly (a RequestRejected),
- lost (journaled, no final result at all after the settle period),
- duplicated (more than one final result for one request_id), split into identical duplicates
  (same kind and same content: a redelivered task that ran again) and conflicting ones (an
  answer and a rejection, or two different answers),
- unjournaled 2xx (a client got a 2xx whose request_id is not on the journal),

and, for the reading: what clients got (statuses, corrupted answers, keys that never got a 2xx),
whether a client's 2xx agrees with the log, and how many Idempotency-Keys were journaled more
than once (a retry the bridge did not recognize, so it ran again under a new request_id).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

EXAMPLES = 5  # request ids or keys listed per anomaly


@dataclass(frozen=True, slots=True)
class Journaled:
    """One RequestReceived record on sg.requests."""

    request_id: str
    idempotency_key: str | None = None
    stream: bool = False
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True, slots=True)
class Final:
    """One final result on sg.responses: a ResponseReady or a RequestRejected."""

    request_id: str
    kind: Literal["answer", "rejection"]
    content: str = ""  # an answer's text; a rejection's message
    finish_reason: str | None = None
    code: str | None = None  # a rejection's code
    http_status: int | None = None
    producer: str = ""
    partition: int = -1
    offset: int = -1

    @property
    def identity(self) -> tuple[Any, ...]:
        """What two copies of one result share: a redelivered task produces the same identity
        (the envelope differs: event ids and timestamps are new on every run)."""
        if self.kind == "answer":
            return ("answer", self.content, self.finish_reason)
        return ("rejection", self.code, self.http_status)


@dataclass(frozen=True, slots=True)
class ClientAttempt:
    """One HTTP attempt of the load loop. `status` 0: no HTTP answer (refused, reset, timeout).

    `content_ok` is None unless the attempt got a 2xx: then whether the text the client read is
    exactly the answer expected for its marker (a stream is judged on the concatenated deltas
    and its finish reason)."""

    key: str
    attempt: int
    bridge: str
    status: int
    request_id: str | None = None
    stream: bool = False
    content_ok: bool | None = None
    error: str | None = None
    latency_s: float = 0.0
    sent_at: float = 0.0
    during_chaos: bool = False


@dataclass
class Report:
    journaled: int = 0
    journal_records: int = 0
    answered: int = 0
    failed_explicitly: int = 0
    lost: int = 0
    duplicated: int = 0
    duplicated_identical: int = 0
    duplicated_conflicting: int = 0
    extra_finals: int = 0  # final results beyond the first, over all requests
    unjournaled_2xx: int = 0
    orphan_finals: int = 0  # final results whose request_id is not on the journal
    rejection_codes: dict[str, int] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    idempotency: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    lost_ids: list[str] = field(default_factory=list)
    duplicated_ids: list[str] = field(default_factory=list)

    @property
    def goal_met(self) -> bool:
        """The issue's goal: 0 lost, 0 duplicated, 0 unjournaled 2xx."""
        return self.lost == 0 and self.duplicated == 0 and self.unjournaled_2xx == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "goal_met": self.goal_met,
            "journaled": self.journaled,
            "journal_records": self.journal_records,
            "answered": self.answered,
            "failed_explicitly": self.failed_explicitly,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "duplicated_identical": self.duplicated_identical,
            "duplicated_conflicting": self.duplicated_conflicting,
            "extra_finals": self.extra_finals,
            "unjournaled_2xx": self.unjournaled_2xx,
            "orphan_finals": self.orphan_finals,
            "rejection_codes": self.rejection_codes,
            "client": self.client,
            "idempotency": self.idempotency,
            "examples": self.examples,
            "lost_ids": self.lost_ids,
            "duplicated_ids": self.duplicated_ids,
        }


def verify(
    journal: Iterable[Journaled],
    finals: Iterable[Final],
    attempts: Sequence[ClientAttempt] = (),
) -> Report:
    report = Report()
    journal = list(journal)
    journaled = {record.request_id: record for record in journal}
    report.journal_records = len(journal)
    report.journaled = len(journaled)

    by_request: dict[str, list[Final]] = defaultdict(list)
    for final in finals:
        by_request[final.request_id].append(final)
    examples: dict[str, list[str]] = defaultdict(list)

    def note(kind: str, item: str) -> None:
        if len(examples[kind]) < EXAMPLES:
            examples[kind].append(item)

    codes: Counter[str] = Counter()
    for request_id in journaled:
        results = sorted(by_request.get(request_id, []), key=lambda f: (f.partition, f.offset))
        if not results:
            report.lost += 1
            report.lost_ids.append(request_id)
            note("lost", request_id)
            continue
        first = results[0]
        if first.kind == "answer":
            report.answered += 1
        else:
            report.failed_explicitly += 1
            codes[f"{first.http_status} {first.code}"] += 1
        if len(results) > 1:
            report.duplicated += 1
            report.duplicated_ids.append(request_id)
            report.extra_finals += len(results) - 1
            if len({r.identity for r in results}) == 1:
                report.duplicated_identical += 1
                note("duplicated_identical", request_id)
            else:
                report.duplicated_conflicting += 1
                note("duplicated_conflicting", request_id)
    report.rejection_codes = dict(codes.most_common())
    orphans = [rid for rid in by_request if rid not in journaled]
    report.orphan_finals = sum(len(by_request[rid]) for rid in orphans)
    for rid in orphans:
        note("orphan_finals", rid)

    for attempt in attempts:
        if 200 <= attempt.status < 300 and attempt.request_id not in journaled:
            report.unjournaled_2xx += 1
            note("unjournaled_2xx", f"{attempt.key} -> {attempt.request_id}")

    report.client = _client_summary(attempts, journaled, by_request, note)
    report.idempotency = _idempotency_summary(journal, by_request, note)
    report.examples = dict(examples)
    return report


def _client_summary(
    attempts: Sequence[ClientAttempt],
    journaled: dict[str, Journaled],
    by_request: dict[str, list[Final]],
    note: Any,
) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    keys: dict[str, list[ClientAttempt]] = defaultdict(list)
    corrupted = mismatched = 0
    for attempt in attempts:
        statuses[str(attempt.status) if attempt.status else "no answer"] += 1
        keys[attempt.key].append(attempt)
        if not 200 <= attempt.status < 300:
            continue
        if attempt.content_ok is False:
            corrupted += 1
            note("corrupted_2xx", f"{attempt.key} -> {attempt.request_id}")
        results = by_request.get(attempt.request_id or "", [])
        if attempt.request_id in journaled and results and results[0].kind != "answer":
            mismatched += 1  # the client was told success, the log says the request failed
            note("client_log_mismatch", f"{attempt.key} -> {attempt.request_id}")
    ok_keys = [k for k, tries in keys.items() if any(200 <= a.status < 300 for a in tries)]
    never_ok = [k for k in keys if k not in set(ok_keys)]
    for key in never_ok:
        note("keys_without_2xx", key)
    return {
        "requests": len(keys),
        "attempts": len(attempts),
        "retried_keys": sum(1 for tries in keys.values() if len(tries) > 1),
        "keys_with_2xx": len(ok_keys),
        "keys_without_2xx": len(never_ok),
        "statuses": dict(sorted(statuses.items())),
        "corrupted_2xx": corrupted,
        "client_log_mismatch": mismatched,
    }


def _idempotency_summary(
    journal: list[Journaled], by_request: dict[str, list[Final]], note: Any
) -> dict[str, Any]:
    per_key: dict[str, set[str]] = defaultdict(set)
    for record in journal:
        if record.idempotency_key:
            per_key[record.idempotency_key].add(record.request_id)
    rerun = [k for k, ids in per_key.items() if len(ids) > 1]
    answered_twice = [
        k
        for k in rerun
        if sum(1 for rid in per_key[k] if any(f.kind == "answer" for f in by_request.get(rid, [])))
        > 1
    ]
    for key in rerun:
        note("keys_journaled_more_than_once", key)
    return {
        "keys": len(per_key),
        "keys_journaled_more_than_once": len(rerun),
        "keys_answered_more_than_once": len(answered_twice),
    }


@dataclass(frozen=True, slots=True)
class Kill:
    """One kill -9 of the chaos loop: when (epoch s), what, and when it answered again."""

    at: float
    role: str
    pid: int | None
    ready_at: float | None = None


def attribute_duplicates(
    duplicated_ids: Iterable[str],
    finals: Iterable[Final],
    final_times_ms: dict[tuple[int, int], int],
    tasks: Iterable[tuple[str, int, int]],
    kills: Sequence[Kill],
) -> dict[str, Any]:
    """Why each duplicated request got a second result, from the log alone.

    `stage`: `admission` when the first InferenceTask (attempt 1) is on the pool topic more than
    once (the Faust agent processed the RequestReceived again), else `inference` (one task, run
    twice: the inference worker's offset was not committed). `after_kill`: the last kill before
    the second result was written.
    """
    wanted = set(duplicated_ids)
    per_task: Counter[tuple[str, int]] = Counter(
        (rid, attempt) for rid, attempt, _ts in tasks if rid in wanted
    )
    seconds: dict[str, int] = {}
    ordered = sorted(
        (f for f in finals if f.request_id in wanted), key=lambda f: (f.partition, f.offset)
    )
    seen: set[str] = set()
    for final in ordered:
        if final.request_id in seen and final.request_id not in seconds:
            seconds[final.request_id] = final_times_ms.get((final.partition, final.offset), 0)
        seen.add(final.request_id)
    stages: Counter[str] = Counter()
    after: Counter[str] = Counter()
    for rid in wanted:
        stage = "admission" if per_task[(rid, 1)] > 1 else "inference"
        stages[stage] += 1
        at_s = seconds.get(rid, 0) / 1000
        before = [k for k in kills if k.at <= at_s]
        after[before[-1].role if before else "no kill before it"] += 1
    return {"stage": dict(stages.most_common()), "after_kill": dict(after.most_common())}


def attribute_lost(
    lost_ids: Iterable[str], journal_times_ms: dict[str, int], kills: Sequence[Kill]
) -> dict[str, int]:
    """The last kill before each lost request was journaled."""
    after: Counter[str] = Counter()
    for rid in lost_ids:
        at_s = journal_times_ms.get(rid, 0) / 1000
        before = [k for k in kills if k.at <= at_s]
        after[before[-1].role if before else "no kill before it"] += 1
    return dict(after.most_common())


def stream_replays(chunks: Iterable[tuple[str, int]]) -> dict[str, int]:
    """TokenChunks on sg.stream written more than once for the same (request_id, index): a task
    that streamed, died with its worker, and streamed again from the start."""
    counts = Counter(chunks)
    again = [key for key, n in counts.items() if n > 1]
    return {
        "chunks_written_again": sum(counts[key] - 1 for key in again),
        "requests_streamed_again": len({rid for rid, _index in again}),
    }


def latency_summary(attempts: Sequence[ClientAttempt]) -> dict[str, Any]:
    """p50/p99 of the 2xx attempts' latency, during chaos (a component down or restarting)
    and calm."""
    out: dict[str, Any] = {}
    for label, chaos in (("calm", False), ("chaos", True)):
        values = sorted(
            a.latency_s for a in attempts if 200 <= a.status < 300 and a.during_chaos is chaos
        )
        out[label] = {
            "n": len(values),
            "p50_s": _quantile(values, 0.50),
            "p99_s": _quantile(values, 0.99),
            "max_s": round(values[-1], 3) if values else None,
        }
    return out


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return round(values[index], 3)


def render_table(report: Report, meta: dict[str, Any]) -> str:
    """The report as a markdown table (printed, and pasted into docs/benchmarks.md)."""
    client = report.client
    rows = [
        (
            "offered",
            f"{meta.get('rate')} req/s for {meta.get('minutes')} min, seed {meta.get('seed')}",
        ),
        ("kills", ", ".join(f"{k} {v}" for k, v in (meta.get("kills") or {}).items()) or "none"),
        (
            "client requests (keys) / attempts",
            f"{client.get('requests')} / {client.get('attempts')}",
        ),
        ("client statuses (per attempt)", _inline(client.get("statuses", {}))),
        ("keys that never got a 2xx", client.get("keys_without_2xx")),
        ("journaled requests", report.journaled),
        ("answered (ResponseReady)", report.answered),
        ("failed explicitly (RequestRejected)", report.failed_explicitly),
        ("rejections by status and code", _inline(report.rejection_codes) or "none"),
        ("**lost** (journaled, no final result)", report.lost),
        (
            "**duplicated** (>1 final result): identical / conflicting",
            f"{report.duplicated}: {report.duplicated_identical} / {report.duplicated_conflicting}",
        ),
        ("**unjournaled 2xx**", report.unjournaled_2xx),
        ("corrupted 2xx (text differs from the expected answer)", client.get("corrupted_2xx")),
        ("2xx whose log result is a rejection", client.get("client_log_mismatch")),
        (
            "Idempotency-Keys journaled more than once / answered more than once",
            f"{report.idempotency.get('keys_journaled_more_than_once')} / "
            f"{report.idempotency.get('keys_answered_more_than_once')}",
        ),
        ("final results for unknown request_ids", report.orphan_finals),
    ]
    latency = meta.get("latency") or {}
    for label in ("calm", "chaos"):
        cell = latency.get(label)
        if cell:
            rows.append(
                (
                    f"2xx latency {label} (n, p50, p99, max s)",
                    f"{cell['n']}, {cell['p50_s']}, {cell['p99_s']}, {cell['max_s']}",
                )
            )
    rows.append(
        (
            "goal (0 lost, 0 duplicated, 0 unjournaled 2xx)",
            "met" if report.goal_met else "**not met**",
        )
    )
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def _inline(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())
