-- One table per event family, flattened from the Avro events, envelope columns first.
-- ReplacingMergeTree with event_id last in the sorting key: a redelivered event has the same
-- key, so `FINAL` (and merges, eventually) keep one row per event; uniqExact(event_id) counts
-- it once without FINAL.

CREATE TABLE IF NOT EXISTS requests (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    model LowCardinality(String),
    message_count UInt32,
    prompt_chars UInt64,
    user Nullable(String),
    api_key_id Nullable(String),
    stream Bool,
    temperature Nullable(Float64),
    max_tokens Nullable(Int64),
    metadata Map(String, String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS responses (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    status LowCardinality(String),
    http_status UInt16,
    model LowCardinality(String),
    deployment LowCardinality(String),
    provider_model LowCardinality(String),
    finish_reason LowCardinality(String),
    prompt_tokens UInt64,
    completion_tokens UInt64,
    latency_ms Nullable(Float64),
    cache_hit Bool,
    usd_saved Float64,
    stage LowCardinality(String),
    error_type LowCardinality(String),
    error_code Nullable(String),
    error_message String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS inference_results (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    status LowCardinality(String),
    deployment LowCardinality(String),
    provider_model LowCardinality(String),
    finish_reason LowCardinality(String),
    error_class LowCardinality(String),
    error_message String,
    status_code Nullable(Int32),
    latency_ms Float64,
    ttft_ms Nullable(Float64),
    prompt_tokens UInt64,
    completion_tokens UInt64,
    attempt UInt16
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (deployment, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS spans (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    name LowCardinality(String),
    start DateTime64(3, 'UTC'),
    end DateTime64(3, 'UTC'),
    duration_ms Float64,
    status LowCardinality(String),
    attributes Map(String, String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (trace_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS cost (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    model LowCardinality(String),
    deployment LowCardinality(String),
    api_key_id Nullable(String),
    prompt_tokens UInt64,
    completion_tokens UInt64,
    usd Float64,
    pricing_version LowCardinality(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (tenant_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS dead_letters (
    event_id String,
    occurred_at DateTime64(3, 'UTC'),
    tenant_id LowCardinality(String),
    request_id String,
    trace_id String,
    span_id String,
    parent_span_id Nullable(String),
    run_id Nullable(String),
    producer LowCardinality(String),
    topic LowCardinality(String),
    partition Int32,
    offset Int64,
    error_class LowCardinality(String),
    error_message String,
    stage LowCardinality(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (topic, occurred_at, event_id);
