//! Retention and legal holds: conversations untouched for longer than their tenant's retention
//! are purged by a background job (`retention_purge`), except where a legal hold (on the
//! tenant, or on a user) stops it. Every change and every purge is in the audit trail.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::access::{Grant, RetentionManage};
use crate::entities::{now_millis, Millis};
use crate::error::{CoreError, CoreResult};
use crate::identity::{SecurityEvent, SecurityEventKind};
use crate::ids::{TenantId, UserId};
use crate::jobs::{Job, JobHandler};
use crate::ports::{SecurityEventSink, TenantRepository, UserRepository};

/// The job kind of the purge.
pub const PURGE_JOB: &str = "retention_purge";

/// Longest retention that can be set (days): ten years.
pub const MAX_DAYS: u32 = 3650;

/// A tenant's setting: retention in days (`None`: the configured default; `Some(0)`: keep
/// forever) and its legal hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantRetention {
    pub tenant_id: TenantId,
    pub days: Option<u32>,
    pub legal_hold: bool,
    pub updated_at: Millis,
    pub updated_by: String,
}

/// A user under legal hold: their conversations are never purged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserHold {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub reason: String,
    pub created_at: Millis,
    pub created_by: String,
}

/// Persistence of retention settings and the purge itself.
#[async_trait]
pub trait RetentionRepository: Send + Sync + 'static {
    async fn tenant_retentions(&self) -> CoreResult<Vec<TenantRetention>>;
    async fn put_tenant_retention(&self, r: &TenantRetention) -> CoreResult<()>;
    async fn user_holds(&self, tenant: Option<TenantId>) -> CoreResult<Vec<UserHold>>;
    async fn put_user_hold(&self, h: &UserHold) -> CoreResult<()>;
    /// `false` when there was no hold.
    async fn delete_user_hold(&self, tenant: TenantId, user: UserId) -> CoreResult<bool>;
    /// Deletes the tenant's conversations (with their messages and vaults) last changed before
    /// `before`, except those of users under hold; the number deleted.
    async fn purge_conversations(&self, tenant: TenantId, before: Millis) -> CoreResult<u64>;
}

/// What administrators see.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionView {
    pub default_days: u32,
    pub tenants: Vec<TenantRetention>,
    pub user_holds: Vec<UserHold>,
}

/// Retention settings, holds and the purge.
pub struct Retention {
    repo: Arc<dyn RetentionRepository>,
    tenants: Arc<dyn TenantRepository>,
    users: Arc<dyn UserRepository>,
    events: Arc<dyn SecurityEventSink>,
    /// `retention.days` of the configuration (0: keep forever).
    default_days: u32,
}

impl Retention {
    pub fn new(
        repo: Arc<dyn RetentionRepository>,
        tenants: Arc<dyn TenantRepository>,
        users: Arc<dyn UserRepository>,
        events: Arc<dyn SecurityEventSink>,
        default_days: u32,
    ) -> Retention {
        Retention {
            repo,
            tenants,
            users,
            events,
            default_days,
        }
    }

    /// The tenant a caller may act on: any for platform administrators, else their own.
    fn scope(g: &Grant<RetentionManage>, tenant: TenantId) -> CoreResult<TenantId> {
        let p = g.principal();
        if p.is_platform_admin() || p.tenant_id == tenant {
            Ok(tenant)
        } else {
            Err(CoreError::NotFound("tenant"))
        }
    }

    async fn record(
        &self,
        g: &Grant<RetentionManage>,
        kind: SecurityEventKind,
        tenant: TenantId,
        detail: serde_json::Value,
    ) {
        let p = g.principal();
        let mut e = SecurityEvent::new(kind)
            .actor(p.user_id)
            .client(&p.client)
            .detail(detail);
        e.tenant_id = Some(tenant);
        if let Err(err) = self.events.record(e).await {
            tracing::error!(error = ?err, "could not record a retention change");
        }
    }

    pub async fn view(&self, g: &Grant<RetentionManage>) -> CoreResult<RetentionView> {
        let p = g.principal();
        let mine = |t: &TenantId| p.is_platform_admin() || *t == p.tenant_id;
        let tenants = self
            .repo
            .tenant_retentions()
            .await?
            .into_iter()
            .filter(|r| mine(&r.tenant_id))
            .collect();
        let scope = (!p.is_platform_admin()).then_some(p.tenant_id);
        Ok(RetentionView {
            default_days: self.default_days,
            tenants,
            user_holds: self.repo.user_holds(scope).await?,
        })
    }

