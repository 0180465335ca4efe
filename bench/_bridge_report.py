"""Tables of the bridge-overhead benchmark: plain text for the terminal, markdown for the docs."""

from __future__ import annotations

import math
from typing import Any

from bench import _report

TARGET_RATE = 150  # the target: sluicegate p99 at 150 req/s <= half of LiteLLM's
HOLD_RATE = 500  # ... and 500 req/s served without queueing collapse


def queue_state(cell: dict[str, Any]) -> str:
    """steady, growing (latency rises through the run) or collapsed (cannot keep the rate)."""
    result, offered = cell["result"], cell["level"]
    if result["ok"] == 0:
        return "collapsed"
    error_rate = result["errors"] / max(1, result["scheduled"])
    if result["achieved_rps"] < 0.9 * offered or error_rate > 0.01:
        return "collapsed"
    quarters = result.get("quarter_p50_ms") or []
    if len(quarters) == 4 and quarters[3] > 2 * quarters[0] + 20:
        return "growing"
    return "steady"


def _ms(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _row(cell: dict[str, Any]) -> list[str]:
    r = cell["result"]
    lat = r["latency_ms"]
    errors = str(r["errors"])
    if r["error_kinds"]:
        errors += " (" + ", ".join(f"{k} {v}" for k, v in sorted(r["error_kinds"].items())) + ")"
    row = [
        f"{r['achieved_rps']:.1f}",
        _ms(lat.get("p50")),
        _ms(lat.get("p95")),
        _ms(lat.get("p99")),
        errors,
    ]
    if cell["mode"] == "open":
        row.append(queue_state(cell))
    return row


def _cells(report: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    order = {t: i for i, t in enumerate(("upstream", "sluicegate", "litellm"))}
    cells = [c for c in report["cells"] if c["mode"] == mode]
    return sorted(cells, key=lambda c: (c["level"], order.get(c["target"], 9)))


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'load':<16} {'target':<11} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8}  errors / queue"
    ]
    for mode, unit in (("open", "req/s"), ("closed", "conc")):
        for cell in _cells(report, mode):
            row = _row(cell)
            tail = row[4] + (f" / {row[5]}" if mode == "open" else "")
            load = f"{mode} {cell['level']} {unit}"
            lines.append(
                f"{load:<16} {cell['target']:<11} "
                f"{row[0]:>8} {row[1]:>8} {row[2]:>8} {row[3]:>8}  {tail}"
            )
    lines.append("")
    lines.extend(verdict(report))
    return "\n".join(lines)


def _find(report: dict[str, Any], target: str, mode: str, level: int) -> dict[str, Any] | None:
    return next(
        (
            c
            for c in report["cells"]
            if c["target"] == target and c["mode"] == mode and c["level"] == level
        ),
        None,
    )


def verdict(report: dict[str, Any]) -> list[str]:
    out = []
    sg, lt = (
        _find(report, "sluicegate", "open", TARGET_RATE),
        _find(report, "litellm", "open", TARGET_RATE),
    )
    if sg and lt and sg["result"]["latency_ms"] and lt["result"]["latency_ms"]:
        p_sg, p_lt = sg["result"]["latency_ms"]["p99"], lt["result"]["latency_ms"]["p99"]
        met = "met" if p_sg <= 0.5 * p_lt and queue_state(sg) == "steady" else "NOT met"
        out.append(
            f"- p99 at {TARGET_RATE} req/s: sluicegate {p_sg:.1f} ms vs LiteLLM "
            f"{p_lt:.1f} ms = {p_sg / p_lt:.2f}x (target <= 0.50x): {met}"
        )
    hold = _find(report, "sluicegate", "open", HOLD_RATE)
    if hold:
        state = queue_state(hold)
        r = hold["result"]
        out.append(
            f"- sluicegate at {HOLD_RATE} req/s: {state} ({r['achieved_rps']:.0f} req/s "
            f"achieved, p99 {_ms(r['latency_ms'].get('p99'))} ms, {r['errors']} errors): "
            f"{'met' if state == 'steady' else 'NOT met'}"
        )
    return out


def _cpu_rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for cell in _cells(report, "open") + _cells(report, "closed"):
        pct = cell["cpu"]["roles_pct"]
        proxy = pct.get("bridge", pct.get("litellm"))
        load = f"{cell['mode']} {cell['level']}"
        rows.append(
            [load, cell["target"]]
            + [
                "—" if v is None else f"{v:.0f}"
                for v in (
                    proxy,
                    pct.get("worker"),
                    pct.get("kafka"),
                    pct.get("upstream"),
                    pct.get("loadgen"),
                    pct.get("other"),
                    cell["cpu"]["machine_pct"],
                )
            ]
        )
    return rows


