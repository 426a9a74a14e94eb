-- Palisade schema v8 (PostgreSQL): limit overrides per tenant, user or API key set by admins at run
-- time (the fields they name replace the `[limits]` defaults until the override is deleted).
CREATE TABLE limit_policies (
    scope       TEXT NOT NULL CHECK (scope IN ('tenant', 'user', 'key')),
    subject     TEXT NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    limits      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL,
    PRIMARY KEY (scope, subject)
);
CREATE INDEX limit_policies_tenant ON limit_policies (tenant_id);
