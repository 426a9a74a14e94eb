-- Server-side audit search: each filter of `GET /api/admin/security-events` has an index, so
-- a search stays fast on a trail of millions of events. Newest-first paging walks `seq`.
CREATE INDEX idx_security_events_kind ON security_events(kind, seq);
CREATE INDEX idx_security_events_user ON security_events(user_id, seq);
CREATE INDEX idx_security_events_actor ON security_events(actor_id, seq) WHERE actor_id IS NOT NULL;
CREATE INDEX idx_security_events_request ON security_events(request_id) WHERE request_id IS NOT NULL;
CREATE INDEX idx_security_events_created ON security_events(created_at);
