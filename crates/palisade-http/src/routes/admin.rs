//! `/api/admin/*`: users, their sessions, tenants, roles and the security event stream. Every
//! handler takes a `Perm<..>` extractor; without it the admin service cannot be called.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use palisade_core::access::{AuditRead, RolesRead, TenantsManage, UsersManage};
use palisade_core::auth_api::{AdminNewUser, AdminUserPatch};
use palisade_core::entities::millis_to_rfc3339;
use palisade_core::identity::{Tenant, UserQuery};
use palisade_core::ids::{TenantId, TokenFamilyId, UserId};
use palisade_types::identity::{
    AdminCreateUserRequest, AdminCreatedUserResponse, AdminUpdateUserRequest, AuthSessionResponse,
    CreateTenantRequest, RoleResponse, SecurityEventResponse, TemporaryPasswordResponse,
    TenantResponse, UpdateTenantRequest, UserList,
};
use palisade_types::UserResponse;
use serde::Deserialize;

use crate::auth::Perm;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::routes::account::session_json;
use crate::routes::auth::user_json;
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserListQuery {
    #[serde(default)]
    pub search: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub offset: Option<u32>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    #[serde(default)]
    pub tenant_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    #[serde(default)]
    pub limit: Option<u32>,
}

fn tenant_of(raw: Option<&str>) -> Result<Option<TenantId>, ApiError> {
    raw.map(|t| t.parse::<TenantId>().map_err(ApiError::from))
        .transpose()
}

fn tenant_json(t: Tenant) -> TenantResponse {
    TenantResponse {
        id: t.id.to_string(),
        name: t.name,
        is_active: t.is_active,
        created_at: millis_to_rfc3339(t.created_at),
    }
}

pub async fn list_users(
    State(s): State<AppState>,
    Perm(g): Perm<UsersManage>,
    ApiQuery(q): ApiQuery<UserListQuery>,
) -> Result<Json<UserList>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let offset = q.offset.unwrap_or(0);
    let (users, total) = s
        .admin
        .list_users(
            &g,
            tenant_of(q.tenant_id.as_deref())?,
            UserQuery {
                search: q.search.filter(|x| !x.is_empty()),
                limit,
                offset,
            },
        )
        .await?;
    Ok(Json(UserList {
        users: users.into_iter().map(user_json).collect(),
        total,
        limit,
        offset,
    }))
}

pub async fn create_user(
    State(s): State<AppState>,
    Perm(g): Perm<UsersManage>,
    ApiJson(req): ApiJson<AdminCreateUserRequest>,
) -> Result<(StatusCode, Json<AdminCreatedUserResponse>), ApiError> {
    let (user, temporary_password) = s
        .admin
        .create_user(
            &g,
            AdminNewUser {
                tenant_id: tenant_of(req.tenant_id.as_deref())?,
                username: req.username,
                email: req.email,
                password: req.password,
                role: req.role,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(AdminCreatedUserResponse {
            user: user_json(user),
            temporary_password,
        }),
    ))
}

