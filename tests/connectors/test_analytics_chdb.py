"""The ClickHouse adapter on chDB in a temporary path: migrations, inserts, every view and every
query shipped in docs/analytics.md, and idempotency under a redelivered batch."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sluicegate.connectors.analytics import (
    AnalyticsSink,
    ClickHouseAnalytics,
    QueryResult,
    load_migrations,
)
from sluicegate.errors import AnalyticsError
from sluicegate.processors.analytics_rows import rows_for
from sluicegate.processors.envelope import now
from sluicegate.schemas.models import (
    AuditRecord,
    BudgetAlert,
    ChatMessage,
    CostEntry,
    DeadLetter,
    DeploymentHealth,
    DriftDetected,
    EvalCaseResult,
    EvalRunCompleted,
    Event,
    InferenceFailed,
    InferenceResult,
    RequestReceived,
    RequestRejected,
    ResponseReady,
    SamplingParams,
    Span,
    TokenUsage,
)
from sluicegate.settings import AnalyticsSettings
from tests.builders import envelope

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"
# All events in one minute a minute ago, so per-minute and per-day groups are single groups;
# never before today's midnight (UTC), so "today" and "this month" hold them all.
_NOW = now()
BASE = max(
    _NOW.replace(second=0, microsecond=0) - timedelta(minutes=1),
    _NOW.replace(hour=0, minute=0, second=0, microsecond=0),
)


def shipped_queries() -> dict[str, str]:
    blocks = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S)
    queries = {}
    for block in blocks:
        name = re.match(r"-- query: (\w+)\n", block)
        assert name, f"a shipped query without a `-- query: name` line:\n{block}"
        queries[name.group(1)] = block
    return queries


def _at(seconds: int, **overrides: object) -> dict:
    return envelope(occurred_at=BASE + timedelta(seconds=seconds), **overrides)


def dataset() -> list[Event]:
    """acme/gpt-fake: 5 requests. acme-0 answered by `fake` at once; acme-1 after a retry on
    `fake` (503 first); acme-2 after a fallback from `other` (timeout) to `fake`; acme-3 given up
    after a 429 from `fake`; acme-4 refused at admission by the rate limiter. Answers take 10,
    20, 30 ms. beta/smollm2: 1 request answered from the cache. Plus breaker moves of `other`
    (one reprocessed), a latency update of `fake`, budget alerts for key k1 (one reprocessed),
    and a dead letter."""
    usage = TokenUsage(prompt_tokens=5, completion_tokens=7, total_tokens=12)
    answer = ChatMessage(role="assistant", content="ok")
    events: list[Event] = []
    # request → (admission span attributes, failed attempts before the answer, cost attribution)
    routes = {
        0: ({"strategy": "priority", "deployment": "fake", "fallbacks": "other"}, []),
        1: (
            {"strategy": "priority", "deployment": "fake", "fallbacks": "other"},
            [("fake", "server_error", 503)],
        ),
        2: (
            {
                "strategy": "latency",
                "deployment": "other",
                "fallbacks": "fake",
                "skipped": "slow: breaker open",
            },
            [("other", "timeout", None)],
        ),
        3: ({"strategy": "priority", "deployment": "fake", "fallbacks": ""}, []),
    }
    spend = {0: ("k1", "u1", "chat", 0.001), 1: ("k1", "u2", "chat", 0.002)}
    spend[2] = ("k2", "u1", "search", 0.004)
    for i, latency in enumerate((10.0, 20.0, 30.0, None, None)):
        rid = f"acme-{i}"
        events.append(
            RequestReceived(
                **_at(i, tenant_id="acme", request_id=rid),
                model="gpt-fake",
                messages=[ChatMessage(role="user", content="hello")],
                params=SamplingParams(temperature=0.0),
            )
        )
        if i == 4:
            events.append(
                RequestRejected(
                    **_at(i + 1, tenant_id="acme", request_id=rid),
                    stage="admission",
                    error_type="rate_limit_error",
                    code="rate_limit_exceeded",
                    message="key k1: 4 requests/min",
                    http_status=429,
                    retry_after_s=1.5,
                    headers={"x-ratelimit-limit-requests": "4"},
                )
            )
            events.append(
                Span(
                    **_at(i, tenant_id="acme", request_id=rid),
                    name="admission",
                    start_ms=BASE,
                    end_ms=BASE + timedelta(milliseconds=2),
                    status="error",
                    attributes={"decision": "rejected:rate_limit_exceeded"},
                )
            )
            continue
        attributes, failures = routes[i]
        events.append(
            Span(
                **_at(i, tenant_id="acme", request_id=rid),
                name="admission",
                start_ms=BASE,
                end_ms=BASE + timedelta(milliseconds=2),
                status="ok",
                attributes=attributes,
            )
        )
        for attempt, (deployment, error_class, status_code) in enumerate(failures, start=1):
            events.append(
                InferenceFailed(
                    **_at(i + 1, tenant_id="acme", request_id=rid),
                    deployment=deployment,
                    error_class=error_class,
                    message=error_class,
                    status_code=status_code,
                    retriable=True,
                    latency_ms=50.0,
                    attempt=attempt,
                )
            )
        if latency is None:
            events.append(
                RequestRejected(
                    **_at(i + 1, tenant_id="acme", request_id=rid),
                    stage="inference",
                    error_type="rate_limit_error",
                    code="rate_limited",
                    message="slow down",
                    http_status=429,
                )
            )
            events.append(
                InferenceFailed(
                    **_at(i + 1, tenant_id="acme", request_id=rid),
                    deployment="fake",
                    error_class="rate_limited",
                    message="429",
                    retriable=True,
                    latency_ms=5.0,
                )
            )
            continue
        events.append(
            ResponseReady(
                **_at(i + 1, tenant_id="acme", request_id=rid),
                model="gpt-fake",
                deployment="fake",
                provider_model="fake-model",
                message=answer,
                finish_reason="stop",
                usage=usage,
                latency_ms=latency,
            )
        )
        events.append(
            InferenceResult(
                **_at(i + 1, tenant_id="acme", request_id=rid),
                deployment="fake",
                provider_model="fake-model",
                message=answer,
                finish_reason="stop",
                usage=usage,
                latency_ms=latency,
                ttft_ms=latency / 5,
                attempt=len(failures) + 1,
            )
        )
        key, user, feature, usd = spend[i]
        events.append(
            CostEntry(
                **_at(i + 1, tenant_id="acme", request_id=rid),
                model="gpt-fake",
                deployment="fake",
                api_key_id=key,
                prompt_tokens=5,
                completion_tokens=7,
                usd=usd,
                pricing_version="v1",
                user=user,
                feature=feature,
                estimated_tokens=16,
                latency_ms=int(latency),
            )
        )
        events.append(
            Span(
                **_at(i + 1, tenant_id="acme", request_id=rid),
                name="inference",
                start_ms=BASE,
                end_ms=BASE + timedelta(milliseconds=latency),
                status="ok",
                attributes={"deployment": "fake"},
            )
        )
    events.append(
        RequestReceived(
            **_at(10, tenant_id="beta", request_id="beta-0"),
            model="smollm2-135m",
            messages=[ChatMessage(role="user", content="hi")],
            params=SamplingParams(),
        )
    )
    events.append(
        ResponseReady(
            **_at(11, tenant_id="beta", request_id="beta-0"),
            model="smollm2-135m",
            deployment="local",
            provider_model="smol",
            message=answer,
            finish_reason="stop",
            usage=TokenUsage(prompt_tokens=2, completion_tokens=3, total_tokens=5),
            latency_ms=1.0,
            cache_hit=True,
            usd_saved=0.02,
        )
    )
    events.append(
        CostEntry(
            **_at(11, tenant_id="beta", request_id="beta-0"),
            model="smollm2-135m",
            deployment="local",
            api_key_id="kb",
            prompt_tokens=0,
            completion_tokens=0,
            usd=0.0,
            pricing_version="cache",
            cache_hit=True,
            usd_saved=0.02,
        )
    )
    events.append(
        Span(
            **_at(10, tenant_id="beta", request_id="beta-0"),
            name="admission",
            start_ms=BASE,
            end_ms=BASE + timedelta(milliseconds=2),
            status="ok",
            attributes={"cache": "exact", "similarity": "1.0000", "deployment": "local"},
        )
    )
    events.append(
        DeadLetter(
            **_at(12),
            original_topic="sg.requests",
            original_partition=0,
            original_offset=7,
            original_value=b"\x00bad",
            error_class="SerializationError",
            error_message="bad magic byte",
            stage="admission",
        )
    )
    events += health_events() + budget_events() + quality_events()
    return events


OPENED = "timeout: 1/1 failures in the window"
PROBED = "half-open probe sent; slot leased for 30000 ms"
REOPENED = "probe failed with timeout; open again for another cool-down"


def _health(seconds: int, cause: str, previous: str, breaker: str, **fields: object) -> Event:
    return DeploymentHealth(
        **_at(seconds, tenant_id="acme", request_id="acme-2", parent_span_id=cause),
        previous_breaker=previous,
        breaker=breaker,
        **fields,
    )


def health_events() -> list[Event]:
    """`other` opens (the opening reprocessed: same cause, second copy), is probed, the probe
    fails and it opens again; `fake` only reports its latency."""
    ms = int(BASE.timestamp() * 1000)
    opened = {
        "deployment": "other",
        "open_until_ms": ms + 33_000,
        "reason": OPENED,
    }
    return [
        _health(3, "cause-a", "closed", "open", **opened),
        _health(9, "cause-a", "closed", "open", **opened),  # reprocessed: one transition
        _health(
            4,
            "cause-b",
            "closed",
            "closed",
            deployment="fake",
            latency_ewma_ms=20.0,
            ttft_ewma_ms=4.0,
            reason="success",
        ),
        _health(
            40,
            "cause-c",
            "open",
            "half_open",
            deployment="other",
            open_until_ms=ms + 70_000,
            reason=PROBED,
        ),
        _health(
            41,
            "cause-d",
            "half_open",
            "open",
            deployment="other",
            open_until_ms=ms + 71_000,
            reason=REOPENED,
        ),
    ]


def budget_events() -> list[Event]:
    """Key k1's daily budget of 0.003 USD: 50% crossed (alert reprocessed), then 100%."""
    crossing = {
        "subject_kind": "key",
        "subject_id": "k1",
        "period": "day",
        "period_start": BASE.date().isoformat(),
        "budget_usd": 0.003,
    }
    return [
        BudgetAlert(**_at(2, tenant_id="acme"), **crossing, threshold=0.5, spent_usd=0.001),
        BudgetAlert(**_at(8, tenant_id="acme"), **crossing, threshold=0.5, spent_usd=0.001),
        BudgetAlert(**_at(3, tenant_id="acme"), **crossing, threshold=1.0, spent_usd=0.003),
    ]


