"""Reading back and writing down the failing-upstream benchmark (bench/gateway_failures.py):
sluicegate's retries and fallbacks counted from its own journal, the stdout table and the
generated section of docs/benchmarks.md."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

from bench import _report

SECTION = "gateway-failures"
TITLES = {
    "direct": "primary, direct",
    "sluicegate": "sluicegate",
    "sluicegate-breaker": "sluicegate, default breaker",
    "litellm": "litellm",
    "litellm-default-backoff": "litellm, default backoff",
}


# -- the journal --------------------------------------------------------------------------


def journal_counts(
    bootstrap: str, prefix: str, windows: dict[int, tuple[float, float]]
) -> dict[int, dict[str, Any]]:
    """Per cell (keyed by rate): InferenceTasks by kind and failed attempts by class, from the
    pool and results topics, attributed to a cell by the record's CreateTime."""
    from bench.hops import read_topic
    from sluicegate.connectors.schema_registry import InMemorySchemaRegistry
    from sluicegate.schemas.models import DeploymentHealth, InferenceFailed, InferenceTask
    from sluicegate.schemas.serde import AvroSerde

    serde = AvroSerde(registry=InMemorySchemaRegistry())
    serde.register_all()  # the in-memory registry computes the embedded registry's ids
    out: dict[int, dict[str, Any]] = {
        rate: {
            "first": 0,
            "retries": 0,
            "fallbacks": 0,
            "failed": Counter(),
            "breaker": Counter(),
        }
        for rate in windows
    }

    def cell_of(ts_ms: int) -> dict[str, Any] | None:
        for rate, (t0, t1) in windows.items():
            if t0 * 1000 <= ts_ms <= t1 * 1000:
                return out[rate]
        return None

    for _key, ts, value in read_topic(bootstrap, f"{prefix}inference.default"):
        cell = cell_of(ts)
        event = serde.decode(value)
        if cell is None or not isinstance(event, InferenceTask):
            continue
        if event.attempt == 1:
            cell["first"] += 1
        elif event.deployment_attempt > 1:
            cell["retries"] += 1
        else:
            cell["fallbacks"] += 1
    for _key, ts, value in read_topic(bootstrap, f"{prefix}inference.results"):
        cell = cell_of(ts)
        event = serde.decode(value)
        if cell is not None and isinstance(event, InferenceFailed):
            cell["failed"][f"{event.deployment} {event.error_class}"] += 1
    for _key, ts, value in read_topic(bootstrap, f"{prefix}health"):
        cell = cell_of(ts)
        event = serde.decode(value)
        if cell is not None and isinstance(event, DeploymentHealth):
            if event.breaker != event.previous_breaker:
                move = f"{event.deployment} {event.previous_breaker}→{event.breaker}"
                cell["breaker"][move] += 1
    for cell in out.values():
        cell["failed"] = dict(sorted(cell["failed"].items()))
        cell["breaker"] = dict(sorted(cell["breaker"].items()))
    return out


# -- tables -------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _errors(result: dict[str, Any]) -> str:
    if not result["errors"]:
        return "0"
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(result["error_kinds"].items()))
    return f"{result['errors']} ({kinds})"


def success_pct(result: dict[str, Any]) -> float:
    return 100.0 * result["ok"] / max(1, result["scheduled"])


def main_table(report: dict[str, Any]) -> str:
    rows = []
    for cell in sorted(report["cells"], key=lambda c: (c["rate"], c["order"])):
        r = cell["result"]
        lat = r.get("latency_ms", {})
        calls = cell["upstream_calls"]
        sent = max(1, cell["requests_sent"])
        rows.append(
            [
                f"{cell['rate']} req/s",
                TITLES.get(cell["target"], cell["target"]),
                f"{success_pct(r):.2f}",
                f"{r['achieved_rps']:.1f}",
                _ms(lat.get("p50")),
                _ms(lat.get("p95")),
                _ms(lat.get("p99")),
                _ms(lat.get("max")),
                _errors(r),
                f"{calls['primary']['requests'] / sent:.3f}",
                f"{calls['backup']['requests'] / sent:.3f}",
                f"{cell['cpu']['gateway_pct']:.0f}" if cell["target"] != "direct" else "—",
                f"{cell['cpu']['roles_pct'].get('other', 0.0):.0f}",
            ]
        )
    header = [
        "load",
        "target",
        "success %",
        "ok req/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "errors",
        "primary calls/req",
        "backup calls/req",
        "gateway CPU %",
        "other CPU %",
    ]
    return _report.table(header, rows, align="ll" + "r" * 6 + "l" + "rrrr")


def journal_table(report: dict[str, Any]) -> str:
    rows = []
    for cell in sorted(report["cells"], key=lambda c: (c["rate"], c["order"])):
        journal = cell.get("journal")
        if journal is None:
            continue
        first = max(1, journal["first"])
        failed = ", ".join(f"{k} {v}" for k, v in journal["failed"].items()) or "0"
        rows.append(
            [
                f"{cell['rate']} req/s",
                TITLES.get(cell["target"], cell["target"]),
                str(journal["first"]),
                f"{journal['retries']} ({100 * journal['retries'] / first:.1f}%)",
                f"{journal['fallbacks']} ({100 * journal['fallbacks'] / first:.1f}%)",
                failed,
                ", ".join(f"{k} {v}" for k, v in journal.get("breaker", {}).items()) or "none",
            ]
        )
    header = ["load", "target", "requests", "retries", "fallbacks", "failed attempts", "breaker"]
    return _report.table(header, rows, align="llrrrll")


