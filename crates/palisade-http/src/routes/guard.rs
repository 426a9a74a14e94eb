//! `/api/admin/guard/tenants/{id}`: a tenant's content-guard policy, read and changed at run
//! time (needs `guard:manage`).

use axum::extract::State;
use axum::Json;
use palisade_core::access::GuardManage;
use palisade_core::guard::{TenantGuardPolicy, TenantPolicyView};
use palisade_core::ids::TenantId;
use serde_json::{json, Value};

use crate::auth::Perm;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::AppState;

fn view_json(tenant: TenantId, v: TenantPolicyView) -> Json<Value> {
    Json(json!({
        "tenant_id": tenant.to_string(),
        "enabled": v.enabled,
        "overrides": v.overrides.unwrap_or_default(),
        "effective": {
            "injection_threshold": v.injection_threshold,
            "internal": v.internal,
            "external": v.external,
        },
        "defaults": {
            "injection_threshold": v.default_injection_threshold,
            "internal": v.default_internal,
            "external": v.default_external,
        },
    }))
}

/// `GET /api/admin/guard/tenants/{id}`.
#[utoipa::path(
    get,
    path = "/api/admin/guard/tenants/{id}",
    tag = "guard",
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "The tenant's guard policy and the effective zones", body = Object))
)]
pub async fn get_policy(
    State(s): State<AppState>,
    Perm(g): Perm<GuardManage>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant: TenantId = id.parse()?;
    Ok(view_json(tenant, s.guard_policies.get(&g, tenant)?))
}

/// `PUT /api/admin/guard/tenants/{id}`: the whole policy (absent fields inherit).
#[utoipa::path(
    put,
    path = "/api/admin/guard/tenants/{id}",
    tag = "guard",
    params(("id" = String, Path, description = "Tenant id")), request_body = palisade_types::guard::TenantGuardPolicy,
    responses((status = 200, description = "The stored policy", body = Object))
)]
pub async fn put_policy(
    State(s): State<AppState>,
    Perm(g): Perm<GuardManage>,
    ApiPath(id): ApiPath<String>,
    ApiJson(policy): ApiJson<TenantGuardPolicy>,
) -> Result<Json<Value>, ApiError> {
    let tenant: TenantId = id.parse()?;
    let before = view_json(tenant, s.guard_policies.get(&g, tenant)?).0;
    let after = view_json(tenant, s.guard_policies.put(&g, tenant, policy).await?);
    crate::announce(&s, palisade_core::shared::ConfigTopic::GuardPolicies).await;
    record(&s, &g, tenant, "set", &before, &after.0).await;
    Ok(after)
}

/// `DELETE /api/admin/guard/tenants/{id}`: back to the configured policy.
#[utoipa::path(
    delete,
    path = "/api/admin/guard/tenants/{id}",
    tag = "guard",
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "Back to the server defaults", body = Object))
)]
pub async fn reset_policy(
    State(s): State<AppState>,
    Perm(g): Perm<GuardManage>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant: TenantId = id.parse()?;
    let before = view_json(tenant, s.guard_policies.get(&g, tenant)?).0;
    let after = view_json(tenant, s.guard_policies.reset(&g, tenant).await?);
    crate::announce(&s, palisade_core::shared::ConfigTopic::GuardPolicies).await;
    record(&s, &g, tenant, "reset", &before, &after.0).await;
    Ok(after)
}

/// The change in the audit trail: the policy's fields before and after.
async fn record(
    s: &AppState,
    g: &palisade_core::access::Grant<GuardManage>,
    tenant: TenantId,
    action: &str,
    before: &Value,
    after: &Value,
) {
    let (old, new) = crate::audit::changed_fields(before, after);
    crate::audit::record_change(
        s,
        g.principal(),
        palisade_core::identity::SecurityEventKind::GuardPolicyChanged,
        Some(tenant),
        serde_json::json!({ "action": action, "before": old, "after": new }),
    )
    .await;
}