def _drift(seconds: int, metric: str, statistic: str, value: float, **fields: object) -> Event:
    window = {
        "window_start_ms": BASE - timedelta(minutes=5),
        "window_end_ms": BASE,
        "reference_count": 400,
        "current_count": 300,
    }
    return DriftDetected(
        **_at(seconds, tenant_id="acme", request_id=""),
        metric=metric,
        statistic=statistic,
        value=value,
        **(window | fields),
    )


def _audit(seconds: int, action: str, prev_hash: str, hash_: str, tenant: str = "acme") -> Event:
    return AuditRecord(
        **_at(seconds, tenant_id=tenant),
        actor="key:admin1",
        action=action,
        resource="key:k1",
        detail_json="{}",
        prev_hash=prev_hash,
        hash=hash_,
    )


def quality_events() -> list[Event]:
    """Drift: latency PSI (closed twice: one finding) and a cost anomaly. Evals: run r1 with
    three cases of `exact` (two pass) and its summary. Audit: acme's chain, whose third record
    does not link, and beta's own chain."""
    psi = {
        "threshold": 0.2,
        "reference_mean": 210.0,
        "current_mean": 290.0,
        "reference_start_ms": BASE - timedelta(minutes=10),
        "reference_end_ms": BASE - timedelta(minutes=5),
    }
    cases = [("c1", 1.0, True), ("c2", 0.0, False), ("c3", 1.0, True)]
    return [
        _drift(5, "latency_ms", "psi", 0.5, **psi),
        _drift(11, "latency_ms", "psi", 0.5, **psi),  # the same window closed again
        _drift(6, "usd", "ewma_z", 6.0, threshold=4.0, current_count=1, current_mean=0.3),
        *(
            EvalCaseResult(
                **_at(7 + i, tenant_id="acme", run_id="r1"),
                dataset="faq",
                case_id=case,
                metric="exact",
                score=score,
                passed=passed,
            )
            for i, (case, score, passed) in enumerate(cases)
        ),
        EvalRunCompleted(
            **_at(12, tenant_id="acme", run_id="r1"),
            dataset="faq",
            cases=3,
            scores={"exact": 2 / 3},
        ),
        _audit(1, "key.create", "", "h1"),
        _audit(2, "key.rotate", "h1", "h2"),
        _audit(3, "key.revoke", "hX", "h3"),
        _audit(1, "key.create", "", "b1", tenant="beta"),
    ]