def render_table(report: dict[str, Any]) -> str:
    out = main_table(report)
    if any("journal" in c for c in report["cells"]):
        out += (
            "\n\nsluicegate's journal (InferenceTask / InferenceFailed records of the cells):\n\n"
        )
        out += journal_table(report)
    return out


def render_docs(report: dict[str, Any]) -> str:
    cfg = report["config"]
    day = report["started"][:10]
    res = SimpleNamespace(**report["resilience"])
    sg = report.get("sluicegate_settings", {})
    lite = report.get("litellm_settings", {})
    lines = [
        f"## Failing upstream: retries and fallbacks next to LiteLLM ({day})",
        "",
        f"`{report['command']}` took {report['duration_s'] / 60:.1f} minutes. Two zero-latency "
        "fake upstreams on loopback (`tests/fakes/openai_upstream.py`, one aiohttp process "
        f"each): `primary` answers a random {cfg['fail_rate']:.0%} of chat requests with 500 "
        f"(`--fail-rate {cfg['fail_rate']} --seed {cfg['seed']}`), `backup` always succeeds. "
        f"Both gateways serve the model `gpt-bench` as primary, then backup: retry the primary "
        f"{res.max_retries} time(s) after a failure, then fall back to the backup. Open loop "
        f"from `bench/loadgen`, latency from each request's intended send time, "
        f"{cfg['duration']:g} s per rate after {cfg['warmup']:g} s of unmeasured warm-up at the "
        f"same rate; requests time out after {cfg['timeout']:g} s. Targets run one after the "
        "other.",
        "",
        "- **primary, direct**: the loadgen calls the failing upstream itself; nothing retries.",
        "- **sluicegate**: alias `gpt-bench` → [primary, backup], strategy `priority`, the "
        "request path of the bridge benchmark (bridge + Faust worker + inference worker, "
        f"inference_concurrency {sg.get('inference_concurrency', '?')}, fresh topic prefix and "
        f"groups per target, removed afterwards); `resilience`: max_retries {res.max_retries}, "
        f"backoff_base_s {res.backoff_base_s}, backoff_max_s {res.backoff_max_s} (full jitter: "
        f"the first retry waits U(0, {res.backoff_base_s}) s), breaker_failures "
        f"{res.breaker_failures} in {res.breaker_window_s:g} s (so the breaker never opens at "
        "these rates).",
        "- **sluicegate, default breaker**: the same, but breaker_failures / window / cool-down "
        "at their defaults (5 failures in 30 s open it for 30 s).",
        f"- **litellm**: LiteLLM proxy {report['versions'].get('litellm', '?')}, "
        f"`--num_workers {lite.get('workers', '?')}`, master key, no database or callbacks; "
        "`gpt-bench` (primary) and `gpt-bench-backup` (backup) as two model groups, "
        "`router_settings: {num_retries: 1, retry_after: 0, fallbacks: "
        '[{"gpt-bench": ["gpt-bench-backup"]}]}`, and the retry sleep made the same as '
        "sluicegate's through LiteLLM's environment knobs (`INITIAL_RETRY_DELAY=0`, "
        f"`JITTER={res.backoff_base_s}`, `MAX_RETRY_DELAY={res.backoff_max_s}`: the first retry "
        f"waits U(0, {res.backoff_base_s}) s). LiteLLM never cools a single-deployment group "
        "down, so every request tries the primary first, as in the sluicegate row.",
        "- **litellm, default backoff**: the same config with LiteLLM's default retry sleep "
        "(0.5 s · 2^n + U(0, 0.75) s).",
        "",
        "Success % is successful answers over requests due in the measured window; latency "
        "percentiles are over the successful ones (the loadgen times successes only, so there "
        "is no p99 over all requests; where success is 100% the p99 shown is that). "
        "`primary/backup calls/req` are the chat requests each fake saw during the cell "
        "(warm-up included) per request the loadgen sent: 1.2 / 0.04 is one try, a retry of "
        "the 20% that fail and a fallback for the 4% that fail twice. `gateway CPU %` is the "
        "gateway's processes (bridge + workers + broker, or LiteLLM's) over the cell, "
        "% of one core (200% = both cores); `other CPU %` is what the rest of the machine "
        "used meanwhile (not the gateway, the fakes or the loadgen: the box is shared).",
        "",
        _report.describe(report["machine"], report["versions"]),
        "",
        main_table(report),
    ]
    if any("journal" in c for c in report["cells"]):
        lines += [
            "",
            "sluicegate's own account, from its journal: InferenceTask records on the pool "
            "topic (`attempt` 1 = a request's first try; later attempts on the same deployment "
            "are retries, on another one fallbacks) and InferenceFailed records on the results "
            "topic, for the whole cell including warm-up:",
            "",
            journal_table(report),
        ]
    lines += ["", f"Raw results: `bench/results/{report['stamp']}/gateway_failures.json`."]
    return "\n".join(lines)


def write_docs(report: dict[str, Any]) -> None:
    _report.replace_section(SECTION, render_docs(report))


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