def _cost_rows(report: dict[str, Any]) -> list[list[str]]:
    """CPU milliseconds per successful request, per process role, in each closed-loop cell."""
    rows = []
    for cell in _cells(report, "closed"):
        rps = cell["result"]["achieved_rps"]
        if rps <= 0:
            continue
        pct = cell["cpu"]["roles_pct"]
        per = {role: pct[role] * 10 / rps for role in pct}  # % of a core -> ms per request
        proxy = per.get("bridge", per.get("litellm"))
        own = sum(v for k, v in per.items() if k in ("bridge", "worker", "kafka", "litellm"))
        rows.append(
            [str(cell["level"]), cell["target"]]
            + [
                "—" if v is None else f"{v:.2f}"
                for v in (
                    proxy,
                    per.get("worker"),
                    per.get("kafka"),
                    own or None,
                    per.get("upstream"),
                    per.get("loadgen"),
                )
            ]
        )
    return rows


def _threads(report: dict[str, Any]) -> str:
    cell = _find(report, "sluicegate", "open", HOLD_RATE)
    if not cell or not cell["cpu"].get("threads_pct"):
        return ""
    parts = []
    for role, threads in cell["cpu"]["threads_pct"].items():
        top = ", ".join(
            f"{name.split('[')[0]} {pct:.0f}%" for name, pct in list(threads.items())[:6]
        )
        parts.append(f"- {role}: {top}")
    return (
        f"Busiest threads of the sluicegate processes at {HOLD_RATE} req/s (% of one core; "
        "`main` is the Python thread running the event loop, `rdk:*` are librdkafka's):\n\n"
        + "\n".join(parts)
    )


def render_docs(report: dict[str, Any]) -> str:
    cfg = report["config"]
    head = ["load", "target", "achieved req/s", "p50 ms", "p95 ms", "p99 ms", "errors"]
    open_rows = [[f"{c['level']} req/s", c["target"], *_row(c)] for c in _cells(report, "open")]
    closed_rows = [[f"{c['level']}", c["target"], *_row(c)] for c in _cells(report, "closed")]
    cpu_head = [
        "load",
        "target",
        "bridge / litellm",
        "worker",
        "kafka",
        "upstream",
        "loadgen",
        "other",
        "machine",
    ]
    parts = [
        f"## Bridge overhead ({report['started'][:10]})",
        f"`{report['command']}` took {report['duration_s'] / 60:.1f} minutes. Every target sits in "
        "front of the same zero-latency fake upstream (`tests/fakes/openai_upstream.py`, one "
        "aiohttp process); the request is a non-streaming chat completion with one short user "
        "message. sluicegate journals every request on its requests topic (idempotent producer, "
        f"acks=all) before the worker calls the upstream (worker inference_concurrency "
        f"{cfg['inference_concurrency']}); LiteLLM runs `--num_workers {cfg['litellm_workers']}` "
        "with a master key and no database, callbacks or cost-map download. Load comes from "
        "`bench/loadgen` (Go): open loop measures each request from its *intended* send time "
        f"({cfg['duration']:g} s per rate after {cfg['warmup']:g} s of unmeasured warm-up at the "
        f"same rate); closed loop runs {cfg['closed_duration']:g} s per level. Requests time out "
        f"after {cfg['timeout']:g} s (sluicegate's bridge answers 504 two seconds earlier). "
        "Latency percentiles are over successful requests; the queue column says whether the "
        "target kept the offered rate (steady), kept it while latency rose through the run "
        "(growing), or fell behind by more than 10% / failed more than 1% (collapsed).",
        _report.describe(report["machine"], report["versions"]),
        "### Open loop (fixed offered rate)",
        _report.table([*head, "queue"], open_rows, "llrrrrll"),
        "### Closed loop (fixed concurrency)",
        _report.table(head, closed_rows, "llrrrrl"),
        "### Against the issue's target",
        "\n".join(verdict(report)) or "- (sluicegate or LiteLLM was not in this run)",
        "### CPU per process (% of one core, whole cell including warm-up; 200% = both cores)",
        _report.table(cpu_head, _cpu_rows(report), "ll" + "r" * 7),
        "CPU cost per request in the closed-loop cells (CPU ms per successful request; "
        "`target total` is the proxy's own processes, for sluicegate bridge + worker + broker):",
        _report.table(
            [
                "concurrency",
                "target",
                "bridge / litellm",
                "worker",
                "kafka",
                "target total",
                "upstream",
                "loadgen",
            ],
            _cost_rows(report),
            "ll" + "r" * 6,
        ),
        _threads(report),
    ]
    return "\n\n".join(p for p in parts if p)