    /// Sets a tenant's retention (`None`: the default) and legal hold.
    pub async fn set_tenant(
        &self,
        g: &Grant<RetentionManage>,
        tenant: TenantId,
        days: Option<u32>,
        legal_hold: bool,
    ) -> CoreResult<TenantRetention> {
        let tenant = Self::scope(g, tenant)?;
        if self.tenants.get_tenant(tenant).await?.is_none() {
            return Err(CoreError::NotFound("tenant"));
        }
        if days.is_some_and(|d| d > MAX_DAYS) {
            return Err(CoreError::validation(
                "invalid_days",
                format!("days is 0 (keep forever) to {MAX_DAYS}"),
            ));
        }
        let r = TenantRetention {
            tenant_id: tenant,
            days,
            legal_hold,
            updated_at: now_millis(),
            updated_by: g.principal().username.clone(),
        };
        self.repo.put_tenant_retention(&r).await?;
        self.record(
            g,
            SecurityEventKind::RetentionChanged,
            tenant,
            serde_json::json!({ "days": days, "legal_hold": legal_hold }),
        )
        .await;
        Ok(r)
    }

    /// Puts a user under legal hold (`on`) or releases them.
    pub async fn set_user_hold(
        &self,
        g: &Grant<RetentionManage>,
        tenant: TenantId,
        user: UserId,
        on: bool,
        reason: &str,
    ) -> CoreResult<()> {
        let tenant = Self::scope(g, tenant)?;
        if self.users.find_by_id(tenant, user).await?.is_none() {
            return Err(CoreError::NotFound("user"));
        }
        let reason = reason.trim();
        if reason.chars().count() > 500 {
            return Err(CoreError::validation(
                "invalid_reason",
                "reason has at most 500 characters",
            ));
        }
        if on {
            self.repo
                .put_user_hold(&UserHold {
                    tenant_id: tenant,
                    user_id: user,
                    reason: reason.to_string(),
                    created_at: now_millis(),
                    created_by: g.principal().username.clone(),
                })
                .await?;
        } else if !self.repo.delete_user_hold(tenant, user).await? {
            return Err(CoreError::NotFound("legal hold"));
        }
        self.record(
            g,
            SecurityEventKind::LegalHoldChanged,
            tenant,
            serde_json::json!({ "user_id": user.to_string(), "hold": on, "reason": reason }),
        )
        .await;
        Ok(())
    }

    /// Purges every tenant's expired conversations: (tenant, conversations deleted) for each
    /// tenant where something was deleted.
    pub async fn purge(&self, now: Millis) -> CoreResult<Vec<(TenantId, u64)>> {
        let settings = self.repo.tenant_retentions().await?;
        let mut out = Vec::new();
        for t in self.tenants.list_tenants().await? {
            let own = settings.iter().find(|s| s.tenant_id == t.id);
            if own.is_some_and(|s| s.legal_hold) {
                continue;
            }
            let days = own.and_then(|s| s.days).unwrap_or(self.default_days);
            if days == 0 {
                continue;
            }
            let before = now - i64::from(days) * 86_400_000;
            let n = self.repo.purge_conversations(t.id, before).await?;
            if n > 0 {
                let mut e = SecurityEvent::new(SecurityEventKind::RetentionPurge).detail(
                    serde_json::json!({ "conversations": n, "days": days, "before": before }),
                );
                e.tenant_id = Some(t.id);
                if let Err(err) = self.events.record(e).await {
                    tracing::error!(error = ?err, "could not record a retention purge");
                }
                out.push((t.id, n));
            }
        }
        Ok(out)
    }
}

/// The `retention_purge` job.
pub struct PurgeJob(pub Arc<Retention>);

#[async_trait]
impl JobHandler for PurgeJob {
    fn kind(&self) -> &'static str {
        PURGE_JOB
    }

    async fn run(&self, _job: &Job) -> Result<(), String> {
        let purged = self.0.purge(now_millis()).await.map_err(|e| match e {
            CoreError::Storage(_) | CoreError::StorageUnavailable(_) | CoreError::Internal(_) => {
                "storage error during the purge".to_string()
            }
            other => other.to_string(),
        })?;
        let total: u64 = purged.iter().map(|(_, n)| n).sum();
        tracing::info!(
            conversations = total,
            tenants = purged.len(),
            "retention purge done"
        );
        Ok(())
    }
}
