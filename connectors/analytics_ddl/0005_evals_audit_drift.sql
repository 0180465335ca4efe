-- The quality and trust topics: eval results (sg.evals), the hash-chained audit trail
-- (sg.audit) and drift findings (sg.drift); and the model latency on each cost entry, which the
-- drift monitor reads from sg.cost. Views read with FINAL and, where a reprocessed record can
-- emit an event twice with a new event_id, keep one copy per cause.

ALTER TABLE cost ADD COLUMN IF NOT EXISTS latency_ms Nullable(Int64);

-- EvalCaseResult: one score of one case of one eval run (run_id) or backtest.
CREATE TABLE IF NOT EXISTS eval_results (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    dataset LowCardinality(String),
    case_id String,
    metric LowCardinality(String),
    score Float64,
    passed Bool,
    detail Nullable(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (dataset, case_id, metric, occurred_at, event_id);

-- EvalRunCompleted: a run's aggregate scores, as the run computed them.
CREATE TABLE IF NOT EXISTS eval_runs (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    dataset LowCardinality(String),
    cases UInt64,
    scores Map(String, Float64)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (dataset, occurred_at, event_id);

-- AuditRecord: who did what to which resource; `hash` chains each record to `prev_hash`.
-- Partitioned by year, never TTL'd: the trail is never shortened.
CREATE TABLE IF NOT EXISTS audit (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    actor String,
    action LowCardinality(String),
    resource String,
    detail_json String,
    prev_hash String,
    hash String
) ENGINE = ReplacingMergeTree
PARTITION BY toYear(occurred_at)
ORDER BY (tenant_id, occurred_at, event_id);

-- DriftDetected: a monitored distribution moved (psi, ks, centroid) or one sample was an
-- anomaly (ewma_z).
CREATE TABLE IF NOT EXISTS drift (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    metric LowCardinality(String),
    statistic LowCardinality(String),
    value Float64,
    threshold Float64,
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    reference_start Nullable(DateTime64(3, 'UTC')),
    reference_end Nullable(DateTime64(3, 'UTC')),
    p_value Nullable(Float64),
    reference_count UInt64,
    current_count UInt64,
    reference_mean Nullable(Float64),
    current_mean Nullable(Float64)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (metric, occurred_at, event_id);

-- One row per finding: a monitor that restarted and closed the same window again reports it
-- with a new event_id; the window, metric and statistic identify it.
CREATE VIEW IF NOT EXISTS v_drift_findings AS
SELECT
    min(occurred_at) AS first_at,
    tenant_id,
    metric,
    statistic,
    window_start,
    window_end,
    argMin(reference_start, occurred_at) AS reference_start,
    argMin(reference_end, occurred_at) AS reference_end,
    argMin(value, occurred_at) AS value,
    argMin(threshold, occurred_at) AS threshold,
    argMin(p_value, occurred_at) AS p_value,
    argMin(reference_mean, occurred_at) AS reference_mean,
    argMin(current_mean, occurred_at) AS current_mean,
    argMin(current_count, occurred_at) AS current_count
FROM drift FINAL
GROUP BY tenant_id, metric, statistic, window_start, window_end;

CREATE VIEW IF NOT EXISTS v_eval_scores_per_run AS
SELECT
    run_id,
    dataset,
    metric,
    min(occurred_at) AS started_at,
    count() AS cases,
    avg(score) AS mean_score,
    countIf(passed) / count() AS pass_rate
FROM eval_results FINAL
GROUP BY run_id, dataset, metric;

CREATE VIEW IF NOT EXISTS v_audit_actions_per_day AS
SELECT
    toDate(occurred_at) AS day,
    tenant_id,
    actor,
    action,
    count() AS actions
FROM audit FINAL
GROUP BY day, tenant_id, actor, action;
