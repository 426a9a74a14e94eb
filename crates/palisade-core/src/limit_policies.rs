//! Limit overrides per tenant, user and API key, changed at run time through the admin API.
//!
//! `[limits]` gives the defaults (per role); an administrator's override for one tenant, user or
//! key replaces the figures it names and inherits the rest. Overrides are stored (one row per
//! subject), applied at once on the replica that took the change, and picked up by the others
//! when they reload (at start and every few seconds).
//!
//! Who may change what (`limits:manage`): platform administrators everything; a tenant's
//! administrators the users and keys of their own tenant, never the tenant's own ceiling (that
//! is what protects the other tenants).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::access::{Grant, LimitsManage};
use crate::entities::{now_millis, Millis};
use crate::error::{CoreError, CoreResult};
use crate::ids::{ApiKeyId, TenantId, UserId};
use crate::ports::{ApiKeyRepository, UserRepository};

/// What an override is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    Tenant,
    User,
    Key,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Tenant => "tenant",
            LimitScope::User => "user",
            LimitScope::Key => "key",
        }
    }

    pub fn parse(s: &str) -> CoreResult<LimitScope> {
        match s {
            "tenant" => Ok(LimitScope::Tenant),
            "user" => Ok(LimitScope::User),
            "key" => Ok(LimitScope::Key),
            _ => Err(CoreError::NotFound("limit scope")),
        }
    }
}

/// The figures an override may set; a field left out is inherited. Rates are written as in
/// `[limits]` (`"500000/day"`, `"5/s"`, `"off"`), compute in seconds per window.
///
/// - tenant: `requests`, `tokens`, `compute`, `streams`
/// - user: `chat`, `api`, `tokens`, `compute`, `streams`
/// - key: `tokens`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<String>,
    /// Answers streaming at once (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<u32>,
}

impl LimitOverride {
    /// The fields that are set, by name.
    pub fn fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (name, set) in [
            ("requests", self.requests.is_some()),
            ("chat", self.chat.is_some()),
            ("api", self.api.is_some()),
            ("tokens", self.tokens.is_some()),
            ("compute", self.compute.is_some()),
            ("streams", self.streams.is_some()),
        ] {
            if set {
                out.push(name);
            }
        }
        out
    }

    /// Checks that every field set belongs to `scope` and that something is set.
    pub fn check_fields(&self, scope: LimitScope) -> CoreResult<()> {
        let allowed: &[&str] = match scope {
            LimitScope::Tenant => &["requests", "tokens", "compute", "streams"],
            LimitScope::User => &["chat", "api", "tokens", "compute", "streams"],
            LimitScope::Key => &["tokens"],
        };
        let fields = self.fields();
        if fields.is_empty() {
            return Err(CoreError::validation(
                "empty_override",
                "set at least one limit; to go back to the defaults, delete the override",
            ));
        }
        if let Some(f) = fields.iter().find(|f| !allowed.contains(f)) {
            return Err(CoreError::validation(
                "invalid_limit_field",
                format!(
                    "`{f}` is not a limit of a {}; it may set {}",
                    scope.as_str(),
                    allowed.join(", ")
                ),
            ));
        }
        if let Some(n) = self.streams {
            if n > 100_000 {
                return Err(CoreError::validation(
                    "invalid_limit",
                    "streams must be 0..=100000",
                ));
            }
        }
        Ok(())
    }
}

/// An override as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredLimitPolicy {
    pub scope: LimitScope,
    /// The tenant's, user's or key's id.
    pub subject: String,
    /// The tenant the subject belongs to.
    pub tenant_id: TenantId,
    pub limits: LimitOverride,
    pub updated_at: Millis,
    pub updated_by: String,
}

/// Persistence of overrides.
#[async_trait::async_trait]
pub trait LimitPolicyRepository: Send + Sync + 'static {
    async fn list_limit_policies(&self) -> CoreResult<Vec<StoredLimitPolicy>>;
    /// Inserts or replaces the override of (`scope`, `subject`).
    async fn put_limit_policy(&self, policy: &StoredLimitPolicy) -> CoreResult<()>;
    /// True when a row was removed.
    async fn delete_limit_policy(&self, scope: LimitScope, subject: &str) -> CoreResult<bool>;
}

/// The limiter's side: checks an override's values and applies overrides.
pub trait LimitOverrides: Send + Sync + 'static {
    /// Checks the values (rates parse); nothing is applied.
    fn check(&self, scope: LimitScope, limits: &LimitOverride) -> CoreResult<()>;
    /// Replaces every override by `all` (at start, and when reloading what other replicas
    /// stored).
    fn replace_all(&self, all: &[StoredLimitPolicy]);
    /// Sets (`Some`) or removes (`None`) one override.
    fn apply(&self, scope: LimitScope, subject: &str, limits: Option<&LimitOverride>);
    /// The configured defaults, by name (`user.tokens` → `1000000/day`), for the admin view.
    fn defaults(&self) -> Vec<(String, String)>;
}

/// The admin side of limit overrides.
pub struct LimitPolicies {
    limiter: Option<Arc<dyn LimitOverrides>>,
    repo: Arc<dyn LimitPolicyRepository>,
    users: Arc<dyn UserRepository>,
    keys: Arc<dyn ApiKeyRepository>,
}

/// The admin view: the defaults and the overrides the caller may see.
#[derive(Debug, Clone, Serialize)]
pub struct LimitPolicyView {
    pub defaults: Vec<(String, String)>,
    pub overrides: Vec<StoredLimitPolicy>,
}

impl LimitPolicies {
    /// `limiter` is `None` when limits are turned off.
    pub fn new(
        limiter: Option<Arc<dyn LimitOverrides>>,
        repo: Arc<dyn LimitPolicyRepository>,
        users: Arc<dyn UserRepository>,
        keys: Arc<dyn ApiKeyRepository>,
    ) -> Self {
        Self {
            limiter,
            repo,
            users,
            keys,
        }
    }

