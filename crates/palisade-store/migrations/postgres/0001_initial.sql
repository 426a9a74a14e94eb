-- Palisade schema v1 (PostgreSQL). Timestamps are epoch milliseconds; ids are UUIDv7 text.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id                  TEXT PRIMARY KEY NOT NULL,
    tenant_id           TEXT NOT NULL REFERENCES tenants(id),
    username            TEXT NOT NULL,
    email               TEXT,
    password_hash       TEXT NOT NULL,
    role                TEXT NOT NULL,
    is_active           BIGINT NOT NULL DEFAULT 1,
    tokens_valid_after  BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    UNIQUE (tenant_id, username)
);

CREATE TABLE refresh_tokens (
    token_hash          TEXT PRIMARY KEY NOT NULL,
    family_id           TEXT NOT NULL,
    tenant_id           TEXT NOT NULL REFERENCES tenants(id),
    user_id             TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    family_expires_at   BIGINT NOT NULL,
    used_at             BIGINT,
    revoked             BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX idx_refresh_tokens_family ON refresh_tokens(family_id);
CREATE INDEX idx_refresh_tokens_user ON refresh_tokens(tenant_id, user_id);

CREATE TABLE chat_sessions (
    id          TEXT PRIMARY KEY NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX idx_chat_sessions_user_updated ON chat_sessions(tenant_id, user_id, updated_at DESC);
CREATE INDEX idx_chat_sessions_user_created ON chat_sessions(tenant_id, user_id, created_at DESC);

CREATE TABLE messages (
    id                  TEXT PRIMARY KEY NOT NULL,
    tenant_id           TEXT NOT NULL REFERENCES tenants(id),
    session_id          TEXT NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
    role                TEXT NOT NULL,
    content             TEXT NOT NULL,
    model               TEXT,
    prompt_tokens       BIGINT,
    completion_tokens   BIGINT,
    latency_ms          BIGINT,
    finish_reason       TEXT,
    partial             BIGINT NOT NULL DEFAULT 0,
    truncated_turns     BIGINT NOT NULL DEFAULT 0,
    created_at          BIGINT NOT NULL
);
CREATE INDEX idx_messages_session ON messages(tenant_id, session_id, created_at, id);
