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
use sqlx::any::AnyRow;

use crate::crypto::Place;
use crate::rows::{get, id};
use crate::{db_err, Run, RunScalar, Scope, Store};

impl Store {
    /// The session with its title and system prompt decrypted.
    async fn open_session(&self, mut s: ChatSession) -> CoreResult<ChatSession> {
        let (tenant, row) = (s.tenant_id.to_string(), s.id.to_string());
        s.title = self
            .open_text(&title_at(&tenant, &row), std::mem::take(&mut s.title))
            .await?;
        s.system_prompt = self
            .open_opt(&system_at(&tenant, &row), s.system_prompt.take())
            .await?;
        Ok(s)
    }

    /// The message with its content decrypted.
    async fn open_message(&self, mut m: StoredMessage) -> CoreResult<StoredMessage> {
        let (tenant, row) = (m.tenant_id.to_string(), message_row(m.session_id, m.id));
        m.content = self
            .open_text(&content_at(&tenant, &row), std::mem::take(&mut m.content))
            .await?;
        Ok(m)
    }
}

fn title_at<'a>(tenant: &'a str, session: &'a str) -> Place<'a> {
    Place {
        tenant,
        field: "chat_sessions.title",
        row: session,
    }
}

fn system_at<'a>(tenant: &'a str, session: &'a str) -> Place<'a> {
    Place {
        tenant,
        field: "chat_sessions.system_prompt",
        row: session,
    }
}

fn content_at<'a>(tenant: &'a str, row: &'a str) -> Place<'a> {
    Place {
        tenant,
        field: "messages.content",
        row,
    }
}

fn vault_at<'a>(tenant: &'a str, session: &'a str) -> Place<'a> {
    Place {
        tenant,
        field: "guard_vaults.data",
        row: session,
    }
}

/// A message's place: its session and its id (the AAD binds both).
fn message_row(session: SessionId, message: MessageId) -> String {
    format!("{session}|{message}")
}

const PREVIEW_CHARS: usize = 120;

/// The title listed for a conversation whose encryption key was shredded.
pub const DESTROYED: &str = "(unreadable: its encryption key was destroyed)";

