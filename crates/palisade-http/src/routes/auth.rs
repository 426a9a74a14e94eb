//! `/api/auth/*`: register, login, refresh, logout, me; and the JWKS.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use palisade_core::entities::{millis_to_rfc3339, User};
use palisade_core::ports::{IssuedTokens, Registration};
use palisade_types::{LoginRequest, RefreshRequest, RegisterRequest, TokenResponse, UserResponse};

use crate::auth::{bearer, Auth};
use crate::error::{ApiError, ApiJson};
use crate::AppState;

fn user_json(u: User) -> UserResponse {
    UserResponse {
        id: u.id.to_string(),
        username: u.username,
        email: u.email,
        role: u.role.as_str().into(),
        tenant_id: u.tenant_id.to_string(),
        is_active: u.is_active,
        created_at: millis_to_rfc3339(u.created_at),
    }
}

fn tokens_json(t: IssuedTokens) -> Json<TokenResponse> {
    Json(TokenResponse {
        access_token: t.access_token,
        token_type: "bearer".into(),
        expires_in: t.expires_in,
        refresh_token: t.refresh_token,
    })
}

pub async fn register(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let user = s
        .identity
        .register(Registration {
            username: req.username,
            email: req.email,
            password: req.password,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(user_json(user))))
}

pub async fn login(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    Ok(tokens_json(
        s.identity.login(&req.username, &req.password).await?,
    ))
}

/// The refresh token from the JSON body, or (spec 003) from `Authorization: Bearer`.
fn refresh_token_of(headers: &HeaderMap, body: &RefreshRequest) -> Option<String> {
    body.refresh_token
        .clone()
        .or_else(|| bearer(headers).map(str::to_string))
}

/// Reads an optional JSON body: empty is fine, malformed is an error.
fn optional_body(body: &[u8]) -> Result<RefreshRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RefreshRequest::default());
    }
    serde_json::from_slice(body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body is not valid JSON",
        )
    })
}

pub async fn refresh(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<TokenResponse>, ApiError> {
    let req = optional_body(&body)?;
    let token = refresh_token_of(&headers, &req)
        .ok_or_else(|| ApiError::from(palisade_core::CoreError::invalid_token()))?;
    Ok(tokens_json(s.identity.refresh(&token).await?))
}

pub async fn logout(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let req = optional_body(&body)?;
    // A bearer may be the access token (ends it now) or, spec-003 style, the refresh token.
    let principal = match bearer(&headers) {
        Some(t) => s.identity.authenticate(t).await.ok(),
        None => None,
    };
    let refresh = match (&req.refresh_token, &principal) {
        (Some(t), _) => Some(t.clone()),
        (None, None) => bearer(&headers).map(str::to_string),
        (None, Some(_)) => None,
    };
    s.identity
        .logout(refresh.as_deref(), principal.as_ref())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn me(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<UserResponse>, ApiError> {
    Ok(Json(user_json(s.identity.current_user(&p).await?)))
}

pub async fn jwks(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(s.jwks.as_ref().clone())
}
