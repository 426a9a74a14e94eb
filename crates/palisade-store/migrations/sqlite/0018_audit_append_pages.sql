-- Each appended audit event wrote four pages to the WAL: the table's leaf, the chains' unique
-- index, the `created_at` index and `sqlite_sequence` (AUTOINCREMENT updates its row on every
-- insert). Two are dropped here (measured: 12.4 pages a gateway request at 1,000 requests/s,
-- two events and a usage row), leaving the row and the chain index:
--  * `seq` stays the INTEGER PRIMARY KEY without AUTOINCREMENT. Events are never deleted (the
--    triggers refuse it), so "one more than the largest" gives the same positions it gave;
--  * the export's `--since` finds its first event through `security_events_search`, whose
--    `created_at` index covers every copied event (audit.rs, `Store::audit_export`).
-- The table is rebuilt (SQLite cannot drop AUTOINCREMENT in place): every event is copied with
-- its position, then the chain index and the append-only triggers are made again. The copy
-- takes time in proportion to the trail (docs/audit.md: ~12 s a million events).
CREATE TABLE security_events_v18 (
    seq         INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    tenant_id   TEXT,
    user_id     TEXT,
    actor_id    TEXT,
    ip          TEXT,
    detail      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    chain       TEXT,
    chain_seq   INTEGER,
    user_agent  TEXT,
    request_id  TEXT,
    prev_hash   TEXT,
    hash        TEXT
);
INSERT INTO security_events_v18 (seq, kind, tenant_id, user_id, actor_id, ip, detail, created_at,
                                 chain, chain_seq, user_agent, request_id, prev_hash, hash)
    SELECT seq, kind, tenant_id, user_id, actor_id, ip, detail, created_at,
           chain, chain_seq, user_agent, request_id, prev_hash, hash
    FROM security_events ORDER BY seq;
-- Dropping a table fires no DELETE trigger; its indexes and triggers go with it.
DROP TABLE security_events;
ALTER TABLE security_events_v18 RENAME TO security_events;
CREATE UNIQUE INDEX idx_security_events_chain ON security_events(chain, chain_seq);
-- Append-only: nothing in the product updates or deletes an event.
CREATE TRIGGER security_events_append_only_update BEFORE UPDATE ON security_events
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
CREATE TRIGGER security_events_append_only_delete BEFORE DELETE ON security_events
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