def insert_all(store: AnalyticsSink, events: list[Event]) -> None:
    tables: dict[str, list[dict]] = {}
    for event in events:
        table, row = rows_for(event)
        tables.setdefault(table, []).append(row)
    for table, rows in tables.items():
        store.insert(table, rows)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseAnalytics]:
    # One chDB engine per process: this module's store is the only one the test process opens.
    path = tmp_path_factory.mktemp("chdb") / "db"
    store = ClickHouseAnalytics(settings=AnalyticsSettings(dsn=f"chdb://{path}"))
    yield store
    store.close()


def rows(result: QueryResult) -> list[dict]:
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


def test_migrations_apply_once_in_order_and_are_recorded(store: ClickHouseAnalytics) -> None:
    names = [m.name for m in load_migrations()]
    assert names == sorted(names) and names[0] == "0001_events"
    assert store.migrate() == names
    assert store.migrate() == []
    recorded = store.query("SELECT version, name FROM schema_migrations ORDER BY version").rows
    assert recorded == [(m.version, m.name) for m in load_migrations()]
    tables = {
        name
        for (name,) in store.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase()"
        ).rows
    }
    assert {
        "requests",
        "responses",
        "inference_results",
        "spans",
        "cost",
        "dead_letters",
        "v_latency_per_deployment_minute",
        "v_errors_per_deployment_hour",
        "v_requests_per_tenant_model_day",
        "v_cost_per_tenant_model_day",
        "deployment_health",
        "budget_alerts",
        "v_spend_per_key_day",
        "v_spend_per_feature_day",
        "v_rejections_per_code_hour",
        "v_breaker_transitions",
        "v_attempts_per_deployment_hour",
        "v_request_attempts",
        "v_routing_per_strategy_day",
        "v_budget_crossings",
        "eval_results",
        "eval_runs",
        "audit",
        "drift",
        "v_drift_findings",
        "v_eval_scores_per_run",
        "v_audit_actions_per_day",
    } <= tables