fn session_from(row: &AnyRow) -> CoreResult<ChatSession> {
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

fn message_from(row: &AnyRow) -> CoreResult<StoredMessage> {
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
        let _timed = crate::timed("create_session");
        let (tenant, row) = (s.tenant_id.to_string(), s.id.to_string());
        let title = self.seal_text(&title_at(&tenant, &row), &s.title).await?;
        let system = self
            .seal_opt(&system_at(&tenant, &row), s.system_prompt.as_deref())
            .await?;
        sqlx::query(
            "INSERT INTO chat_sessions (id, tenant_id, user_id, title, system_prompt, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(s.id.to_string())
        .bind(s.tenant_id.to_string())
        .bind(s.user_id.to_string())
        .bind(&title)
        .bind(&system)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute_in(self, Scope::Tenant(s.tenant_id))
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
        let _timed = crate::timed("get_session");
        let row = sqlx::query(
            "SELECT id, tenant_id, user_id, title, system_prompt, created_at, updated_at \
             FROM chat_sessions \
             WHERE tenant_id = $1 AND user_id = $2 AND id = $3",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(sid.to_string())
        .fetch_optional_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        match row.as_ref().map(session_from).transpose()? {
            Some(s) => Ok(Some(self.open_session(s).await?)),
            None => Ok(None),
        }
    }

    async fn list_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        sort: SessionSort,
        limit: u32,
        offset: u32,
    ) -> CoreResult<(Vec<SessionOverview>, u64)> {
        let _timed = crate::timed("list_sessions");
        // The ORDER BY is chosen from a closed set; values are always bound.
        let order = match sort {
            SessionSort::CreatedDesc => "s.created_at DESC, s.id DESC",
            SessionSort::CreatedAsc => "s.created_at ASC, s.id ASC",
            SessionSort::UpdatedDesc => "s.updated_at DESC, s.id DESC",
        };
        let sql = format!(
            "SELECT s.id, s.tenant_id, s.user_id, s.title, s.system_prompt, s.created_at, \
             s.updated_at, s.message_count, m.id AS preview_id, m.content AS preview \
             FROM chat_sessions s \
             LEFT JOIN messages m ON m.id = s.last_message_id AND m.tenant_id = s.tenant_id \
             WHERE s.tenant_id = $1 AND s.user_id = $2 \
             ORDER BY {order} LIMIT $3 OFFSET $4"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant.to_string())
            .bind(user.to_string())
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all_in(self, Scope::Tenant(tenant))
            .await
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let raw = session_from(row)?;
            let session = match self.open_session(raw.clone()).await {
                Ok(s) => s,
                // A conversation whose key was shredded stays listed (it can be deleted),
                // without its text.
                Err(CoreError::DataDestroyed) => {
                    out.push(SessionOverview {
                        session: ChatSession {
                            title: DESTROYED.into(),
                            system_prompt: None,
                            ..raw
                        },
                        message_count: get::<i64>(row, "message_count")?.max(0) as u64,
                        last_message_preview: None,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let preview = match (
                get::<Option<String>>(row, "preview_id")?,
                get::<Option<String>>(row, "preview")?,
            ) {
                (Some(mid), Some(text)) => {
                    let tenant = session.tenant_id.to_string();
                    // As `message_row`: the ids as stored.
                    let place = format!("{}|{mid}", session.id);
                    match self.open_text(&content_at(&tenant, &place), text).await {
                        Ok(text) => Some(text.chars().take(PREVIEW_CHARS).collect()),
                        Err(CoreError::DataDestroyed) => None,
                        Err(e) => return Err(e),
                    }
                }
                _ => None,
            };
            out.push(SessionOverview {
                session,
                message_count: get::<i64>(row, "message_count")?.max(0) as u64,
                last_message_preview: preview,
            });
        }
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM chat_sessions WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .fetch_one_in(self, Scope::Tenant(tenant))
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
        let _timed = crate::timed("rename_session");
        let (t, row) = (tenant.to_string(), sid.to_string());
        let title = self.seal_text(&title_at(&t, &row), title).await?;
        let r = sqlx::query(
            "UPDATE chat_sessions SET title = $1, updated_at = $2 \
             WHERE tenant_id = $3 AND user_id = $4 AND id = $5",
        )
        .bind(title)
        .bind(now)
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(sid.to_string())
        .execute_in(self, Scope::Tenant(tenant))
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
        let (t, row) = (tenant.to_string(), sid.to_string());
        let system_prompt = self.seal_opt(&system_at(&t, &row), system_prompt).await?;
        let r = sqlx::query(
            "UPDATE chat_sessions SET system_prompt = $1, updated_at = $2 \
             WHERE tenant_id = $3 AND user_id = $4 AND id = $5",
        )
        .bind(system_prompt)
        .bind(now)
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(sid.to_string())
        .execute_in(self, Scope::Tenant(tenant))
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
        let _timed = crate::timed("delete_session");
        let mut tx = self.begin(Scope::Tenant(tenant)).await?;
        let r = sqlx::query(
            "DELETE FROM chat_sessions WHERE tenant_id = $1 AND user_id = $2 AND id = $3",
        )
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(sid.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if r.rows_affected() == 1 {
            // Explicit, in case foreign keys were off on this connection.
            sqlx::query("DELETE FROM messages WHERE tenant_id = $1 AND session_id = $2")
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
        let _timed = crate::timed("append_message");
        let tenant = m.tenant_id.to_string();
        let content = self
            .seal_text(
                &content_at(&tenant, &message_row(m.session_id, m.id)),
                &m.content,
            )
            .await?;
        let mut tx = self.begin(Scope::Tenant(m.tenant_id)).await?;
        let meta = m.meta.as_ref();
        let r = sqlx::query(
            "INSERT INTO messages (id, tenant_id, session_id, role, content, model, prompt_tokens, \
             completion_tokens, latency_ms, finish_reason, partial, truncated_turns, fallback_from, \
             cached, guard_findings, created_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16 \
             WHERE EXISTS (SELECT 1 FROM chat_sessions WHERE tenant_id = $17 AND id = $18)",
        )
        .bind(m.id.to_string())
        .bind(m.tenant_id.to_string())
        .bind(m.session_id.to_string())
        .bind(m.role.as_str())
        .bind(&content)
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
        // The session's summary for the conversation list (migration 0016): one more message,
        // and the latest one by (created_at, id), the order the message pages use.
        sqlx::query(
            "UPDATE chat_sessions SET \
             updated_at = CASE WHEN updated_at < $1 THEN $1 ELSE updated_at END, \
             message_count = message_count + 1, \
             last_message_id = CASE WHEN last_message_at IS NULL OR last_message_at < $1 \
                OR (last_message_at = $1 AND last_message_id < $2) THEN $2 ELSE last_message_id END, \
             last_message_at = CASE WHEN last_message_at IS NULL OR last_message_at < $1 \
                OR (last_message_at = $1 AND last_message_id < $2) THEN $1 ELSE last_message_at END \
             WHERE tenant_id = $3 AND id = $4",
        )
            .bind(m.created_at)
            .bind(m.id.to_string())
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
        let _timed = crate::timed("list_messages");
        const COLS: &str = "id, tenant_id, session_id, role, content, model, prompt_tokens, \
                            completion_tokens, latency_ms, finish_reason, partial, truncated_turns, \
                            fallback_from, cached, guard_findings, created_at";
        let fetch = i64::from(limit) + 1;
        let rows = match before {
            Some(b) => {
                let anchor = sqlx::query(
                    "SELECT created_at, id FROM messages WHERE tenant_id = $1 AND session_id = $2 AND id = $3",
                )
                .bind(tenant.to_string())
                .bind(session.to_string())
                .bind(b.to_string())
                .fetch_optional_in(self, Scope::Tenant(tenant))
                .await
                .map_err(db_err)?
                .ok_or(CoreError::NotFound("message"))?;
                let at: i64 = get(&anchor, "created_at")?;
                let aid: String = get(&anchor, "id")?;
                sqlx::query(&format!(
                    "SELECT {COLS} FROM messages WHERE tenant_id = $1 AND session_id = $2 \
                     AND (created_at < $3 OR (created_at = $4 AND id < $5)) \
                     ORDER BY created_at DESC, id DESC LIMIT $6"
                ))
                .bind(tenant.to_string())
                .bind(session.to_string())
                .bind(at)
                .bind(at)
                .bind(aid)
                .bind(fetch)
                .fetch_all_in(self, Scope::Tenant(tenant))
                .await
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM messages WHERE tenant_id = $1 AND session_id = $2 \
                     ORDER BY created_at DESC, id DESC LIMIT $3"
                ))
                .bind(tenant.to_string())
                .bind(session.to_string())
                .bind(fetch)
                .fetch_all_in(self, Scope::Tenant(tenant))
                .await
            }
        }
        .map_err(db_err)?;
        let has_more = rows.len() as i64 > i64::from(limit);
        let mut out = Vec::with_capacity(rows.len().min(limit as usize));
        for row in rows.iter().take(limit as usize) {
            out.push(self.open_message(message_from(row)?).await?);
        }
        out.reverse();
        Ok((out, has_more))
    }

    async fn load_vault(
        &self,
        tenant: TenantId,
        session: SessionId,
    ) -> CoreResult<Option<Pseudonyms>> {
        let _timed = crate::timed("load_vault");
        let row =
            sqlx::query("SELECT data FROM guard_vaults WHERE tenant_id = $1 AND session_id = $2")
                .bind(tenant.to_string())
                .bind(session.to_string())
                .fetch_optional_in(self, Scope::Tenant(tenant))
                .await
                .map_err(db_err)?;
        match row {
            None => Ok(None),
            Some(r) => {
                let (t, row) = (tenant.to_string(), session.to_string());
                let data: String = get(&r, "data")?;
                let data = self.open_text(&vault_at(&t, &row), data).await?;
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
        let _timed = crate::timed("save_vault");
        let data = serde_json::to_string(vault)
            .map_err(|e| CoreError::Internal(format!("guard vault: {e}")))?;
        let (t, row) = (tenant.to_string(), session.to_string());
        let data = self.seal_text(&vault_at(&t, &row), &data).await?;
        sqlx::query(
            "INSERT INTO guard_vaults (session_id, tenant_id, data, updated_at) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM chat_sessions WHERE tenant_id = $5 AND id = $6) \
             ON CONFLICT (session_id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at \
             WHERE guard_vaults.tenant_id = excluded.tenant_id",
        )
        .bind(session.to_string())
        .bind(tenant.to_string())
        .bind(data)
        .bind(now)
        .bind(tenant.to_string())
        .bind(session.to_string())
        .execute_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
