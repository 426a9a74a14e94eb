//! API keys, external identity links and the security event stream on SQLite.

use async_trait::async_trait;
use palisade_core::entities::Millis;
use palisade_core::identity::{ApiKey, EventQuery, SecurityEvent, SecurityEventKind};
use palisade_core::ids::{ApiKeyId, TenantId, UserId};
use palisade_core::ports::{ApiKeyRepository, ExternalIdentityRepository, SecurityEventSink};
use palisade_core::{CoreError, CoreResult};
use sqlx::any::AnyRow;

use crate::rows::{get, id};
use crate::{db_err, Run, RunScalar, Scope, Store};

const KEY_COLS: &str = "id, tenant_id, user_id, name, prefix, key_hash, scopes, models, \
                        expires_at, last_used_at, created_at, revoked, store_conversations";

fn json_list(row: &AnyRow, col: &str) -> CoreResult<Option<Vec<String>>> {
    let raw: Option<String> = get(row, col)?;
    raw.map(|s| serde_json::from_str(&s).map_err(|_| CoreError::Storage(format!("corrupt {col}"))))
        .transpose()
}

fn key_from(row: &AnyRow) -> CoreResult<ApiKey> {
    Ok(ApiKey {
        id: id(row, "id")?,
        tenant_id: id(row, "tenant_id")?,
        user_id: id(row, "user_id")?,
        name: get(row, "name")?,
        prefix: get(row, "prefix")?,
        key_hash: get(row, "key_hash")?,
        scopes: json_list(row, "scopes")?.unwrap_or_default(),
        models: json_list(row, "models")?,
        expires_at: get(row, "expires_at")?,
        last_used_at: get(row, "last_used_at")?,
        created_at: get(row, "created_at")?,
        revoked: get::<i64>(row, "revoked")? != 0,
        store_conversations: get::<i64>(row, "store_conversations")? != 0,
    })
}

fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> CoreResult<String> {
    serde_json::to_string(v).map_err(|e| CoreError::Internal(format!("json: {e}")))
}

#[async_trait]
impl ApiKeyRepository for Store {
    async fn insert_key(&self, k: &ApiKey) -> CoreResult<()> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let models = k.models.as_deref().map(to_json).transpose()?;
        sqlx::query(&format!(
            "INSERT INTO api_keys ({KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(k.id.to_string())
        .bind(k.tenant_id.to_string())
        .bind(k.user_id.to_string())
        .bind(&k.name)
        .bind(&k.prefix)
        .bind(&k.key_hash)
        .bind(to_json(&k.scopes)?)
        .bind(models)
        .bind(k.expires_at)
        .bind(k.last_used_at)
        .bind(k.created_at)
        .bind(i64::from(k.revoked))
        .bind(i64::from(k.store_conversations))
        .execute_in(self, Scope::Tenant(k.tenant_id))
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn find_key_by_prefix(&self, prefix: &str) -> CoreResult<Option<ApiKey>> {
        let load = async {
            let _timed = crate::timed("find_key_by_prefix");
            let row = sqlx::query(&format!(
                "SELECT {KEY_COLS} FROM api_keys WHERE prefix = $1"
            ))
            .bind(prefix)
            .fetch_optional_in(self, Scope::System)
            .await
            .map_err(db_err)?;
            row.as_ref().map(key_from).transpose()
        };
        self.hot.keys.read(&self.hot, prefix, load).await
    }

    async fn find_key_by_id(&self, kid: ApiKeyId) -> CoreResult<Option<ApiKey>> {
        let row = sqlx::query(&format!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1"))
            .bind(kid.to_string())
            .fetch_optional_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        row.as_ref().map(key_from).transpose()
    }

    async fn list_keys(&self, tenant: TenantId, user: UserId) -> CoreResult<Vec<ApiKey>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE tenant_id = $1 AND user_id = $2 \
             ORDER BY created_at DESC LIMIT 1000"
        ))
        .bind(tenant.to_string())
        .bind(user.to_string())
        .fetch_all_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        rows.iter().map(key_from).collect()
    }