def test_the_leaderboard_ranks_models_and_prompt_versions_by_score_cost_and_latency(
    store: ClickHouseAnalytics,
) -> None:
    store.migrate()  # idempotent: the module's first test applied them already

    def result(run: str, case: str, model: str, prompt: str, passed: bool, usd: float, ms: float):
        return EvalCaseResult(
            **envelope(run_id=run),
            dataset="lb",
            case_id=case,
            metric="exact",
            score=1.0 if passed else 0.0,
            passed=passed,
            model=model,
            prompt_ref=prompt,
            cost_usd=usd,
            latency_ms=ms,
        )

    insert_all(
        store,
        [
            result("lb1", "a", "lb-small", "greet@1", True, 0.001, 100.0),
            result("lb1", "b", "lb-small", "greet@1", False, 0.001, 300.0),
            result("lb2", "a", "lb-big", "greet@2", True, 0.010, 200.0),
            result("lb2", "b", "lb-big", "greet@2", True, 0.012, 400.0),
            result("lb2", "a", "lb-big", "greet@2", True, 0.010, 200.0).model_copy(
                update={"run_id": None}  # live traffic is not on the leaderboard
            ),
        ],
    )
    board = rows(
        store.query(
            "SELECT model, prompt_ref, mean_score, pass_rate, cases, runs, usd_per_case, "
            "p50_latency_ms FROM v_leaderboard WHERE model LIKE 'lb-%' ORDER BY mean_score DESC",
            readonly=True,
        )
    )
    assert [(r["model"], r["prompt_ref"], r["mean_score"], r["cases"]) for r in board] == [
        ("lb-big", "greet@2", 1.0, 2),
        ("lb-small", "greet@1", 0.5, 2),
    ]
    assert board[0]["usd_per_case"] == pytest.approx(0.011)
    assert board[1]["p50_latency_ms"] == pytest.approx(200.0)
    assert board[0]["runs"] == 1
    store.query("TRUNCATE TABLE eval_results")  # the shipped queries' test counts its own rows


