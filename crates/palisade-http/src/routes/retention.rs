//! `/api/admin/retention`: how long conversations are kept per tenant, and legal holds on
//! tenants and users (needs `retention:manage`; tenant administrators reach their own tenant).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use palisade_core::access::RetentionManage;
use palisade_core::entities::millis_to_rfc3339;
use palisade_core::ids::{TenantId, UserId};
use palisade_core::retention::{TenantRetention, UserHold};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Perm;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::AppState;

fn tenant_json(r: &TenantRetention) -> Value {
    json!({
        "tenant_id": r.tenant_id.to_string(),
        "days": r.days,
        "legal_hold": r.legal_hold,
        "updated_at": millis_to_rfc3339(r.updated_at),
        "updated_by": r.updated_by,
    })
}

fn hold_json(h: &UserHold) -> Value {
    json!({
        "tenant_id": h.tenant_id.to_string(),
        "user_id": h.user_id.to_string(),
        "reason": h.reason,
        "created_at": millis_to_rfc3339(h.created_at),
        "created_by": h.created_by,
    })
}

/// `GET /api/admin/retention`.
#[utoipa::path(
    get,
    path = "/api/admin/retention",
    tag = "retention",
    responses((status = 200, description = "Retention days and legal holds", body = Object))
)]
pub async fn view(
    State(s): State<AppState>,
    Perm(g): Perm<RetentionManage>,
) -> Result<Json<Value>, ApiError> {
    let v = s.retention.view(&g).await?;
    Ok(Json(json!({
        "default_days": v.default_days,
        "tenants": v.tenants.iter().map(tenant_json).collect::<Vec<_>>(),
        "user_holds": v.user_holds.iter().map(hold_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRetentionBody {
    /// Days a conversation is kept after its last message; `null`: the configured default;
    /// 0: forever.
    #[serde(default)]
    days: Option<u32>,
    #[serde(default)]
    legal_hold: bool,
}

/// `PUT /api/admin/retention/tenants/{id}`.
#[utoipa::path(
    put,
    path = "/api/admin/retention/tenants/{id}",
    tag = "retention",
    params(("id" = String, Path, description = "Tenant id")), request_body = TenantRetentionBody,
    responses((status = 200, description = "The tenant's retention", body = Object))
)]
pub async fn put_tenant(
    State(s): State<AppState>,
    Perm(g): Perm<RetentionManage>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TenantRetentionBody>,
) -> Result<Json<Value>, ApiError> {
    let tenant: TenantId = id.parse()?;
    let r = s
        .retention
        .set_tenant(&g, tenant, body.days, body.legal_hold)
        .await?;
    Ok(Json(tenant_json(&r)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    hold: bool,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TenantParam {
    tenant: Option<String>,
}

/// `PUT /api/admin/retention/users/{id}[?tenant=ID]`: `{hold, reason}`.
#[utoipa::path(
    put,
    path = "/api/admin/retention/users/{id}",
    tag = "retention",
    params(("id" = String, Path, description = "User id"), TenantParam), request_body = HoldBody,
    responses((status = 204, description = "Legal hold set or lifted"))
)]
pub async fn put_user(
    State(s): State<AppState>,
    Perm(g): Perm<RetentionManage>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TenantParam>,
    ApiJson(body): ApiJson<HoldBody>,
) -> Result<StatusCode, ApiError> {
    let user: UserId = id.parse()?;
    let tenant = match q.tenant.as_deref() {
        Some(t) => t.parse::<TenantId>()?,
        None => g.principal().tenant_id,
    };
    s.retention
        .set_user_hold(&g, tenant, user, body.hold, &body.reason)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
