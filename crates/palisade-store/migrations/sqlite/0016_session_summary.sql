-- The conversation list reads its summary from the session row: how many messages it holds and
-- which one is the latest (for the preview), kept up to date by every append in the same
-- transaction. Before this, each listed conversation counted its messages and looked up its
-- latest one twice, which made the list cost grow with the size of the history.
ALTER TABLE chat_sessions ADD COLUMN message_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE chat_sessions ADD COLUMN last_message_id TEXT;
ALTER TABLE chat_sessions ADD COLUMN last_message_at BIGINT;

UPDATE chat_sessions SET
    message_count = (SELECT COUNT(*) FROM messages m
                     WHERE m.tenant_id = chat_sessions.tenant_id AND m.session_id = chat_sessions.id),
    last_message_id = (SELECT m.id FROM messages m
                       WHERE m.tenant_id = chat_sessions.tenant_id AND m.session_id = chat_sessions.id
                       ORDER BY m.created_at DESC, m.id DESC LIMIT 1),
    last_message_at = (SELECT m.created_at FROM messages m
                       WHERE m.tenant_id = chat_sessions.tenant_id AND m.session_id = chat_sessions.id
                       ORDER BY m.created_at DESC, m.id DESC LIMIT 1);
