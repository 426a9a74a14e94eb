//! Self-service routes: e-mail and password changes, TOTP enrolment, one's login sessions and
//! API keys, scoped LLM tokens and spec 004's scoped generation.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use palisade_core::access::ApiKeysManage;
use palisade_core::auth_api::NewApiKey;
use palisade_core::entities::{millis_to_rfc3339, Credential};
use palisade_core::identity::{ApiKey, AuthSession};
use palisade_core::ids::{ApiKeyId, TokenFamilyId};
use palisade_core::CoreError;
use palisade_types::identity::{
    ApiKeyResponse, AuthSessionResponse, ChangePasswordRequest, CreateApiKeyRequest,
    CreatedApiKeyResponse, GenerateRequest, GenerateResponse, RecoveryCodesResponse,
    ScopedTokenRequest, ScopedTokenResponse, TotpDisableRequest, TotpEnableRequest,
    TotpSetupRequest, TotpSetupResponse, UpdateMeRequest,
};
use palisade_types::UserResponse;

use crate::auth::{Auth, Client, Perm};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::routes::auth::{tokens_response, user_json, CSRF_HEADER};
use crate::AppState;

pub(crate) fn session_json(s: AuthSession, current: Option<TokenFamilyId>) -> AuthSessionResponse {
    AuthSessionResponse {
        current: current == Some(s.id),
        id: s.id.to_string(),
        created_at: millis_to_rfc3339(s.created_at),
        last_used_at: millis_to_rfc3339(s.last_used_at),
        expires_at: millis_to_rfc3339(s.expires_at),
        user_agent: s.user_agent,
        ip: s.ip,
    }
}

fn key_json(k: ApiKey) -> ApiKeyResponse {
    ApiKeyResponse {
        id: k.id.to_string(),
        name: k.name,
        prefix: k.prefix,
        scopes: k.scopes,
        models: k.models,
        expires_at: k.expires_at.map(millis_to_rfc3339),
        last_used_at: k.last_used_at.map(millis_to_rfc3339),
        created_at: millis_to_rfc3339(k.created_at),
        revoked: k.revoked,
        store_conversations: k.store_conversations,
    }
}

#[utoipa::path(
    patch,
    path = "/api/auth/me",
    tag = "account",
    request_body = palisade_types::identity::UpdateMeRequest,
    responses((status = 200, description = "The updated account", body = palisade_types::UserResponse))
)]
pub async fn update_me(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<UpdateMeRequest>,
) -> Result<Json<UserResponse>, ApiError> {
    let user = s
        .account
        .change_email(&p, &req.current_password, req.email)
        .await?;
    Ok(Json(user_json(user)))
}

#[utoipa::path(
    post,
    path = "/api/auth/password",
    tag = "account",
    request_body = palisade_types::identity::ChangePasswordRequest,
    responses((status = 200, description = "New tokens; every other session is revoked", body = palisade_types::TokenResponse))
)]
pub async fn change_password(
    State(s): State<AppState>,
    Auth(p): Auth,
    Client(client): Client,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> Result<Response, ApiError> {
    let tokens = s
        .account
        .change_password(
            &p,
            &req.current_password,
            &req.new_password,
            req.totp_code.as_deref(),
            &client,
        )
        .await?;
    Ok(tokens_response(tokens, headers.contains_key(CSRF_HEADER)))
}

#[utoipa::path(
    post,
    path = "/api/auth/2fa/setup",
    tag = "account",
    request_body = palisade_types::identity::TotpSetupRequest,
    responses((status = 200, description = "A new TOTP secret to confirm", body = palisade_types::identity::TotpSetupResponse))
)]
pub async fn totp_setup(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<TotpSetupRequest>,
) -> Result<Json<TotpSetupResponse>, ApiError> {
    let setup = s.account.totp_setup(&p, &req.current_password).await?;
    Ok(Json(TotpSetupResponse {
        secret: setup.secret,
        otpauth_uri: setup.otpauth_uri,
    }))
}

#[utoipa::path(
    post,
    path = "/api/auth/2fa/enable",
    tag = "account",
    request_body = palisade_types::identity::TotpEnableRequest,
    responses((status = 200, description = "Two-factor login is on; the recovery codes, shown once", body = palisade_types::identity::RecoveryCodesResponse))
)]
pub async fn totp_enable(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<TotpEnableRequest>,
) -> Result<Json<RecoveryCodesResponse>, ApiError> {
    let codes = s.account.totp_enable(&p, &req.code).await?;
    Ok(Json(RecoveryCodesResponse {
        recovery_codes: codes,
    }))
}