def check_answers(store: ClickHouseAnalytics) -> None:
    """Every shipped query, with the numbers the data set implies."""
    queries = shipped_queries()
    ran = {name: rows(store.query(sql, readonly=True)) for name, sql in queries.items()}
    day = BASE.date()

    spend = ran.pop("spend_per_tenant_model_last_7_days")
    assert [(r["tenant_id"], r["model"], r["entries"]) for r in spend] == [
        ("acme", "gpt-fake", 3),
        ("beta", "smollm2-135m", 1),
    ]
    assert [r["usd"] for r in spend] == [pytest.approx(0.007), 0.0]

    p95 = ran.pop("p95_latency_per_deployment_last_hour")
    assert [(r["deployment"], r["responses"], r["p95_ms"]) for r in p95] == [("fake", 3, 30.0)]

    hits = ran.pop("cache_hit_rate_per_tenant_day")
    assert [(r["day"], r["tenant_id"], r["hit_rate"]) for r in hits] == [
        (day, "acme", 0.0),
        (day, "beta", 1.0),
    ]
    assert hits[1]["usd_saved"] == pytest.approx(0.02)

    errors = ran.pop("error_rate_per_deployment_last_day")
    assert [(r["deployment"], r["n_attempts"], r["n_failures"]) for r in errors] == [
        ("fake", 5, 2),
        ("other", 1, 1),
    ]
    assert [r["error_rate"] for r in errors] == [pytest.approx(0.4), 1.0]

    rejections = ran.pop("rejections_by_status")
    assert [(r["http_status"], r["error_type"], r["rejected"]) for r in rejections] == [
        (429, "rate_limit_error", 2)
    ]

    per_day = ran.pop("requests_per_tenant_model_day")
    assert [tuple(r.values()) for r in per_day] == [
        (day, "acme", "gpt-fake", 5, 3, 2, 15, 21),
        (day, "beta", "smollm2-135m", 1, 1, 0, 2, 3),
    ]

    latency = ran.pop("latency_per_deployment_minute")
    assert [tuple(r.values()) for r in latency] == [
        (BASE.replace(tzinfo=None), "fake", 3, 20.0, 30.0, 30.0)
    ]

    journey = ran.pop("request_journey")
    assert len(journey) == 6
    assert {r["request_id"] for r in journey} == {f"acme-{i}" for i in range(5)} | {"beta-0"}
    assert all(r["end_to_end_ms"] == 1000 for r in journey)
    statuses = {r["request_id"]: r["http_status"] for r in journey}
    assert statuses["acme-3"] == statuses["acme-4"] == 429

    spans = ran.pop("p95_span_duration_by_stage")
    assert [(r["name"], r["spans"], r["p95_ms"]) for r in spans] == [
        ("inference", 3, 30.0),
        ("admission", 6, 2.0),
    ]

    letters = ran.pop("dead_letters_by_stage")
    assert [tuple(r.values()) for r in letters] == [
        ("sg.requests", "admission", "SerializationError", 1)
    ]

    check_gateway_answers(ran)
    check_quality_answers(ran)
    assert ran == {}, f"shipped queries without a checked answer: {sorted(ran)}"


