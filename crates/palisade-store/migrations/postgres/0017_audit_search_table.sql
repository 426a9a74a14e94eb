-- SQLite's migration 0017 moves the audit search's indexes into a table of their own, filled in
-- batches: on SQLite each index cost every appended event a WAL page. PostgreSQL logs an index
-- insert as a small record, not a page, and its replicas append concurrently (positions are not
-- committed in order, so a copy that follows `seq` could miss an event): its indexes stay on
-- `security_events`. This migration keeps both schemas at the same version (`palisade db copy`).
COMMENT ON TABLE security_events IS 'the audit trail: hash chains, one per tenant; append-only';
