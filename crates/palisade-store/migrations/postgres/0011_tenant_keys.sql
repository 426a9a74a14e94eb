-- Envelope encryption at rest: each tenant's data keys, wrapped (AES-256-GCM) by the master key,
-- which never enters the database. A shredded key keeps its row (so versions are never reused)
-- with `wrapped` set to NULL: whatever it encrypted can no longer be read.
CREATE TABLE tenant_keys (
    tenant_id   TEXT    NOT NULL,
    version     BIGINT NOT NULL,
    wrapped     TEXT,
    master_id   TEXT    NOT NULL,
    created_at  BIGINT NOT NULL,
    shredded_at BIGINT,
    PRIMARY KEY (tenant_id, version)
);
