-- Palisade schema v2 (SQLite): identity. Login throttling, forced password change, TOTP,
-- login sessions (refresh-token families), API keys, external identities, security events.
ALTER TABLE tenants ADD COLUMN is_active INTEGER NOT NULL DEFAULT 1;

ALTER TABLE users ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN hard_locked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN auth_source TEXT NOT NULL DEFAULT 'local';
ALTER TABLE users ADD COLUMN totp_secret TEXT;
ALTER TABLE users ADD COLUMN totp_enabled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN last_login_at INTEGER;
CREATE INDEX idx_users_tenant_created ON users(tenant_id, created_at DESC);

CREATE TABLE auth_sessions (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    user_agent    TEXT,
    ip            TEXT,
    revoked       INTEGER NOT NULL DEFAULT 0
);
-- Sessions of tokens issued before this migration.
INSERT INTO auth_sessions (id, tenant_id, user_id, created_at, last_used_at, expires_at, revoked)
SELECT family_id, tenant_id, user_id, MIN(created_at), MAX(created_at), MAX(family_expires_at),
       MIN(revoked)
FROM refresh_tokens GROUP BY family_id, tenant_id, user_id;
CREATE INDEX idx_auth_sessions_user ON auth_sessions(tenant_id, user_id, created_at DESC);

CREATE TABLE recovery_codes (
    tenant_id  TEXT NOT NULL REFERENCES tenants(id),
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    used_at    INTEGER,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    prefix        TEXT NOT NULL UNIQUE,
    key_hash      TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    models        TEXT,
    expires_at    INTEGER,
    last_used_at  INTEGER,
    created_at    INTEGER NOT NULL,
    revoked       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_api_keys_user ON api_keys(tenant_id, user_id, created_at DESC);

CREATE TABLE external_identities (
    provider    TEXT NOT NULL,
    subject     TEXT NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (provider, subject)
);

CREATE TABLE security_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    tenant_id   TEXT,
    user_id     TEXT,
    actor_id    TEXT,
    ip          TEXT,
    detail      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX idx_security_events_tenant ON security_events(tenant_id, seq DESC);
