-- Palisade schema v7 (SQLite): usage per day, user, API key and model (requests, tokens,
-- compute time, guard blocks, budget refusals). `key_id` is '' for requests without a key.
CREATE TABLE usage_daily (
    day                TEXT NOT NULL,
    tenant_id          TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    user_id            TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    model              TEXT NOT NULL,
    requests           INTEGER NOT NULL DEFAULT 0,
    prompt_tokens      INTEGER NOT NULL DEFAULT 0,
    completion_tokens  INTEGER NOT NULL DEFAULT 0,
    compute_ms         INTEGER NOT NULL DEFAULT 0,
    guard_blocks       INTEGER NOT NULL DEFAULT 0,
    rate_limited       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, day, user_id, key_id, model)
);
CREATE INDEX usage_daily_day ON usage_daily (day);
