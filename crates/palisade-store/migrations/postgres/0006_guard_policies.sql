-- Palisade schema v6 (PostgreSQL): guard policies per tenant set by admins at run time (they replace
-- the tenant's `[guard.tenants.ID]` of the configuration until reset).
CREATE TABLE guard_policies (
    tenant_id   TEXT PRIMARY KEY NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    policy      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    updated_by  TEXT NOT NULL
);