    /// Applies every stored override (at start, and periodically for other replicas'
    /// changes). Returns how many.
    pub async fn load(&self) -> CoreResult<usize> {
        let Some(limiter) = &self.limiter else {
            return Ok(0);
        };
        let stored = self.repo.list_limit_policies().await?;
        limiter.replace_all(&stored);
        Ok(stored.len())
    }

    fn limiter(&self) -> CoreResult<&Arc<dyn LimitOverrides>> {
        self.limiter.as_ref().ok_or_else(|| {
            CoreError::validation(
                "limits_disabled",
                "limits are turned off on this server (limits.enabled = false)",
            )
        })
    }

    /// The tenant a subject belongs to, checked against what the caller may reach. Subjects
    /// of other tenants look absent.
    async fn owner(
        &self,
        grant: &Grant<LimitsManage>,
        scope: LimitScope,
        subject: &str,
        tenant: Option<TenantId>,
    ) -> CoreResult<TenantId> {
        let who = grant.principal();
        let platform = who.is_platform_admin();
        let tenant = match tenant {
            Some(t) if platform => t,
            Some(t) if t != who.tenant_id => return Err(CoreError::NotFound("tenant")),
            _ => who.tenant_id,
        };
        match scope {
            LimitScope::Tenant => {
                let id: TenantId = subject.parse().map_err(|_| CoreError::NotFound("tenant"))?;
                if !platform {
                    return Err(CoreError::denied(
                        "permission_denied",
                        "only platform administrators change a tenant's limits",
                    ));
                }
                Ok(id)
            }
            LimitScope::User => {
                let id: UserId = subject.parse().map_err(|_| CoreError::NotFound("user"))?;
                match self.users.find_by_id(tenant, id).await? {
                    Some(_) => Ok(tenant),
                    None => Err(CoreError::NotFound("user")),
                }
            }
            LimitScope::Key => {
                let id: ApiKeyId = subject.parse().map_err(|_| CoreError::NotFound("key"))?;
                match self.keys.find_key_by_id(id).await? {
                    Some(k) if platform || k.tenant_id == who.tenant_id => Ok(k.tenant_id),
                    _ => Err(CoreError::NotFound("key")),
                }
            }
        }
    }

    /// The defaults and the overrides of the caller's tenant (platform administrators: of
    /// `tenant`, or all).
    pub async fn list(
        &self,
        grant: &Grant<LimitsManage>,
        tenant: Option<TenantId>,
    ) -> CoreResult<LimitPolicyView> {
        let limiter = self.limiter()?;
        let who = grant.principal();
        let only = if who.is_platform_admin() {
            tenant
        } else {
            match tenant {
                Some(t) if t != who.tenant_id => return Err(CoreError::NotFound("tenant")),
                _ => Some(who.tenant_id),
            }
        };
        let overrides = self
            .repo
            .list_limit_policies()
            .await?
            .into_iter()
            .filter(|p| only.is_none_or(|t| p.tenant_id == t))
            .collect();
        Ok(LimitPolicyView {
            defaults: limiter.defaults(),
            overrides,
        })
    }

    /// Stores and applies an override.
    pub async fn put(
        &self,
        grant: &Grant<LimitsManage>,
        scope: LimitScope,
        subject: &str,
        tenant: Option<TenantId>,
        limits: LimitOverride,
    ) -> CoreResult<StoredLimitPolicy> {
        let limiter = self.limiter()?.clone();
        let owner = self.owner(grant, scope, subject, tenant).await?;
        limits.check_fields(scope)?;
        limiter.check(scope, &limits)?;
        let stored = StoredLimitPolicy {
            scope,
            subject: subject.to_string(),
            tenant_id: owner,
            limits,
            updated_at: now_millis(),
            updated_by: grant.principal().username.clone(),
        };
        self.repo.put_limit_policy(&stored).await?;
        limiter.apply(scope, subject, Some(&stored.limits));
        tracing::info!(
            scope = scope.as_str(),
            subject,
            by = %grant.principal().username,
            "limit override saved"
        );
        Ok(stored)
    }

    /// Removes an override: the defaults apply again. `NotFound` when there was none.
    pub async fn reset(
        &self,
        grant: &Grant<LimitsManage>,
        scope: LimitScope,
        subject: &str,
        tenant: Option<TenantId>,
    ) -> CoreResult<()> {
        let limiter = self.limiter()?.clone();
        self.owner(grant, scope, subject, tenant).await?;
        if !self.repo.delete_limit_policy(scope, subject).await? {
            return Err(CoreError::NotFound("limit override"));
        }
        limiter.apply(scope, subject, None);
        tracing::info!(
            scope = scope.as_str(),
            subject,
            by = %grant.principal().username,
            "limit override removed"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_belong_to_their_scope() {
        let user = LimitOverride {
            tokens: Some("5000/day".into()),
            streams: Some(1),
            ..LimitOverride::default()
        };
        assert!(user.check_fields(LimitScope::User).is_ok());
        assert!(user.check_fields(LimitScope::Tenant).is_ok());
        assert!(user.check_fields(LimitScope::Key).is_err());
        let chat = LimitOverride {
            chat: Some("1/s".into()),
            ..LimitOverride::default()
        };
        assert!(chat.check_fields(LimitScope::Tenant).is_err());
        assert!(LimitOverride::default()
            .check_fields(LimitScope::User)
            .is_err());
        let huge = LimitOverride {
            streams: Some(1_000_000),
            ..LimitOverride::default()
        };
        assert!(huge.check_fields(LimitScope::User).is_err());
    }
}
