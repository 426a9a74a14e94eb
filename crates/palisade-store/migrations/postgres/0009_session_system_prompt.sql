-- Palisade schema v9 (PostgreSQL): a conversation's own system prompt (sent after the server's).
ALTER TABLE chat_sessions ADD COLUMN system_prompt TEXT;
