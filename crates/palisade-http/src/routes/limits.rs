//! `/api/admin/limits`: limit overrides per tenant, user and API key, read and changed at run
//! time (needs `limits:manage`; a tenant's administrators reach their own users and keys only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use palisade_core::access::LimitsManage;
use palisade_core::ids::TenantId;
use palisade_core::limit_policies::{LimitOverride, LimitScope, StoredLimitPolicy};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::Perm;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TenantParam {
    /// The subject's tenant (platform administrators; default their own).
    tenant: Option<String>,
}

fn tenant(p: &TenantParam) -> Result<Option<TenantId>, ApiError> {
    p.tenant
        .as_deref()
        .map(|t| t.parse::<TenantId>().map_err(ApiError::from))
        .transpose()
}

fn row(p: &StoredLimitPolicy) -> Value {
    json!({
        "scope": p.scope,
        "subject": p.subject,
        "tenant_id": p.tenant_id.to_string(),
        "limits": p.limits,
        "updated_at": p.updated_at,
        "updated_by": p.updated_by,
    })
}

/// `GET /api/admin/limits[?tenant=ID]`: the configured defaults and the overrides.
#[utoipa::path(
    get,
    path = "/api/admin/limits",
    tag = "limits",
    params(TenantParam),
    responses((status = 200, description = "Effective limits and overrides", body = Object))
)]
pub async fn list(
    State(s): State<AppState>,
    Perm(g): Perm<LimitsManage>,
    ApiQuery(q): ApiQuery<TenantParam>,
) -> Result<Json<Value>, ApiError> {
    let view = s.limit_policies.list(&g, tenant(&q)?).await?;
    let defaults: Map<String, Value> = view
        .defaults
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    Ok(Json(json!({
        "defaults": defaults,
        "overrides": view.overrides.iter().map(row).collect::<Vec<_>>(),
    })))
}

/// `PUT /api/admin/limits/{tenant|user|key}/{id}[?tenant=ID]`: the fields given replace the
/// defaults for that subject; the rest are inherited.
#[utoipa::path(
    put,
    path = "/api/admin/limits/{scope}/{subject}",
    tag = "limits",
    params(("scope" = String, Path, description = "`tenant`, `user` or `key`"), ("subject" = String, Path, description = "Its id"), TenantParam), request_body = palisade_core::limit_policies::LimitOverride,
    responses((status = 200, description = "The stored override", body = Object))
)]
pub async fn put(
    State(s): State<AppState>,
    Perm(g): Perm<LimitsManage>,
    ApiPath((scope, subject)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<TenantParam>,
    ApiJson(limits): ApiJson<LimitOverride>,
) -> Result<Json<Value>, ApiError> {
    let scope = LimitScope::parse(&scope)?;
    let stored = s
        .limit_policies
        .put(&g, scope, &subject, tenant(&q)?, limits)
        .await?;
    crate::announce(&s, palisade_core::shared::ConfigTopic::LimitPolicies).await;
    crate::audit::record_change(
        &s,
        g.principal(),
        palisade_core::identity::SecurityEventKind::LimitPolicyChanged,
        Some(stored.tenant_id),
        serde_json::json!({ "action": "set", "override": row(&stored) }),
    )
    .await;
    Ok(Json(row(&stored)))
}

/// `DELETE /api/admin/limits/{tenant|user|key}/{id}[?tenant=ID]`: back to the defaults.
#[utoipa::path(
    delete,
    path = "/api/admin/limits/{scope}/{subject}",
    tag = "limits",
    params(("scope" = String, Path, description = "`tenant`, `user` or `key`"), ("subject" = String, Path, description = "Its id"), TenantParam),
    responses((status = 204, description = "Back to the defaults"))
)]
pub async fn reset(
    State(s): State<AppState>,
    Perm(g): Perm<LimitsManage>,
    ApiPath((scope, subject)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<TenantParam>,
) -> Result<StatusCode, ApiError> {
    let scope = LimitScope::parse(&scope)?;
    let in_tenant = tenant(&q)?;
    s.limit_policies
        .reset(&g, scope, &subject, in_tenant)
        .await?;
    crate::announce(&s, palisade_core::shared::ConfigTopic::LimitPolicies).await;
    crate::audit::record_change(
        &s,
        g.principal(),
        palisade_core::identity::SecurityEventKind::LimitPolicyChanged,
        Some(in_tenant.unwrap_or(g.principal().tenant_id)),
        serde_json::json!({ "action": "reset", "scope": scope, "subject": subject }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
