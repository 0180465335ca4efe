-- The gateway's own events: breaker moves (sg.health) and budget crossings (sg.alerts), what a
-- rejection told the caller (Retry-After, x-ratelimit-* headers), and views over routing,
-- retries, fallbacks, rejections and spend. Views read their tables with FINAL, and where a
-- reprocessed record can emit an event twice (with a new event_id) they keep its first copy.

ALTER TABLE responses ADD COLUMN IF NOT EXISTS retry_after_s Nullable(Float64);
ALTER TABLE responses ADD COLUMN IF NOT EXISTS headers Map(String, String);

-- DeploymentHealth: every breaker move, and latency updates (breaker = previous_breaker) at
-- most once a second per deployment. The envelope is the causing outcome's: request_id and
-- parent_span_id name the inference attempt (or probe) that moved the breaker.
CREATE TABLE IF NOT EXISTS deployment_health (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    deployment LowCardinality(String),
    breaker LowCardinality(String),
    previous_breaker LowCardinality(String),
    open_until Nullable(DateTime64(3, 'UTC')),
    latency_ewma_ms Nullable(Float64),
    ttft_ewma_ms Nullable(Float64),
    reason String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (deployment, occurred_at, event_id);

-- BudgetAlert: spend crossed a share of a tenant's, key's or user's day or month budget.
CREATE TABLE IF NOT EXISTS budget_alerts (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    subject_kind LowCardinality(String),
    subject_id String,
    period LowCardinality(String),
    period_start Date,
    threshold Float64,
    budget_usd Float64,
    spent_usd Float64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant_id, occurred_at, event_id);

CREATE VIEW IF NOT EXISTS v_spend_per_key_day AS
SELECT
    toDate(occurred_at) AS day,
    tenant_id,
    api_key_id,
    count() AS entries,
    countIf(cache_hit) AS cache_hits,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    prompt_tokens + completion_tokens AS tokens,
    sum(usd) AS usd,
    sum(usd_saved) AS usd_saved
FROM cost FINAL
GROUP BY day, tenant_id, api_key_id;

CREATE VIEW IF NOT EXISTS v_spend_per_feature_day AS
SELECT
    toDate(occurred_at) AS day,
    tenant_id,
    feature,
    user,
    count() AS entries,
    countIf(cache_hit) AS cache_hits,
    sum(prompt_tokens + completion_tokens) AS tokens,
    sum(usd) AS usd,
    sum(usd_saved) AS usd_saved
FROM cost FINAL
GROUP BY day, tenant_id, feature, user;

CREATE VIEW IF NOT EXISTS v_rejections_per_code_hour AS
SELECT
    toStartOfHour(occurred_at) AS hour,
    tenant_id,
    stage,
    ifNull(error_code, '') AS code,
    http_status,
    uniqExact(request_id) AS rejected
FROM responses FINAL
WHERE status = 'rejected'
GROUP BY hour, tenant_id, stage, code, http_status;

CREATE VIEW IF NOT EXISTS v_breaker_transitions AS
SELECT
    min(occurred_at) AS at,
    deployment,
    previous_breaker,
    breaker,
    argMin(open_until, occurred_at) AS open_until,
    argMin(reason, occurred_at) AS reason,
    argMin(tenant_id, occurred_at) AS tenant_id,
    argMin(request_id, occurred_at) AS request_id
FROM deployment_health FINAL
WHERE breaker != previous_breaker
-- A reprocessed outcome moves the breaker again: same cause (parent_span_id), one transition.
GROUP BY deployment, parent_span_id, previous_breaker, breaker;

CREATE VIEW IF NOT EXISTS v_attempts_per_deployment_hour AS
SELECT
    toStartOfHour(occurred_at) AS hour,
    deployment,
    count() AS attempts,
    countIf(attempt > 1) AS later_attempts,
    countIf(status = 'failed') AS failures,
    sumMapIf(map(error_class, toUInt64(1)), status = 'failed') AS failures_by_class,
    quantileExactIf(0.95)(latency_ms, status = 'ok') AS p95_ok_ms,
    quantileExactIf(0.95)(ttft_ms, status = 'ok') AS p95_ttft_ms
FROM inference_results FINAL
GROUP BY hour, deployment;

CREATE VIEW IF NOT EXISTS v_request_attempts AS
SELECT
    request_id,
    any(tenant_id) AS tenant_id,
    min(occurred_at) AS first_at,
    argMin(deployment, attempt) AS first_deployment,
    argMax(deployment, attempt) AS last_deployment,
    uniqExact(attempt) AS attempts,
    uniqExact(deployment) AS deployments,
    attempts > deployments AS retried,
    deployments > 1 AS fell_back,
    countIf(status = 'ok') > 0 AS answered
FROM inference_results FINAL
GROUP BY request_id;

CREATE VIEW IF NOT EXISTS v_routing_per_strategy_day AS
SELECT
    toDate(occurred_at) AS day,
    tenant_id,
    attributes['strategy'] AS strategy,
    attributes['deployment'] AS deployment,
    uniqExact(request_id) AS decisions,
    uniqExactIf(request_id, attributes['fallbacks'] != '') AS with_fallbacks,
    uniqExactIf(request_id, attributes['skipped'] != '') AS with_skipped
FROM spans FINAL
WHERE name = 'admission' AND attributes['strategy'] != ''
GROUP BY day, tenant_id, strategy, deployment;

CREATE VIEW IF NOT EXISTS v_budget_crossings AS
SELECT
    tenant_id,
    subject_kind,
    subject_id,
    period,
    period_start,
    threshold,
    min(occurred_at) AS first_at,
    argMin(budget_usd, occurred_at) AS budget_usd,
    argMin(spent_usd, occurred_at) AS spent_usd,
    count() AS alerts
FROM budget_alerts FINAL
GROUP BY tenant_id, subject_kind, subject_id, period, period_start, threshold;
