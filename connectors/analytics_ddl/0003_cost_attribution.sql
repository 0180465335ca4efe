-- CostEntry v2: attribution by end user and feature tag, cache hits and what they saved,
-- and the token estimate the rate limiter charged (to measure the estimator).
ALTER TABLE cost ADD COLUMN IF NOT EXISTS user Nullable(String);
ALTER TABLE cost ADD COLUMN IF NOT EXISTS feature Nullable(String);
ALTER TABLE cost ADD COLUMN IF NOT EXISTS estimated_tokens UInt64 DEFAULT 0;
ALTER TABLE cost ADD COLUMN IF NOT EXISTS cache_hit Bool DEFAULT false;
ALTER TABLE cost ADD COLUMN IF NOT EXISTS usd_saved Float64 DEFAULT 0;
