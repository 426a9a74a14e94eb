-- Palisade schema v10 (PostgreSQL): the audit trail becomes hash chains, one per tenant (`platform`
-- for events of no tenant). Each event carries its position, the previous event's hash and its
-- own HMAC-SHA-256 under the audit key; events written before this version stay unchained.
ALTER TABLE security_events ADD COLUMN chain TEXT;
ALTER TABLE security_events ADD COLUMN chain_seq BIGINT;
ALTER TABLE security_events ADD COLUMN user_agent TEXT;
ALTER TABLE security_events ADD COLUMN request_id TEXT;
ALTER TABLE security_events ADD COLUMN prev_hash TEXT;
ALTER TABLE security_events ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX idx_security_events_chain ON security_events(chain, chain_seq);
-- Append-only: nothing in the product updates or deletes an event.
CREATE FUNCTION palisade_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END;
$$;
CREATE TRIGGER security_events_append_only
    BEFORE UPDATE OR DELETE ON security_events
    FOR EACH ROW EXECUTE FUNCTION palisade_audit_append_only();
CREATE TRIGGER security_events_append_only_truncate
    BEFORE TRUNCATE ON security_events
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_audit_append_only();