def _t(seconds: int) -> datetime:
    """BASE + seconds as chDB returns a DateTime64('UTC'): naive, in UTC."""
    return (BASE + timedelta(seconds=seconds)).replace(tzinfo=None)


def check_gateway_answers(ran: dict[str, list[dict]]) -> None:
    """The shipped gateway queries (popped from `ran` as they are checked)."""
    keys = ran.pop("top_keys_by_spend_today")
    assert [tuple(r.values()) for r in keys] == [
        ("acme", "k2", 1, 12, pytest.approx(0.004), 0, 0.0),
        ("acme", "k1", 2, 24, pytest.approx(0.003), 0, 0.0),
        ("beta", "kb", 1, 0, 0.0, 1, pytest.approx(0.02)),
    ]

    features = ran.pop("spend_per_feature_user_this_month")
    assert [tuple(r.values()) for r in features] == [
        ("acme", "search", "u1", 1, 12, pytest.approx(0.004)),
        ("acme", "chat", "u2", 1, 12, pytest.approx(0.002)),
        ("acme", "chat", "u1", 1, 12, pytest.approx(0.001)),
        ("beta", None, None, 1, 0, 0.0),
    ]

    savings = ran.pop("cache_savings_per_tenant_this_month")
    assert [tuple(r.values()) for r in savings] == [
        ("beta", 1, 1, 0.0, pytest.approx(0.02)),
        ("acme", 3, 0, pytest.approx(0.007), 0.0),
    ]

    limited = ran.pop("rate_limited_per_tenant_last_hour")
    assert [tuple(r.values()) for r in limited] == [
        ("acme", "admission", "rate_limit_exceeded", 1, 1.5),
        ("acme", "inference", "rate_limited", 1, None),
    ]

    codes = ran.pop("rejections_per_code_last_day")
    assert [tuple(r.values()) for r in codes] == [
        ("admission", "rate_limit_exceeded", 429, 1),
        ("inference", "rate_limited", 429, 1),
    ]

    openings = ran.pop("breaker_openings_per_deployment_today")
    assert [tuple(r.values()) for r in openings] == [("other", 2, 1, _t(41), REOPENED)]

    moves = ran.pop("breaker_transitions_today")
    assert [tuple(r.values())[:5] for r in moves] == [
        (_t(3), "other", "closed", "open", _t(33)),  # the reprocessed copy (at +9 s) collapsed
        (_t(40), "other", "open", "half_open", _t(70)),
        (_t(41), "other", "half_open", "open", _t(71)),
    ]
    assert moves[0]["reason"] == OPENED

    health = ran.pop("deployment_health_now")
    assert [tuple(r.values()) for r in health] == [
        ("fake", "closed", None, 20.0, _t(4)),
        ("other", "open", _t(71), None, _t(41)),
    ]

    share = ran.pop("retry_or_fallback_share_per_deployment_last_day")
    assert [tuple(r.values())[:5] for r in share] == [("fake", 3, 1, 0, 2), ("other", 1, 0, 1, 1)]
    assert [r["share"] for r in share] == [pytest.approx(1 / 3), 1.0]

    failures = ran.pop("failures_per_deployment_class_last_day")
    assert [tuple(r.values()) for r in failures] == [
        ("fake", 5, 2, 2, {"rate_limited": 1, "server_error": 1}),
        ("other", 1, 0, 1, {"timeout": 1}),
    ]

    routing = ran.pop("routing_per_strategy_last_7_days")
    assert [tuple(r.values()) for r in routing] == [
        ("priority", "fake", 3, 2, 0),
        ("latency", "other", 1, 1, 1),
    ]

    alerts = ran.pop("budget_alerts_today")
    assert [tuple(r.values()) for r in alerts] == [
        (_t(2), "acme", "key", "k1", "day", 0.5, 0.003, 0.001, 2),
        (_t(3), "acme", "key", "k1", "day", 1.0, 0.003, 0.003, 1),
    ]


