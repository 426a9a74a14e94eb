-- Palisade schema v7 (PostgreSQL): usage per day, user, API key and model (requests, tokens,
-- compute time, guard blocks, budget refusals). `key_id` is '' for requests without a key.
CREATE TABLE usage_daily (
    day                TEXT NOT NULL,
    tenant_id          TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id            TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    model              TEXT NOT NULL,
    requests           BIGINT NOT NULL DEFAULT 0,
    prompt_tokens      BIGINT NOT NULL DEFAULT 0,
    completion_tokens  BIGINT NOT NULL DEFAULT 0,
    compute_ms         BIGINT NOT NULL DEFAULT 0,
    guard_blocks       BIGINT NOT NULL DEFAULT 0,
    rate_limited       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, user_id, key_id, model)
);
CREATE INDEX usage_daily_day ON usage_daily (day);