    async fn revoke_key(&self, tenant: TenantId, user: UserId, kid: ApiKeyId) -> CoreResult<bool> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let r = sqlx::query(
            "UPDATE api_keys SET revoked = 1 WHERE id = $1 AND tenant_id = $2 AND user_id = $3",
        )
        .bind(kid.to_string())
        .bind(tenant.to_string())
        .bind(user.to_string())
        .execute_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() > 0)
    }

    async fn touch_key(&self, kid: ApiKeyId, now: Millis) -> CoreResult<()> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let _timed = crate::timed("touch_key");
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(kid.to_string())
            .execute_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

#[async_trait]
impl ExternalIdentityRepository for Store {
    async fn find_link(
        &self,
        provider: &str,
        subject: &str,
    ) -> CoreResult<Option<(TenantId, UserId)>> {
        let row = sqlx::query(
            "SELECT tenant_id, user_id FROM external_identities WHERE provider = $1 AND subject = $2",
        )
        .bind(provider)
        .bind(subject)
        .fetch_optional_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        row.map(|r| Ok((id(&r, "tenant_id")?, id(&r, "user_id")?)))
            .transpose()
    }

    async fn link(
        &self,
        provider: &str,
        subject: &str,
        tenant: TenantId,
        user: UserId,
    ) -> CoreResult<()> {
        sqlx::query(
            "INSERT INTO external_identities (provider, subject, tenant_id, user_id, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(provider)
        .bind(subject)
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(palisade_core::entities::now_millis())
        .execute_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        Ok(())
    }
}

fn opt_id<T: From<uuid::Uuid>>(row: &AnyRow, col: &str) -> CoreResult<Option<T>> {
    let raw: Option<String> = get(row, col)?;
    raw.map(|s| {
        s.parse::<uuid::Uuid>()
            .map(T::from)
            .map_err(|_| CoreError::Storage(format!("corrupt {col}")))
    })
    .transpose()
}

fn event_from(row: &AnyRow) -> CoreResult<SecurityEvent> {
    let kind: String = get(row, "kind")?;
    let detail: String = get(row, "detail")?;
    Ok(SecurityEvent {
        kind: serde_json::from_value::<SecurityEventKind>(serde_json::Value::String(kind))
            .map_err(|_| CoreError::Storage("corrupt event kind".into()))?,
        tenant_id: opt_id(row, "tenant_id")?,
        user_id: opt_id(row, "user_id")?,
        actor_id: opt_id(row, "actor_id")?,
        ip: get(row, "ip")?,
        user_agent: get(row, "user_agent")?,
        request_id: get(row, "request_id")?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        created_at: get(row, "created_at")?,
        chain_seq: get(row, "chain_seq")?,
        hash: get(row, "hash")?,
        seq: Some(get(row, "seq")?),
    })
}

enum Bind {
    Text(String),
    Int(i64),
}

/// Adds a parameter; its placeholder.
fn next(binds: &mut Vec<Bind>, b: Bind) -> String {
    binds.push(b);
    format!("${}", binds.len())
}

/// Which rows an audit search statement reads.
#[derive(Clone, Copy)]
enum EventSource {
    /// `security_events` with its own indexes (PostgreSQL).
    Table,
    /// SQLite: the events copied into `security_events_search` (positions up to this one), read
    /// through that table's indexes.
    Indexed(i64),
    /// SQLite: the events after this position, not yet copied (a short stretch at the end).
    Tail(i64),
}

/// The statement of an audit search and its parameters, in placeholder order. Only the
/// filters given appear in it, so each can use its index.
fn event_search_sql(q: &EventQuery, source: EventSource, table: &str) -> (String, Vec<Bind>) {
    // The searchable columns are read where the indexes are: the search table on SQLite's
    // indexed part (`s`), else the events themselves (`e`).
    let (from, col) = match source {
        EventSource::Indexed(_) => (
            format!("{table} s JOIN security_events e ON e.seq = s.seq"),
            "s.",
        ),
        EventSource::Table | EventSource::Tail(_) => ("security_events e".to_string(), "e."),
    };
    let mut conds: Vec<String> = Vec::new();
    let mut binds: Vec<Bind> = Vec::new();
    match source {
        EventSource::Table => {}
        EventSource::Indexed(upto) => {
            let p = next(&mut binds, Bind::Int(upto));
            conds.push(format!("s.seq <= {p}"));
        }
        EventSource::Tail(upto) => {
            let p = next(&mut binds, Bind::Int(upto));
            conds.push(format!("e.seq > {p}"));
        }
    }
    if let Some(t) = q.tenant {
        let p = next(&mut binds, Bind::Text(t.to_string()));
        conds.push(format!("{col}tenant_id = {p}"));
    }
    if !q.kinds.is_empty() {
        let ps: Vec<String> = q
            .kinds
            .iter()
            .map(|k| next(&mut binds, Bind::Text(k.as_str().to_string())))
            .collect();
        conds.push(format!("{col}kind IN ({})", ps.join(", ")));
    }
    if let Some(u) = q.user {
        let a = next(&mut binds, Bind::Text(u.to_string()));
        let b = next(&mut binds, Bind::Text(u.to_string()));
        conds.push(format!("({col}user_id = {a} OR {col}actor_id = {b})"));
    }
    if let Some(r) = &q.request_id {
        let p = next(&mut binds, Bind::Text(r.clone()));
        conds.push(format!("{col}request_id = {p}"));
    }
    if let Some(ip) = &q.ip {
        let p = next(&mut binds, Bind::Text(ip.clone()));
        conds.push(format!("e.ip = {p}"));
    }
    if let Some(t) = q.since {
        let p = next(&mut binds, Bind::Int(t));
        conds.push(format!("{col}created_at >= {p}"));
    }
    if let Some(t) = q.until {
        let p = next(&mut binds, Bind::Int(t));
        conds.push(format!("{col}created_at < {p}"));
    }
    if let Some(s) = q.before {
        let p = next(&mut binds, Bind::Int(s));
        conds.push(format!("{col}seq < {p}"));
    }
    if let Some(s) = q.after {
        let p = next(&mut binds, Bind::Int(s));
        conds.push(format!("{col}seq > {p}"));
    }
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    let order = if q.ascending() { "ASC" } else { "DESC" };
    let limit = next(&mut binds, Bind::Int(i64::from(search_limit(q))));
    (
        format!(
            "SELECT e.seq, e.kind, e.tenant_id, e.user_id, e.actor_id, e.ip, e.user_agent, \
             e.request_id, e.detail, e.created_at, e.chain_seq, e.hash FROM {from} {filter} \
             ORDER BY {col}seq {order} LIMIT {limit}"
        ),
        binds,
    )
}

/// The most events one search returns.
fn search_limit(q: &EventQuery) -> u32 {
    q.limit.clamp(1, 1000)
}

/// Where the text of a model request (`detail.content`, recorded when the tenant's policy
/// says so) is sealed: its tenant, and the event's kind, time, request and user.
fn content_place<'a>(tenant: &'a str, row: &'a str) -> crate::crypto::Place<'a> {
    crate::crypto::Place {
        tenant,
        field: "security_events.content",
        row,
    }
}

fn content_row(e: &SecurityEvent) -> String {
    format!(
        "{}|{}|{}|{}",
        e.kind.as_str(),
        e.created_at,
        e.request_id.as_deref().unwrap_or("-"),
        e.user_id.map(|u| u.to_string()).unwrap_or_default()
    )
}

impl Store {
    /// Seals `detail.content` with the tenant's data key before the event is chained (the
    /// chain covers the sealed form, so a shredded tenant's trail still verifies). Content
    /// without a tenant is dropped: the text is never stored in the clear.
    async fn seal_event_content(&self, e: &mut SecurityEvent) -> CoreResult<()> {
        let Some(content) = e.detail.get("content").filter(|c| !c.is_null()) else {
            return Ok(());
        };
        let plain = content.to_string();
        let sealed = match e.tenant_id {
            Some(t) => {
                let (tenant, row) = (t.to_string(), content_row(e));
                Some(
                    self.seal_text(&content_place(&tenant, &row), &plain)
                        .await?,
                )
            }
            None => None,
        };
        if let Some(d) = e.detail.as_object_mut() {
            match sealed {
                Some(s) => d.insert("content".into(), serde_json::Value::String(s)),
                None => d.remove("content"),
            };
        }
        Ok(())
    }