def check_quality_answers(ran: dict[str, list[dict]]) -> None:
    """The shipped drift, eval and audit queries (popped from `ran` as they are checked)."""
    reference, start, end = _t(-600), _t(-300), _t(0)
    drift = ran.pop("drift_findings_last_7_days")
    assert [tuple(r.values()) for r in drift] == [
        ("acme", "latency_ms", "psi", start, end, reference, 0.5, 0.2, 210.0, 290.0),
        ("acme", "usd", "ewma_z", start, end, None, 6.0, 4.0, None, 0.3),
    ]
    evals = ran.pop("eval_scores_per_run")
    assert [tuple(r.values()) for r in evals] == [
        ("r1", "faq", "exact", 3, pytest.approx(0.6667), pytest.approx(0.6667))
    ]
    trail = ran.pop("audit_trail_chain_check")
    assert [(r["action"], r["hash"], r["linked"]) for r in trail] == [
        ("key.create", "h1", True),
        ("key.rotate", "h2", True),
        ("key.revoke", "h3", False),
    ]


def check_gateway_views(store: ClickHouseAnalytics) -> None:
    """Every column of the views added by 0004_gateway, on the whole data set."""

    def view(sql: str) -> list[tuple]:
        return [tuple(r.values()) for r in rows(store.query(sql, readonly=True))]

    day, hour = BASE.date(), BASE.replace(minute=0, tzinfo=None)
    assert view("SELECT * FROM v_spend_per_key_day ORDER BY api_key_id") == [
        (day, "acme", "k1", 2, 0, 10, 14, 24, pytest.approx(0.003), 0.0),
        (day, "acme", "k2", 1, 0, 5, 7, 12, pytest.approx(0.004), 0.0),
        (day, "beta", "kb", 1, 1, 0, 0, 0, 0.0, pytest.approx(0.02)),
    ]
    assert view("SELECT * FROM v_spend_per_feature_day ORDER BY tenant_id, feature, user") == [
        (day, "acme", "chat", "u1", 1, 0, 12, pytest.approx(0.001), 0.0),
        (day, "acme", "chat", "u2", 1, 0, 12, pytest.approx(0.002), 0.0),
        (day, "acme", "search", "u1", 1, 0, 12, pytest.approx(0.004), 0.0),
        (day, "beta", None, None, 1, 1, 0, 0.0, pytest.approx(0.02)),
    ]
    assert view("SELECT * FROM v_rejections_per_code_hour ORDER BY stage") == [
        (hour, "acme", "admission", "rate_limit_exceeded", 429, 1),
        (hour, "acme", "inference", "rate_limited", 429, 1),
    ]
    assert view("SELECT * FROM v_breaker_transitions ORDER BY at") == [
        (_t(3), "other", "closed", "open", _t(33), OPENED, "acme", "acme-2"),
        (_t(40), "other", "open", "half_open", _t(70), PROBED, "acme", "acme-2"),
        (_t(41), "other", "half_open", "open", _t(71), REOPENED, "acme", "acme-2"),
    ]
    attempts = view("SELECT * FROM v_attempts_per_deployment_hour ORDER BY deployment")
    assert attempts[0] == (hour, "fake", 5, 2, 2, {"rate_limited": 1, "server_error": 1}, 30.0, 6.0)
    assert attempts[1][:6] == (hour, "other", 1, 0, 1, {"timeout": 1})
    assert math.isnan(attempts[1][6]) and attempts[1][7] is None  # no successful attempt
    assert view("SELECT * FROM v_request_attempts ORDER BY request_id") == [
        ("acme-0", "acme", _t(1), "fake", "fake", 1, 1, False, False, True),
        ("acme-1", "acme", _t(2), "fake", "fake", 2, 1, True, False, True),
        ("acme-2", "acme", _t(3), "other", "fake", 2, 2, False, True, True),
        ("acme-3", "acme", _t(4), "fake", "fake", 1, 1, False, False, False),
    ]
    assert view("SELECT * FROM v_routing_per_strategy_day ORDER BY strategy") == [
        (day, "acme", "latency", "other", 1, 1, 1),
        (day, "acme", "priority", "fake", 3, 2, 0),
    ]
    assert view("SELECT * FROM v_budget_crossings ORDER BY threshold") == [
        ("acme", "key", "k1", "day", day, 0.5, _t(2), 0.003, 0.001, 2),
        ("acme", "key", "k1", "day", day, 1.0, _t(3), 0.003, 0.003, 1),
    ]
    # What a rejection told the caller is kept with it.
    assert view(
        "SELECT request_id, retry_after_s, headers FROM responses FINAL "
        "WHERE status = 'rejected' ORDER BY request_id"
    ) == [("acme-3", None, {}), ("acme-4", 1.5, {"x-ratelimit-limit-requests": "4"})]
    assert view("SELECT * FROM v_audit_actions_per_day ORDER BY tenant_id, action") == [
        (day, "acme", "key:admin1", "key.create", 1),
        (day, "acme", "key:admin1", "key.revoke", 1),
        (day, "acme", "key:admin1", "key.rotate", 1),
        (day, "beta", "key:admin1", "key.create", 1),
    ]
    assert view("SELECT countIf(latency_ms IS NULL), max(latency_ms) FROM cost FINAL") == [(1, 30)]


