//! The chat repository on SQLite: sessions and messages, always scoped by tenant and owner.

use async_trait::async_trait;
use palisade_core::entities::{
    ChatSession, GenerationMeta, Millis, SessionOverview, SessionSort, StoredMessage,
};
use palisade_core::guard::Pseudonyms;
use palisade_core::ids::{MessageId, SessionId, TenantId, UserId};
use palisade_core::ports::ChatRepository;
use palisade_core::provider::Role;
use palisade_core::{CoreError, CoreResult};
use sqlx::sqlite::SqliteRow;

use crate::rows::{get, id};
use crate::{db_err, Store};

const PREVIEW_CHARS: usize = 120;

fn session_from(row: &SqliteRow) -> CoreResult<ChatSession> {
    Ok(ChatSession {
        id: id(row, "id")?,
        tenant_id: id(row, "tenant_id")?,
        user_id: id(row, "user_id")?,
        title: get(row, "title")?,
        system_prompt: get(row, "system_prompt")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

fn message_from(row: &SqliteRow) -> CoreResult<StoredMessage> {
    let role: String = get(row, "role")?;
    let role =
        Role::parse(&role).ok_or_else(|| CoreError::Storage(format!("unknown role {role:?}")))?;
    let model: Option<String> = get(row, "model")?;
    let meta = match model {
        Some(model) => Some(GenerationMeta {
            model,
            prompt_tokens: get::<Option<i64>>(row, "prompt_tokens")?.unwrap_or(0) as u32,
            completion_tokens: get::<Option<i64>>(row, "completion_tokens")?.unwrap_or(0) as u32,
            latency_ms: get::<Option<i64>>(row, "latency_ms")?.unwrap_or(0) as u64,
            finish_reason: get::<Option<String>>(row, "finish_reason")?.unwrap_or_default(),
            partial: get::<i64>(row, "partial")? != 0,
            truncated_turns: get::<i64>(row, "truncated_turns")? as u32,
            fallback_from: get(row, "fallback_from")?,
            cached: get::<i64>(row, "cached")? != 0,
            guard: get::<Option<String>>(row, "guard_findings")?
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(StoredMessage {
        id: id(row, "id")?,
        tenant_id: id(row, "tenant_id")?,
        session_id: id(row, "session_id")?,
        role,
        content: get(row, "content")?,
        meta,
        created_at: get(row, "created_at")?,
    })
}

#[async_trait]
impl ChatRepository for Store {
    async fn create_session(&self, s: &ChatSession) -> CoreResult<()> {
        sqlx::query(
            "INSERT INTO chat_sessions (id, tenant_id, user_id, title, system_prompt, \
             created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(s.id.to_string())
        .bind(s.tenant_id.to_string())
        .bind(s.user_id.to_string())
        .bind(&s.title)
        .bind(&s.system_prompt)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn get_session(
        &self,
        tenant: TenantId,
        user: UserId,
        sid: SessionId,
    ) -> CoreResult<Option<ChatSession>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, user_id, title, system_prompt, created_at, updated_at \
             FROM chat_sessions \
             WHERE tenant_id = ? AND user_id = ? AND id = ?",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(sid.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(session_from).transpose()
    }

    async fn list_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        sort: SessionSort,
        limit: u32,
        offset: u32,
    ) -> CoreResult<(Vec<SessionOverview>, u64)> {
        // The ORDER BY is chosen from a closed set; values are always bound.
        let order = match sort {
            SessionSort::CreatedDesc => "s.created_at DESC, s.id DESC",
            SessionSort::CreatedAsc => "s.created_at ASC, s.id ASC",
            SessionSort::UpdatedDesc => "s.updated_at DESC, s.id DESC",
        };
        let sql = format!(
            "SELECT s.id, s.tenant_id, s.user_id, s.title, s.system_prompt, s.created_at, \
             s.updated_at, \
             (SELECT COUNT(*) FROM messages m WHERE m.tenant_id = s.tenant_id AND m.session_id = s.id) AS message_count, \
             (SELECT substr(m.content, 1, {PREVIEW_CHARS}) FROM messages m \
                WHERE m.tenant_id = s.tenant_id AND m.session_id = s.id \
                ORDER BY m.created_at DESC, m.id DESC LIMIT 1) AS preview \
             FROM chat_sessions s WHERE s.tenant_id = ? AND s.user_id = ? \
             ORDER BY {order} LIMIT ? OFFSET ?"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant.to_string())
            .bind(user.to_string())
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(SessionOverview {
                session: session_from(row)?,
                message_count: get::<i64>(row, "message_count")?.max(0) as u64,
                last_message_preview: get(row, "preview")?,
            });
        }
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM chat_sessions WHERE tenant_id = ? AND user_id = ?",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok((out, total.max(0) as u64))
    }

    async fn rename_session(
        &self,
        tenant: TenantId,
        user: UserId,
        sid: SessionId,
        title: &str,
        now: Millis,
    ) -> CoreResult<bool> {
        let r = sqlx::query(
            "UPDATE chat_sessions SET title = ?, updated_at = ? \
             WHERE tenant_id = ? AND user_id = ? AND id = ?",
        )
        .bind(title)
        .bind(now)
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(sid.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_session_system_prompt(
        &self,
        tenant: TenantId,
        user: UserId,
        sid: SessionId,
        system_prompt: Option<&str>,
        now: Millis,
    ) -> CoreResult<bool> {
        let r = sqlx::query(
            "UPDATE chat_sessions SET system_prompt = ?, updated_at = ? \
             WHERE tenant_id = ? AND user_id = ? AND id = ?",
        )
        .bind(system_prompt)
        .bind(now)
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(sid.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_session(
        &self,
        tenant: TenantId,
        user: UserId,
        sid: SessionId,
    ) -> CoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let r =
            sqlx::query("DELETE FROM chat_sessions WHERE tenant_id = ? AND user_id = ? AND id = ?")
                .bind(tenant.to_string())
                .bind(user.to_string())
                .bind(sid.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        if r.rows_affected() == 1 {
            // Explicit, in case foreign keys were off on this connection.
            sqlx::query("DELETE FROM messages WHERE tenant_id = ? AND session_id = ?")
                .bind(tenant.to_string())
                .bind(sid.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn append_message(&self, m: &StoredMessage) -> CoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let meta = m.meta.as_ref();
        let r = sqlx::query(
            "INSERT INTO messages (id, tenant_id, session_id, role, content, model, prompt_tokens, \
             completion_tokens, latency_ms, finish_reason, partial, truncated_turns, fallback_from, \
             cached, guard_findings, created_at) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? \
             WHERE EXISTS (SELECT 1 FROM chat_sessions WHERE tenant_id = ? AND id = ?)",
        )
        .bind(m.id.to_string())
        .bind(m.tenant_id.to_string())
        .bind(m.session_id.to_string())
        .bind(m.role.as_str())
        .bind(&m.content)
        .bind(meta.map(|x| x.model.clone()))
        .bind(meta.map(|x| i64::from(x.prompt_tokens)))
        .bind(meta.map(|x| i64::from(x.completion_tokens)))
        .bind(meta.map(|x| x.latency_ms as i64))
        .bind(meta.map(|x| x.finish_reason.clone()))
        .bind(meta.map(|x| i64::from(x.partial)).unwrap_or(0))
        .bind(meta.map(|x| i64::from(x.truncated_turns)).unwrap_or(0))
        .bind(meta.and_then(|x| x.fallback_from.clone()))
        .bind(meta.map(|x| i64::from(x.cached)).unwrap_or(0))
        .bind(
            meta.filter(|x| !x.guard.is_empty())
                .and_then(|x| serde_json::to_string(&x.guard).ok()),
        )
        .bind(m.created_at)
        .bind(m.tenant_id.to_string())
        .bind(m.session_id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if r.rows_affected() == 0 {
            // The session was deleted while the answer was being generated.
            return Err(CoreError::NotFound("session"));
        }
        sqlx::query("UPDATE chat_sessions SET updated_at = MAX(updated_at, ?) WHERE tenant_id = ? AND id = ?")
            .bind(m.created_at)
            .bind(m.tenant_id.to_string())
            .bind(m.session_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(())
    }

    async fn list_messages(
        &self,
        tenant: TenantId,
        session: SessionId,
        before: Option<MessageId>,
        limit: u32,
    ) -> CoreResult<(Vec<StoredMessage>, bool)> {
        const COLS: &str = "id, tenant_id, session_id, role, content, model, prompt_tokens, \
                            completion_tokens, latency_ms, finish_reason, partial, truncated_turns, \
                            fallback_from, cached, guard_findings, created_at";
        let fetch = i64::from(limit) + 1;
        let rows = match before {
            Some(b) => {
                let anchor = sqlx::query(
                    "SELECT created_at, id FROM messages WHERE tenant_id = ? AND session_id = ? AND id = ?",
                )
                .bind(tenant.to_string())
                .bind(session.to_string())
                .bind(b.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?
                .ok_or(CoreError::NotFound("message"))?;
                let at: i64 = get(&anchor, "created_at")?;
                let aid: String = get(&anchor, "id")?;
                sqlx::query(&format!(
                    "SELECT {COLS} FROM messages WHERE tenant_id = ? AND session_id = ? \
                     AND (created_at < ? OR (created_at = ? AND id < ?)) \
                     ORDER BY created_at DESC, id DESC LIMIT ?"
                ))
                .bind(tenant.to_string())
                .bind(session.to_string())
                .bind(at)
                .bind(at)
                .bind(aid)
                .bind(fetch)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM messages WHERE tenant_id = ? AND session_id = ? \
                     ORDER BY created_at DESC, id DESC LIMIT ?"
                ))
                .bind(tenant.to_string())
                .bind(session.to_string())
                .bind(fetch)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(db_err)?;
        let has_more = rows.len() as i64 > i64::from(limit);
        let mut out = rows
            .iter()
            .take(limit as usize)
            .map(message_from)
            .collect::<CoreResult<Vec<_>>>()?;
        out.reverse();
        Ok((out, has_more))
    }

    async fn load_vault(
        &self,
        tenant: TenantId,
        session: SessionId,
    ) -> CoreResult<Option<Pseudonyms>> {
        let row =
            sqlx::query("SELECT data FROM guard_vaults WHERE tenant_id = ? AND session_id = ?")
                .bind(tenant.to_string())
                .bind(session.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(db_err)?;
        match row {
            None => Ok(None),
            Some(r) => {
                let data: String = get(&r, "data")?;
                serde_json::from_str(&data)
                    .map(Some)
                    .map_err(|e| CoreError::Storage(format!("unreadable guard vault: {e}")))
            }
        }
    }

    async fn save_vault(
        &self,
        tenant: TenantId,
        session: SessionId,
        vault: &Pseudonyms,
        now: Millis,
    ) -> CoreResult<()> {
        let data = serde_json::to_string(vault)
            .map_err(|e| CoreError::Internal(format!("guard vault: {e}")))?;
        sqlx::query(
            "INSERT INTO guard_vaults (session_id, tenant_id, data, updated_at) \
             SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM chat_sessions WHERE tenant_id = ? AND id = ?) \
             ON CONFLICT (session_id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at \
             WHERE guard_vaults.tenant_id = excluded.tenant_id",
        )
        .bind(session.to_string())
        .bind(tenant.to_string())
        .bind(data)
        .bind(now)
        .bind(tenant.to_string())
        .bind(session.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
