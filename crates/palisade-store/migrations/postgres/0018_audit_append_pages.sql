-- SQLite's migration 0018 rebuilds `security_events` without AUTOINCREMENT and without its
-- `created_at` index, two WAL pages less for every appended event. PostgreSQL logs a sequence
-- step and an index insert as small records, not pages, and its export reads that index: its
-- table stays as it is. This migration keeps both schemas at the same version (`palisade db copy`).
COMMENT ON INDEX idx_security_events_created IS 'the audit export''s --since';
