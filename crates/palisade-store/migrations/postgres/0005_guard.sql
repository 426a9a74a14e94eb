-- Palisade schema v5 (PostgreSQL): the guard's pseudonym vaults (placeholder -> value, per
-- conversation; never sent upstream) and the guard's findings on answers (categories, kinds,
-- scores and actions; never the matched text).
CREATE TABLE guard_vaults (
    session_id  TEXT PRIMARY KEY NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    data        TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

ALTER TABLE messages ADD COLUMN guard_findings TEXT;
