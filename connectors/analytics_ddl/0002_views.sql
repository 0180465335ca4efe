-- Views read the tables with FINAL, so a redelivered event is counted once.

CREATE VIEW IF NOT EXISTS v_latency_per_deployment_minute AS
SELECT
    toStartOfMinute(occurred_at) AS minute,
    deployment,
    count() AS responses,
    quantileExact(0.5)(latency_ms) AS p50_ms,
    quantileExact(0.95)(latency_ms) AS p95_ms,
    quantileExact(0.99)(latency_ms) AS p99_ms
FROM responses FINAL
WHERE status = 'ok' AND NOT cache_hit
GROUP BY minute, deployment;

CREATE VIEW IF NOT EXISTS v_errors_per_deployment_hour AS
SELECT
    toStartOfHour(occurred_at) AS hour,
    deployment,
    count() AS attempts,
    countIf(status = 'failed') AS failures,
    failures / attempts AS error_rate
FROM inference_results FINAL
GROUP BY hour, deployment;

CREATE VIEW IF NOT EXISTS v_requests_per_tenant_model_day AS
SELECT
    toDate(q.occurred_at) AS day,
    q.tenant_id AS tenant_id,
    q.model AS model,
    count() AS requests,
    countIf(r.status = 'ok') AS answered,
    countIf(r.status = 'rejected') AS rejected,
    sum(r.prompt_tokens) AS prompt_tokens,
    sum(r.completion_tokens) AS completion_tokens
FROM (SELECT request_id, occurred_at, tenant_id, model FROM requests FINAL) AS q
LEFT JOIN (
    -- A redelivered task may answer one request twice: the first answer counts, as for the caller.
    SELECT
        request_id,
        argMin(status, occurred_at) AS status,
        argMin(prompt_tokens, occurred_at) AS prompt_tokens,
        argMin(completion_tokens, occurred_at) AS completion_tokens
    FROM responses FINAL
    GROUP BY request_id
) AS r ON q.request_id = r.request_id
GROUP BY day, tenant_id, model;

CREATE VIEW IF NOT EXISTS v_cost_per_tenant_model_day AS
SELECT
    toDate(occurred_at) AS day,
    tenant_id,
    model,
    count() AS entries,
    sum(prompt_tokens) AS prompt_tokens,
    sum(completion_tokens) AS completion_tokens,
    sum(usd) AS usd
FROM cost FINAL
GROUP BY day, tenant_id, model;
