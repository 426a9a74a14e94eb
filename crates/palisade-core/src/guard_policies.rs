//! Guard policies per tenant, changed at run time through the admin API.
//!
//! The configuration (`[guard.tenants.ID]`) gives each tenant its starting policy; an admin's
//! change is stored (one row per tenant) and applied at once, and again at every start, in
//! place of the configured one. Resetting removes the row and the configured policy applies
//! again. Changing the firewall is a platform decision: it needs `guard:manage`, which only the
//! administrator role holds by default; a custom role given it manages its own tenant only.

use std::sync::Arc;

use crate::access::{Grant, GuardManage};
use crate::entities::{now_millis, Millis};
use crate::error::{CoreError, CoreResult};
use crate::guard::{Guard, TenantGuardPolicy, TenantPolicyView};
use crate::ids::TenantId;

/// Longest tenant addition to the hardened system prompt (characters): every character is
/// prefilled for every request.
pub const MAX_TENANT_PROMPT_CHARS: usize = 2000;

/// An admin's policy for one tenant, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredGuardPolicy {
    pub tenant_id: TenantId,
    pub policy: TenantGuardPolicy,
    pub updated_at: Millis,
    pub updated_by: String,
}

/// Persistence of admin policies.
#[async_trait::async_trait]
pub trait GuardPolicyRepository: Send + Sync + 'static {
    async fn list_guard_policies(&self) -> CoreResult<Vec<StoredGuardPolicy>>;
    /// Inserts or replaces; `NotFound` when the tenant does not exist.
    async fn put_guard_policy(&self, policy: &StoredGuardPolicy) -> CoreResult<()>;
    /// True when a row was removed.
    async fn delete_guard_policy(&self, tenant: TenantId) -> CoreResult<bool>;
}

/// The admin side of the guard's tenant policies.
pub struct GuardPolicies {
    guard: Arc<dyn Guard>,
    repo: Arc<dyn GuardPolicyRepository>,
}

impl GuardPolicies {
    pub fn new(guard: Arc<dyn Guard>, repo: Arc<dyn GuardPolicyRepository>) -> Self {
        Self { guard, repo }
    }

    /// Applies the stored policies (at start). Returns how many.
    pub async fn load(&self) -> CoreResult<usize> {
        let stored = self.repo.list_guard_policies().await?;
        let n = stored.len();
        for p in stored {
            self.guard.set_tenant_policy(p.tenant_id, Some(p.policy));
        }
        Ok(n)
    }

    /// Platform admins reach every tenant; anyone else only their own (others look absent).
    fn check_scope(grant: &Grant<GuardManage>, tenant: TenantId) -> CoreResult<()> {
        let p = grant.principal();
        if p.is_platform_admin() || p.tenant_id == tenant {
            Ok(())
        } else {
            Err(CoreError::NotFound("tenant"))
        }
    }

    fn view(&self, tenant: TenantId) -> CoreResult<TenantPolicyView> {
        self.guard.tenant_policy(tenant).ok_or_else(|| {
            CoreError::validation("guard_disabled", "the content guard is not in use")
        })
    }

    /// The tenant's policy and what applies in each zone.
    pub fn get(
        &self,
        grant: &Grant<GuardManage>,
        tenant: TenantId,
    ) -> CoreResult<TenantPolicyView> {
        Self::check_scope(grant, tenant)?;
        self.view(tenant)
    }

    /// Stores and applies a tenant's policy.
    pub async fn put(
        &self,
        grant: &Grant<GuardManage>,
        tenant: TenantId,
        policy: TenantGuardPolicy,
    ) -> CoreResult<TenantPolicyView> {
        Self::check_scope(grant, tenant)?;
        validate(&policy)?;
        // Fails before anything is applied when the guard is off.
        self.view(tenant)?;
        self.repo
            .put_guard_policy(&StoredGuardPolicy {
                tenant_id: tenant,
                policy: policy.clone(),
                updated_at: now_millis(),
                updated_by: grant.principal().username.clone(),
            })
            .await?;
        self.guard.set_tenant_policy(tenant, Some(policy));
        tracing::info!(tenant = %tenant, by = %grant.principal().username, "guard policy saved");
        self.view(tenant)
    }

    /// Drops the admin's policy: the configured one (or the defaults) applies again.
    pub async fn reset(
        &self,
        grant: &Grant<GuardManage>,
        tenant: TenantId,
    ) -> CoreResult<TenantPolicyView> {
        Self::check_scope(grant, tenant)?;
        self.view(tenant)?;
        self.repo.delete_guard_policy(tenant).await?;
        self.guard.set_tenant_policy(tenant, None);
        tracing::info!(tenant = %tenant, by = %grant.principal().username, "guard policy reset");
        self.view(tenant)
    }
}

/// Checks the values serde cannot: ranges and sizes.
pub fn validate(p: &TenantGuardPolicy) -> CoreResult<()> {
    if let Some(t) = p.injection_threshold {
        if !(0.05..=1.0).contains(&t) || t.is_nan() {
            return Err(CoreError::validation(
                "invalid_threshold",
                "injection_threshold must be between 0.05 and 1",
            ));
        }
    }
    for zone in [&p.internal, &p.external] {
        if let Some(s) = zone.toxicity_min_severity {
            if !(1..=3).contains(&s) {
                return Err(CoreError::validation(
                    "invalid_severity",
                    "toxicity_min_severity must be 1, 2 or 3",
                ));
            }
        }
    }
    if let Some(sp) = &p.system_prompt {
        if sp.chars().count() > MAX_TENANT_PROMPT_CHARS {
            return Err(CoreError::validation(
                "system_prompt_too_long",
                format!("system_prompt is limited to {MAX_TENANT_PROMPT_CHARS} characters"),
            ));
        }
        if sp.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(CoreError::validation(
                "invalid_system_prompt",
                "system_prompt may not contain control characters",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_types::guard::GuardAction;

    #[test]
    fn validation_rejects_out_of_range_values() {
        let ok = TenantGuardPolicy {
            injection_threshold: Some(0.5),
            ..TenantGuardPolicy::default()
        };
        assert!(validate(&ok).is_ok());
        for bad in [0.0, 1.5, f32::NAN] {
            let p = TenantGuardPolicy {
                injection_threshold: Some(bad),
                ..TenantGuardPolicy::default()
            };
            assert!(validate(&p).is_err(), "{bad}");
        }
        let mut p = TenantGuardPolicy::default();
        p.external.toxicity_min_severity = Some(4);
        assert!(validate(&p).is_err());
        p.external.toxicity_min_severity = Some(3);
        p.external.pii = Some(GuardAction::Block);
        assert!(validate(&p).is_ok());
        p.system_prompt = Some("x".repeat(MAX_TENANT_PROMPT_CHARS + 1));
        assert!(validate(&p).is_err());
        p.system_prompt = Some("be brief\u{0}".into());
        assert!(validate(&p).is_err());
    }
}