pub async fn get_user(
    State(s): State<AppState>,
    Perm(g): Perm<UsersManage>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<Json<UserResponse>, ApiError> {
    let id: UserId = id.parse()?;
    let user = s
        .admin
        .get_user(&g, tenant_of(q.tenant_id.as_deref())?, id)
        .await?;
    Ok(Json(user_json(user)))
}

pub async fn update_user(
    State(s): State<AppState>,
    Perm(g): Perm<UsersManage>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
    ApiJson(req): ApiJson<AdminUpdateUserRequest>,
) -> Result<Json<UserResponse>, ApiError> {
    let id: UserId = id.parse()?;
    let user = s
        .admin
        .update_user(
            &g,
            tenant_of(q.tenant_id.as_deref())?,
            id,
            AdminUserPatch {
                role: req.role,
                is_active: req.is_active,
                email: req.email,
                unlock: req.unlock,
            },
        )
        .await?;
    Ok(Json(user_json(user)))
}

pub async fn reset_password(
    State(s): State<AppState>,
    Perm(g): Perm<UsersManage>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<Json<TemporaryPasswordResponse>, ApiError> {
    let id: UserId = id.parse()?;
    let pw = s
        .admin
        .reset_password(&g, tenant_of(q.tenant_id.as_deref())?, id)
        .await?;
    Ok(Json(TemporaryPasswordResponse {
        temporary_password: pw,
    }))
}

pub async fn delete_user(
    State(s): State<AppState>,
    Perm(g): Perm<UsersManage>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    let id: UserId = id.parse()?;
    s.admin
        .delete_user(&g, tenant_of(q.tenant_id.as_deref())?, id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn user_sessions(
    State(s): State<AppState>,
    Perm(g): Perm<UsersManage>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<Json<Vec<AuthSessionResponse>>, ApiError> {
    let id: UserId = id.parse()?;
    let list = s
        .admin
        .user_sessions(&g, tenant_of(q.tenant_id.as_deref())?, id)
        .await?;
    Ok(Json(
        list.into_iter().map(|x| session_json(x, None)).collect(),
    ))
}

pub async fn revoke_user_sessions(
    State(s): State<AppState>,
    Perm(g): Perm<UsersManage>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    let id: UserId = id.parse()?;
    s.admin
        .revoke_user_sessions(&g, tenant_of(q.tenant_id.as_deref())?, id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn revoke_user_session(
    State(s): State<AppState>,
    Perm(g): Perm<UsersManage>,
    ApiPath((id, sid)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    let id: UserId = id.parse()?;
    let sid: TokenFamilyId = sid.parse()?;
    s.admin
        .revoke_user_session(&g, tenant_of(q.tenant_id.as_deref())?, id, sid)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_invite(
    State(s): State<AppState>,
    Perm(g): Perm<UsersManage>,
    ApiJson(req): ApiJson<palisade_types::identity::CreateInviteRequest>,
) -> Result<(StatusCode, Json<palisade_types::identity::InviteResponse>), ApiError> {
    let (code, expires_at) = s
        .admin
        .create_invite(
            &g,
            tenant_of(req.tenant_id.as_deref())?,
            &req.role,
            req.expires_in_days.unwrap_or(7),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(palisade_types::identity::InviteResponse {
            code,
            role: req.role,
            expires_at: millis_to_rfc3339(expires_at),
        }),
    ))
}

pub async fn list_tenants(
    State(s): State<AppState>,
    Perm(g): Perm<TenantsManage>,
) -> Result<Json<Vec<TenantResponse>>, ApiError> {
    let list = s.admin.list_tenants(&g).await?;
    Ok(Json(list.into_iter().map(tenant_json).collect()))
}

pub async fn create_tenant(
    State(s): State<AppState>,
    Perm(g): Perm<TenantsManage>,
    ApiJson(req): ApiJson<CreateTenantRequest>,
) -> Result<(StatusCode, Json<TenantResponse>), ApiError> {
    let t = s.admin.create_tenant(&g, &req.name).await?;
    Ok((StatusCode::CREATED, Json(tenant_json(t))))
}

pub async fn update_tenant(
    State(s): State<AppState>,
    Perm(g): Perm<TenantsManage>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateTenantRequest>,
) -> Result<Json<TenantResponse>, ApiError> {
    let id: TenantId = id.parse()?;
    let t = s.admin.set_tenant_active(&g, id, req.is_active).await?;
    Ok(Json(tenant_json(t)))
}

pub async fn list_roles(
    State(s): State<AppState>,
    Perm(g): Perm<RolesRead>,
) -> Result<Json<Vec<RoleResponse>>, ApiError> {
    let roles = s.admin.list_roles(&g).await?;
    Ok(Json(
        roles
            .into_iter()
            .map(|r| RoleResponse {
                name: r.name.to_string(),
                permissions: r.permissions.into_iter().collect(),
                require_2fa: r.require_2fa,
                builtin: r.builtin,
                description: r.description,
            })
            .collect(),
    ))
}

pub async fn security_events(
    State(s): State<AppState>,
    Perm(g): Perm<AuditRead>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> Result<Json<Vec<SecurityEventResponse>>, ApiError> {
    let events = s.admin.security_events(&g, q.limit.unwrap_or(100)).await?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| SecurityEventResponse {
                kind: e.kind.as_str().into(),
                tenant_id: e.tenant_id.map(|t| t.to_string()),
                user_id: e.user_id.map(|u| u.to_string()),
                actor_id: e.actor_id.map(|u| u.to_string()),
                ip: e.ip,
                user_agent: e.user_agent,
                request_id: e.request_id,
                detail: e.detail,
                created_at: millis_to_rfc3339(e.created_at),
                chain_seq: e.chain_seq,
                hash: e.hash,
            })
            .collect(),
    ))
}