#[utoipa::path(
    post,
    path = "/api/auth/2fa/disable",
    tag = "account",
    request_body = palisade_types::identity::TotpDisableRequest,
    responses((status = 204, description = "Two-factor login is off"))
)]
pub async fn totp_disable(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<TotpDisableRequest>,
) -> Result<StatusCode, ApiError> {
    s.account
        .totp_disable(&p, &req.current_password, &req.code)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn current_session(p: &palisade_core::entities::Principal) -> Option<TokenFamilyId> {
    match p.credential {
        Credential::Session { session } => session,
        _ => None,
    }
}

#[utoipa::path(
    get,
    path = "/api/auth/sessions",
    tag = "account",
    responses((status = 200, description = "The caller's login sessions", body = Vec<palisade_types::identity::AuthSessionResponse>))
)]
pub async fn my_sessions(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<Vec<AuthSessionResponse>>, ApiError> {
    let current = current_session(&p);
    let list = s.account.my_sessions(&p).await?;
    Ok(Json(
        list.into_iter().map(|x| session_json(x, current)).collect(),
    ))
}

#[utoipa::path(
    delete,
    path = "/api/auth/sessions/{id}",
    tag = "account",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 204, description = "Revoked"))
)]
pub async fn revoke_my_session(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id: TokenFamilyId = id.parse()?;
    s.account.revoke_my_session(&p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/auth/api-keys",
    tag = "account",
    request_body = palisade_types::identity::CreateApiKeyRequest,
    responses((status = 201, description = "The key; its secret is shown once", body = palisade_types::identity::CreatedApiKeyResponse))
)]
pub async fn create_api_key(
    State(s): State<AppState>,
    Perm(g): Perm<ApiKeysManage>,
    ApiJson(req): ApiJson<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKeyResponse>), ApiError> {
    let (key, secret) = s
        .account
        .create_api_key(
            &g,
            NewApiKey {
                name: req.name,
                scopes: req.scopes,
                models: req.models,
                expires_in_days: req.expires_in_days,
                store_conversations: req.store_conversations,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKeyResponse {
            key: key_json(key),
            api_key: secret,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/auth/api-keys",
    tag = "account",
    responses((status = 200, description = "The caller's API keys (no secrets)", body = Vec<palisade_types::identity::ApiKeyResponse>))
)]
pub async fn list_api_keys(
    State(s): State<AppState>,
    Perm(g): Perm<ApiKeysManage>,
) -> Result<Json<Vec<ApiKeyResponse>>, ApiError> {
    let keys = s.account.list_api_keys(&g).await?;
    Ok(Json(keys.into_iter().map(key_json).collect()))
}

#[utoipa::path(
    delete,
    path = "/api/auth/api-keys/{id}",
    tag = "account",
    params(("id" = String, Path, description = "API key id")),
    responses((status = 204, description = "Revoked"))
)]
pub async fn revoke_api_key(
    State(s): State<AppState>,
    Perm(g): Perm<ApiKeysManage>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id: ApiKeyId = id.parse()?;
    s.account.revoke_api_key(&g, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/auth/scoped-token",
    tag = "account",
    request_body = palisade_types::identity::ScopedTokenRequest,
    responses((status = 200, description = "A short-lived token limited to LLM generation", body = palisade_types::identity::ScopedTokenResponse))
)]
pub async fn scoped_token(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<ScopedTokenRequest>,
) -> Result<Json<ScopedTokenResponse>, ApiError> {
    let max_tokens = u32::try_from(req.max_tokens).map_err(|_| {
        ApiError::from(CoreError::validation(
            "invalid_max_tokens",
            "max_tokens must be a positive number",
        ))
    })?;
    let t = s
        .identity
        .issue_scoped_token(&p, &req.model, max_tokens, &req.scopes)
        .await?;
    Ok(Json(ScopedTokenResponse {
        llm_token: t.token.clone(),
        token: t.token,
        token_type: "llm".into(),
        expires_in: t.expires_in,
        model: req.model,
        max_tokens,
    }))
}

/// Spec 004: `POST /api/v1/llm/generate` with `X-LLM-Token`; the token's model and cap bind.
#[utoipa::path(
    post,
    path = "/api/v1/llm/generate",
    tag = "chat",
    request_body = palisade_types::identity::GenerateRequest,
    responses((status = 200, description = "The answer (spec 004)", body = palisade_types::identity::GenerateResponse)),
    security(("llm_token" = []))
)]
pub async fn generate(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Json<GenerateResponse>, ApiError> {
    let token = headers
        .get("x-llm-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::from(CoreError::unauthenticated()))?;
    let grant = s.identity.verify_scoped_token(token).await?;
    if req.model != grant.model {
        return Err(CoreError::denied(
            "model_not_allowed",
            "the token was issued for another model",
        )
        .into());
    }
    let max_tokens = match req.max_tokens {
        None => grant.max_tokens,
        Some(m) if m >= 1 && m <= i64::from(grant.max_tokens) => m as u32,
        Some(_) => {
            return Err(CoreError::denied(
                "max_tokens_exceeded",
                format!("the token allows at most {} tokens", grant.max_tokens),
            )
            .into())
        }
    };
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let out = s
        .chat
        .generate_once(
            &grant.principal,
            &req.prompt,
            &req.model,
            max_tokens,
            request_id,
        )
        .await?;
    Ok(Json(GenerateResponse {
        content: out.content,
        model: out.model,
        tokens_used: out.tokens_used,
        latency_ms: out.latency_ms,
    }))
}
