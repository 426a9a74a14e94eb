-- The audit search's indexes move off the append path. Each index of `security_events` cost
-- every appended event a page of its own in the WAL (an event with seven indexes wrote ~10
-- pages, the most of what a model request wrote). The searchable columns are now copied, in
-- batches, into `security_events_search` by the store's indexer task (`Store::index_audit_events`),
-- which carries the search indexes; a search reads that table up to its newest copied event and
-- `security_events` itself beyond it. `security_events` keeps its position (`seq`), the chains'
-- unique index and `created_at` (the export's `--since`).
CREATE TABLE security_events_search (
    seq         INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    tenant_id   TEXT,
    user_id     TEXT,
    actor_id    TEXT,
    request_id  TEXT,
    created_at  INTEGER NOT NULL
);
INSERT INTO security_events_search (seq, kind, tenant_id, user_id, actor_id, request_id, created_at)
    SELECT seq, kind, tenant_id, user_id, actor_id, request_id, created_at FROM security_events;
CREATE INDEX idx_security_events_search_tenant ON security_events_search(tenant_id, seq);
CREATE INDEX idx_security_events_search_kind ON security_events_search(kind, seq);
CREATE INDEX idx_security_events_search_user ON security_events_search(user_id, seq);
CREATE INDEX idx_security_events_search_actor ON security_events_search(actor_id, seq) WHERE actor_id IS NOT NULL;
CREATE INDEX idx_security_events_search_request ON security_events_search(request_id) WHERE request_id IS NOT NULL;
CREATE INDEX idx_security_events_search_created ON security_events_search(created_at);
DROP INDEX idx_security_events_tenant;
DROP INDEX idx_security_events_kind;
DROP INDEX idx_security_events_user;
DROP INDEX idx_security_events_actor;
DROP INDEX idx_security_events_request;