DATASET = dataset()


def test_every_view_and_shipped_query_answers_right(store: ClickHouseAnalytics) -> None:
    store.migrate()
    insert_all(store, DATASET)
    check_answers(store)
    check_gateway_views(store)


def test_a_redelivered_batch_does_not_double_count(store: ClickHouseAnalytics) -> None:
    store.migrate()
    insert_all(store, DATASET)
    insert_all(store, DATASET)  # the same events again: what a crash before the commit causes
    raw = "SELECT count() FROM requests WHERE request_id = 'acme-0'"
    # Without FINAL the copies are visible (so a view that forgot FINAL would fail below)...
    assert store.query(raw).rows[0][0] >= 2
    # ...with FINAL or uniqExact they are not, and every shipped answer is unchanged.
    assert store.query(raw.replace("requests", "requests FINAL")).rows == [(1,)]
    assert store.query(
        "SELECT uniqExact(event_id) FROM requests WHERE request_id = 'acme-0'"
    ).rows == [(1,)]
    check_answers(store)
    check_gateway_views(store)


def test_readonly_queries_cannot_write(store: ClickHouseAnalytics) -> None:
    with pytest.raises(AnalyticsError) as raised:
        store.query("DROP TABLE requests", readonly=True)
    assert raised.value.retriable is False
    assert store.query("EXISTS TABLE requests").rows == [(1,)]


def test_vendor_errors_become_analytics_errors(store: ClickHouseAnalytics) -> None:
    with pytest.raises(AnalyticsError):
        store.query("SELECT nope FROM requests")
    with pytest.raises(AnalyticsError):
        store.insert("no_such_table", [{"a": 1}])
