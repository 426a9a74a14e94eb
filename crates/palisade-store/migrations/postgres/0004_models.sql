-- Palisade schema v4 (PostgreSQL): the model registry's admin changes, fallback/cache facts on
-- answers, and the API keys' conversation-storage policy for `/v1`.
CREATE TABLE model_registry (
    name        TEXT PRIMARY KEY NOT NULL,
    -- The full entry as JSON; NULL is a tombstone (the model was deleted by an admin).
    spec        TEXT,
    updated_at  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL
);

ALTER TABLE messages ADD COLUMN fallback_from TEXT;
ALTER TABLE messages ADD COLUMN cached BIGINT NOT NULL DEFAULT 0;

ALTER TABLE api_keys ADD COLUMN store_conversations BIGINT NOT NULL DEFAULT 0;
