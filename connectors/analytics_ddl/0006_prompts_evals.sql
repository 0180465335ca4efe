-- Prompt versions on answers and costs (ResponseReady v3, CostEntry v5), the scored answer and
-- its cost on eval results (EvalCaseResult v2), a run's comparison and pass rates
-- (EvalRunCompleted v2), and the leaderboard: models × prompt versions by score, cost and
-- latency.
ALTER TABLE responses ADD COLUMN IF NOT EXISTS prompt_ref Nullable(String);
ALTER TABLE cost ADD COLUMN IF NOT EXISTS prompt_ref Nullable(String);

ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS output Nullable(String);
ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS model Nullable(String);
ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS prompt_ref Nullable(String);
ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS latency_ms Nullable(Float64);
ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS cost_usd Float64 DEFAULT 0;
ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS judge_usd Float64 DEFAULT 0;
ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS subject_request_id Nullable(String);
ALTER TABLE eval_results ADD COLUMN IF NOT EXISTS original_request_id Nullable(String);

ALTER TABLE eval_runs ADD COLUMN IF NOT EXISTS baseline_run_id Nullable(String);
ALTER TABLE eval_runs ADD COLUMN IF NOT EXISTS model Nullable(String);
ALTER TABLE eval_runs ADD COLUMN IF NOT EXISTS prompt_ref Nullable(String);
ALTER TABLE eval_runs ADD COLUMN IF NOT EXISTS pass_rates Map(String, Float64);
ALTER TABLE eval_runs ADD COLUMN IF NOT EXISTS cost_usd Float64 DEFAULT 0;
ALTER TABLE eval_runs ADD COLUMN IF NOT EXISTS judge_usd Float64 DEFAULT 0;
ALTER TABLE eval_runs ADD COLUMN IF NOT EXISTS failed UInt64 DEFAULT 0;

-- One row per (model, prompt version, metric): how well, how cheaply and how fast. A case's
-- cost and latency count once per case, not once per metric.
CREATE VIEW IF NOT EXISTS v_leaderboard AS
SELECT
    ifNull(model, '') AS model,
    ifNull(prompt_ref, '') AS prompt_ref,
    metric,
    avg(score) AS mean_score,
    avg(toFloat64(passed)) AS pass_rate,
    count() AS cases,
    uniqExact(run_id) AS runs,
    avg(cost_usd) AS usd_per_case,
    quantile(0.5)(latency_ms) AS p50_latency_ms,
    quantile(0.95)(latency_ms) AS p95_latency_ms
FROM eval_results FINAL
WHERE run_id IS NOT NULL
GROUP BY model, prompt_ref, metric;

-- Live traffic by prompt version (A/B tests read it): answers, errors, tokens, latency.
CREATE VIEW IF NOT EXISTS v_prompt_versions_per_day AS
SELECT
    toDate(occurred_at) AS day,
    tenant_id,
    model,
    ifNull(prompt_ref, '') AS prompt_ref,
    count() AS answers,
    countIf(cache_hit) AS cache_hits,
    avg(latency_ms) AS mean_latency_ms,
    quantile(0.95)(latency_ms) AS p95_latency_ms,
    sum(completion_tokens) AS completion_tokens
FROM responses FINAL
WHERE status = 'ok' AND run_id IS NULL AND prompt_ref IS NOT NULL
GROUP BY day, tenant_id, model, prompt_ref;