    /// Opens `detail.content` for a reader with `audit:read`; a value that no longer opens
    /// (the tenant's keys shredded) reads as `{"unavailable": "data_destroyed"}`.
    async fn open_event_content(&self, e: &mut SecurityEvent) {
        let Some(serde_json::Value::String(stored)) = e.detail.get("content").cloned() else {
            return;
        };
        let opened = match e.tenant_id {
            Some(t) => {
                let (tenant, row) = (t.to_string(), content_row(e));
                self.open_text(&content_place(&tenant, &row), stored)
                    .await
                    .ok()
                    .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            }
            None => None,
        };
        if let Some(d) = e.detail.as_object_mut() {
            d.insert(
                "content".into(),
                opened.unwrap_or_else(|| serde_json::json!({ "unavailable": "data_destroyed" })),
            );
        }
    }
}

#[async_trait]
impl SecurityEventSink for Store {
    async fn record(&self, mut e: SecurityEvent) -> CoreResult<()> {
        self.seal_event_content(&mut e).await?;
        self.append_event(e).await.map(|_| ())
    }

    async fn search_events(&self, q: &EventQuery) -> CoreResult<Vec<SecurityEvent>> {
        let _timed = crate::timed("search_events");
        let scope = q.tenant.map(Scope::Tenant).unwrap_or(Scope::System);
        let mut events = if self.backend() == crate::Backend::Sqlite {
            // The copied events and the stretch after them (`audit_index.rs`). Every event up
            // to `upto` is in the search table and stays there (the trail is append-only), so
            // the two parts neither overlap nor miss one, whenever the copy runs meanwhile.
            let upto_sql = crate::audit_index::indexed_upto_sql(self.search_table());
            let upto: i64 = sqlx::query_scalar(&upto_sql)
                .fetch_one_in(self, scope)
                .await
                .map_err(db_err)?;
            let limit = usize::try_from(search_limit(q)).unwrap_or(usize::MAX);
            // The part nearer the start of the answer first: the tail for newest first.
            let (first, second) = if q.ascending() {
                (EventSource::Indexed(upto), EventSource::Tail(upto))
            } else {
                (EventSource::Tail(upto), EventSource::Indexed(upto))
            };
            let mut events = self.search_part(q, first, scope).await?;
            if events.len() < limit {
                events.extend(self.search_part(q, second, scope).await?);
                events.truncate(limit);
            }
            events
        } else {
            self.search_part(q, EventSource::Table, scope).await?
        };
        for e in &mut events {
            self.open_event_content(e).await;
        }
        Ok(events)
    }
}

impl Store {
    /// The events of one part of an audit search, in the search's order.
    async fn search_part(
        &self,
        q: &EventQuery,
        source: EventSource,
        scope: Scope,
    ) -> CoreResult<Vec<SecurityEvent>> {
        let (sql, binds) = event_search_sql(q, source, self.search_table());
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = match b {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all_in(self, scope).await.map_err(db_err)?;
        rows.iter().map(event_from).collect()
    }
}

#[async_trait]
impl palisade_core::ports::InviteRepository for Store {
    async fn create_invite(&self, i: &palisade_core::identity::Invite) -> CoreResult<()> {
        sqlx::query(
            "INSERT INTO invites (code_hash, tenant_id, role, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&i.code_hash)
        .bind(i.tenant_id.to_string())
        .bind(i.role.as_str())
        .bind(i.created_by.map(|u| u.to_string()))
        .bind(i.created_at)
        .bind(i.expires_at)
        .execute_in(self, Scope::Tenant(i.tenant_id))
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn consume_invite(
        &self,
        code_hash: &str,
        now: Millis,
    ) -> CoreResult<Option<palisade_core::identity::Invite>> {
        let row = sqlx::query(
            "UPDATE invites SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL \
             AND expires_at > $3 \
             RETURNING code_hash, tenant_id, role, created_by, created_at, expires_at",
        )
        .bind(now)
        .bind(code_hash)
        .bind(now)
        .fetch_optional_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            let role: String = get(&r, "role")?;
            Ok(palisade_core::identity::Invite {
                code_hash: get(&r, "code_hash")?,
                tenant_id: id(&r, "tenant_id")?,
                role: palisade_core::access::RoleName::new(&role)
                    .map_err(|_| CoreError::Storage("corrupt invite role".into()))?,
                created_by: opt_id(&r, "created_by")?,
                created_at: get(&r, "created_at")?,
                expires_at: get(&r, "expires_at")?,
            })
        })
        .transpose()
    }

    async fn release_invite(&self, code_hash: &str) -> CoreResult<()> {
        sqlx::query("UPDATE invites SET used_at = NULL WHERE code_hash = $1")
            .bind(code_hash)
            .execute_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}
