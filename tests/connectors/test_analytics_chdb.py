"""The ClickHouse adapter on chDB in a temporary path: migrations, inserts, every view and every
query shipped in docs/analytics.md, and idempotency under a redelivered batch."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
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
    ChatMessage,
    CostEntry,
    DeadLetter,
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
# All events in one minute a minute ago, so per-minute and per-day groups are single groups.
BASE = now().replace(second=0, microsecond=0) - timedelta(minutes=1)


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
    """acme/gpt-fake: 4 requests, 3 answered by `fake` (10, 20, 30 ms), 1 rejected 429;
    beta/smollm2: 1 request answered from the cache by `local`."""
    usage = TokenUsage(prompt_tokens=5, completion_tokens=7, total_tokens=12)
    answer = ChatMessage(role="assistant", content="ok")
    events: list[Event] = []
    for i, latency in enumerate((10.0, 20.0, 30.0, None)):
        rid = f"acme-{i}"
        events.append(
            RequestReceived(
                **_at(i, tenant_id="acme", request_id=rid),
                model="gpt-fake",
                messages=[ChatMessage(role="user", content="hello")],
                params=SamplingParams(temperature=0.0),
            )
        )
        if latency is None:
            events.append(
                RequestRejected(
                    **_at(i + 1, tenant_id="acme", request_id=rid),
                    stage="inference",
                    error_type="rate_limit_error",
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
            )
        )
        events.append(
            CostEntry(
                **_at(i + 1, tenant_id="acme", request_id=rid),
                model="gpt-fake",
                deployment="fake",
                prompt_tokens=5,
                completion_tokens=7,
                usd=0.001,
                pricing_version="v1",
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
    return events


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
    } <= tables


def check_answers(store: ClickHouseAnalytics) -> None:
    """Every shipped query, with the numbers the data set implies."""
    queries = shipped_queries()
    ran = {name: rows(store.query(sql, readonly=True)) for name, sql in queries.items()}
    day = BASE.date()

    spend = ran.pop("spend_per_tenant_model_last_7_days")
    assert [(r["tenant_id"], r["model"], r["entries"]) for r in spend] == [("acme", "gpt-fake", 3)]
    assert spend[0]["usd"] == pytest.approx(0.003)

    p95 = ran.pop("p95_latency_per_deployment_last_hour")
    assert [(r["deployment"], r["responses"], r["p95_ms"]) for r in p95] == [("fake", 3, 30.0)]

    hits = ran.pop("cache_hit_rate_per_tenant_day")
    assert [(r["day"], r["tenant_id"], r["hit_rate"]) for r in hits] == [
        (day, "acme", 0.0),
        (day, "beta", 1.0),
    ]
    assert hits[1]["usd_saved"] == pytest.approx(0.02)

    errors = ran.pop("error_rate_per_deployment_last_day")
    assert [(r["deployment"], r["n_attempts"], r["n_failures"]) for r in errors] == [("fake", 4, 1)]
    assert errors[0]["error_rate"] == pytest.approx(0.25)

    rejections = ran.pop("rejections_by_status")
    assert [(r["http_status"], r["error_type"], r["rejected"]) for r in rejections] == [
        (429, "rate_limit_error", 1)
    ]

    per_day = ran.pop("requests_per_tenant_model_day")
    assert [tuple(r.values()) for r in per_day] == [
        (day, "acme", "gpt-fake", 4, 3, 1, 15, 21),
        (day, "beta", "smollm2-135m", 1, 1, 0, 2, 3),
    ]

    latency = ran.pop("latency_per_deployment_minute")
    assert [tuple(r.values()) for r in latency] == [
        (BASE.replace(tzinfo=None), "fake", 3, 20.0, 30.0, 30.0)
    ]

    journey = ran.pop("request_journey")
    assert len(journey) == 5
    assert {r["request_id"] for r in journey} == {"acme-0", "acme-1", "acme-2", "acme-3", "beta-0"}
    assert all(r["end_to_end_ms"] == 1000 for r in journey)
    assert {r["request_id"]: r["http_status"] for r in journey}["acme-3"] == 429

    spans = ran.pop("p95_span_duration_by_stage")
    assert [(r["name"], r["spans"], r["p95_ms"]) for r in spans] == [("inference", 3, 30.0)]

    letters = ran.pop("dead_letters_by_stage")
    assert [tuple(r.values()) for r in letters] == [
        ("sg.requests", "admission", "SerializationError", 1)
    ]
    assert ran == {}, f"shipped queries without a checked answer: {sorted(ran)}"


DATASET = dataset()


def test_every_view_and_shipped_query_answers_right(store: ClickHouseAnalytics) -> None:
    store.migrate()
    insert_all(store, DATASET)
    check_answers(store)


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
