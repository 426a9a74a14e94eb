-- Palisade schema v13 (PostgreSQL): tenant isolation in the database. Every tenant-owned table
-- has a row-level security policy comparing the row's tenant with the transaction's
-- `palisade.tenant` setting (set by the store at the start of each transaction; `*` is the
-- platform's own work). A statement with a wrong or missing setting sees no row, even if the
-- query forgot its tenant filter. Statements run as `palisade_app`, a role that can neither
-- bypass row security nor change or delete audit events. FORCE applies the policies to the
-- tables' owner too; a later migration that changes data sets `palisade.tenant` to `*` first.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'palisade_app') THEN
        CREATE ROLE palisade_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    -- Another database of this cluster created it at the same moment.
    NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO palisade_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO palisade_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO palisade_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO palisade_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO palisade_app;
REVOKE ALL ON _sqlx_migrations FROM palisade_app;
-- The audit trail is append-only for the application (the trigger of v10 stops everyone else).
REVOKE UPDATE, DELETE, TRUNCATE ON security_events FROM palisade_app;

-- True when the current transaction may see a row of `row_tenant` (NULL: the platform's rows,
-- seen by `*` only). No setting, or an empty one, sees nothing.
CREATE FUNCTION palisade_visible(row_tenant TEXT) RETURNS BOOLEAN
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT COALESCE(current_setting('palisade.tenant', true) IN ('*', row_tenant), false) $$;

DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'users', 'refresh_tokens', 'chat_sessions', 'messages', 'auth_sessions',
        'recovery_codes', 'api_keys', 'external_identities', 'invites', 'guard_vaults',
        'guard_policies', 'usage_daily', 'limit_policies', 'tenant_keys', 'tenant_retention',
        'user_holds', 'security_events', 'jobs'
    ] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (palisade_visible(tenant_id)) '
            'WITH CHECK (palisade_visible(tenant_id))', t);
    END LOOP;
END
$$;

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (palisade_visible(id)) WITH CHECK (palisade_visible(id));
