//! `/api/auth/*` login-flow routes: register, login (and its 2FA step), refresh, logout,
//! logout everywhere, and the JWKS.
//!
//! Browser flow: a client that sends `X-Palisade-CSRF: 1` at login gets the refresh token in a
//! `__Host-` cookie (HttpOnly, Secure, SameSite=Strict) instead of the body. Refresh and logout
//! by cookie require that header again and, when the browser sends `Origin`, an origin equal to
//! this server's — a cross-site page can neither set the header nor forge the origin.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use palisade_core::auth_api::{IssuedTokens, LoginOutcome, Registration};
use palisade_core::entities::{millis_to_rfc3339, User};
use palisade_core::CoreError;
use palisade_types::identity::{MfaChallengeResponse, MfaLoginRequest};
use palisade_types::{LoginRequest, RefreshRequest, RegisterRequest, TokenResponse, UserResponse};

use crate::auth::{bearer, Auth, Client};
use crate::error::{ApiError, ApiJson};
use crate::AppState;

/// The refresh-token cookie (`__Host-`: Secure, Path=/, no Domain).
pub const REFRESH_COOKIE: &str = "__Host-palisade_refresh";
/// The anti-CSRF request header of the browser flow.
pub const CSRF_HEADER: &str = "x-palisade-csrf";

pub(crate) fn user_json(u: User) -> UserResponse {
    let locked = u.hard_locked || u.locked_until > palisade_core::entities::now_millis();
    UserResponse {
        id: u.id.to_string(),
        username: u.username,
        email: u.email,
        role: u.role.as_str().into(),
        tenant_id: u.tenant_id.to_string(),
        is_active: u.is_active,
        created_at: millis_to_rfc3339(u.created_at),
        must_change_password: u.must_change_password,
        totp_enabled: u.totp_enabled,
        auth_source: u.auth_source,
        last_login_at: u.last_login_at.map(millis_to_rfc3339),
        locked,
    }
}

fn wants_cookie(headers: &HeaderMap) -> bool {
    headers.contains_key(CSRF_HEADER)
}

fn refresh_cookie(value: &str, max_age: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    ))
    .ok()
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-palisade_refresh=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
    )
}

/// Answers with the tokens; in the browser flow the refresh token goes into the cookie.
pub(crate) fn tokens_response(t: IssuedTokens, cookie: bool) -> Response {
    if cookie {
        let set = refresh_cookie(&t.refresh_token, t.refresh_expires_in);
        let mut res = Json(TokenResponse {
            access_token: t.access_token,
            token_type: "bearer".into(),
            expires_in: t.expires_in,
            refresh_token: None,
        })
        .into_response();
        if let Some(v) = set {
            res.headers_mut().insert(header::SET_COOKIE, v);
        }
        res
    } else {
        Json(TokenResponse {
            access_token: t.access_token,
            token_type: "bearer".into(),
            expires_in: t.expires_in,
            refresh_token: Some(t.refresh_token),
        })
        .into_response()
    }
}

/// The refresh cookie's value, if the request carries one.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == REFRESH_COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// CSRF defence for cookie-authenticated calls: the custom header, and a same-origin `Origin`.
/// The request's own host: the `Host` header (HTTP/1.1) or the URI's authority (HTTP/2 carries
/// it in `:authority`, which browsers use over TLS).
pub(crate) fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default()
}

fn check_csrf(uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    let denied = || {
        ApiError::from(CoreError::denied(
            "csrf_failed",
            "cross-site request refused: send the X-Palisade-CSRF header from this origin",
        ))
    };
    if !headers.contains_key(CSRF_HEADER) {
        return Err(denied());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = request_host(uri, headers);
        let origin = origin.to_str().unwrap_or_default();
        if host.is_empty() || origin != format!("https://{host}") {
            return Err(denied());
        }
    }
    Ok(())
}

/// Where a refresh token comes from: body, `Authorization: Bearer` (spec 003) or the cookie.
enum Source {
    Explicit(String),
    Cookie(String),
}

fn refresh_source(headers: &HeaderMap, body: &RefreshRequest) -> Option<Source> {
    if let Some(t) = body.refresh_token.clone() {
        return Some(Source::Explicit(t));
    }
    if let Some(t) = bearer(headers) {
        return Some(Source::Explicit(t.to_string()));
    }
    cookie_token(headers).map(Source::Cookie)
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

#[utoipa::path(
    post,
    path = "/api/auth/register",
    tag = "auth",
    request_body = palisade_types::RegisterRequest,
    responses((status = 201, description = "The new account", body = palisade_types::UserResponse)),
    security(())
)]
pub async fn register(
    State(s): State<AppState>,
    Client(client): Client,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let user = s
        .identity
        .register(
            Registration {
                username: req.username,
                email: req.email,
                password: req.password,
                invite: req.invite,
            },
            &client,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user_json(user))))
}

/// The answer of a password login: tokens, or the 2FA challenge.
pub(crate) fn login_response(outcome: LoginOutcome, cookie: bool) -> Response {
    match outcome {
        LoginOutcome::Tokens(t) => tokens_response(t, cookie),
        LoginOutcome::MfaRequired {
            mfa_token,
            expires_in,
        } => Json(MfaChallengeResponse {
            mfa_required: true,
            mfa_token,
            expires_in,
        })
        .into_response(),
    }
}

#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    request_body = palisade_types::LoginRequest,
    responses((status = 200, description = "Tokens, or a second-factor challenge", body = crate::openapi::LoginAnswer)),
    security(())
)]
pub async fn login(
    State(s): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let outcome = s
        .identity
        .login(req.tenant.as_deref(), &req.username, &req.password, &client)
        .await?;
    Ok(login_response(outcome, wants_cookie(&headers)))
}

#[utoipa::path(
    post,
    path = "/api/auth/login/2fa",
    tag = "auth",
    request_body = palisade_types::identity::MfaLoginRequest,
    responses((status = 200, description = "Tokens", body = palisade_types::TokenResponse)),
    security(())
)]
pub async fn login_second_factor(
    State(s): State<AppState>,
    Client(client): Client,
    headers: HeaderMap,
    ApiJson(req): ApiJson<MfaLoginRequest>,
) -> Result<Response, ApiError> {
    let t = s
        .identity
        .login_second_factor(&req.mfa_token, &req.code, &client)
        .await?;
    Ok(tokens_response(t, wants_cookie(&headers)))
}

#[utoipa::path(
    post,
    path = "/api/auth/refresh",
    tag = "auth",
    request_body(content = Option<palisade_types::RefreshRequest>, description = "The refresh token in the body, as a bearer token or in the cookie"),
    responses((status = 200, description = "A new token pair (the old refresh token is spent)", body = palisade_types::TokenResponse)),
    security(())
)]
pub async fn refresh(
    State(s): State<AppState>,
    Client(client): Client,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req = optional_body(&body)?;
    let (token, cookie) = match refresh_source(&headers, &req) {
        Some(Source::Explicit(t)) => (t, false),
        Some(Source::Cookie(t)) => {
            check_csrf(&uri, &headers)?;
            (t, true)
        }
        None => return Err(CoreError::invalid_token().into()),
    };
    match s.identity.refresh(&token, &client).await {
        Ok(t) => Ok(tokens_response(t, cookie)),
        Err(e) if cookie => {
            // A dead cookie is cleared so the browser stops sending it.
            let mut res = ApiError::from(e).into_response();
            res.headers_mut().insert(header::SET_COOKIE, clear_cookie());
            Ok(res)
        }
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(
    post,
    path = "/api/auth/logout",
    tag = "auth",
    request_body(content = Option<palisade_types::RefreshRequest>),
    responses((status = 204, description = "The refresh token's family is revoked")),
    security(())
)]
pub async fn logout(
    State(s): State<AppState>,
    Client(client): Client,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req = optional_body(&body)?;
    // A bearer may be the access token (ends it now) or, spec-003 style, the refresh token.
    let principal = match bearer(&headers) {
        Some(t) => s.identity.authenticate(t, &client).await.ok(),
        None => None,
    };
    let cookie = cookie_token(&headers);
    if cookie.is_some() && req.refresh_token.is_none() && principal.is_none() {
        check_csrf(&uri, &headers)?;
    }
    let refresh = match (&req.refresh_token, &principal) {
        (Some(t), _) => Some(t.clone()),
        (None, None) => bearer(&headers).map(str::to_string).or(cookie.clone()),
        (None, Some(_)) => cookie.clone(),
    };
    s.identity
        .logout(refresh.as_deref(), principal.as_ref())
        .await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    if cookie.is_some() {
        res.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    }
    Ok(res)
}

#[utoipa::path(
    post,
    path = "/api/auth/logout-all",
    tag = "auth",
    responses((status = 204, description = "Every session of the caller is revoked"))
)]
pub async fn logout_all(State(s): State<AppState>, Auth(p): Auth) -> Result<Response, ApiError> {
    s.identity.logout_all(&p).await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    Ok(res)
}

#[utoipa::path(
    get,
    path = "/api/auth/me",
    tag = "auth",
    responses((status = 200, description = "The caller, with their permissions", body = Object))
)]
pub async fn me(
    State(s): State<AppState>,
    Auth(p): Auth,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = user_json(s.identity.current_user(&p).await?);
    let mut v = serde_json::to_value(user)
        .map_err(|_| ApiError::from(CoreError::Internal("user serialisation".into())))?;
    // What this credential may do, so a client shows only what will work.
    let permissions: Vec<&str> = palisade_core::access::KNOWN_PERMISSIONS
        .iter()
        .copied()
        .filter(|perm| *perm != palisade_core::access::ALL && p.permissions.allows(perm))
        .collect();
    if let Some(o) = v.as_object_mut() {
        o.insert("permissions".into(), serde_json::json!(permissions));
    }
    Ok(Json(v))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Which login methods this server offers (for the login screen).
#[utoipa::path(
    get,
    path = "/api/auth/providers",
    tag = "auth",
    responses((status = 200, description = "The login methods this server offers", body = Object)),
    security(())
)]
pub async fn providers(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "password": true,
        "sso": s.identity.sso_enabled(),
        "sso_login_url": s.identity.sso_enabled().then_some("/api/auth/oidc/login"),
        "registration": s.identity.registration_mode(),
    }))
}

/// Starts single sign-on: redirects the browser to the OpenID provider.
#[utoipa::path(
    get,
    path = "/api/auth/oidc/login",
    tag = "auth",
    responses((status = 303, description = "Redirect to the OpenID provider")),
    security(())
)]
pub async fn oidc_login(State(s): State<AppState>) -> Result<Response, ApiError> {
    let url = s.identity.sso_begin().await?;
    let mut res = StatusCode::SEE_OTHER.into_response();
    let loc = HeaderValue::from_str(&url)
        .map_err(|_| ApiError::from(CoreError::Internal("bad provider URL".into())))?;
    res.headers_mut().insert(header::LOCATION, loc);
    Ok(res)
}

/// The provider's redirect back: sets the refresh cookie and sends the browser to the app,
/// which obtains its access token with `POST /api/auth/refresh` (cookie + CSRF header).
#[utoipa::path(
    get,
    path = "/api/auth/oidc/callback",
    tag = "auth",
    params(CallbackQuery),
    responses((status = 303, description = "Back to the web UI, signed in or with `sso_error`")),
    security(())
)]
pub async fn oidc_callback(
    State(s): State<AppState>,
    Client(client): Client,
    crate::error::ApiQuery(q): crate::error::ApiQuery<CallbackQuery>,
) -> Result<Response, ApiError> {
    let redirect = |to: &'static str| {
        let mut res = StatusCode::SEE_OTHER.into_response();
        res.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static(to));
        res
    };
    let (Some(code), Some(state)) = (q.code, q.state) else {
        tracing::info!(error = ?q.error, "single sign-on was refused by the provider");
        return Ok(redirect("/?sso_error=refused"));
    };
    match s.identity.sso_finish(&code, &state, &client).await {
        Ok(t) => {
            let mut res = redirect("/?sso=ok");
            if let Some(v) = refresh_cookie(&t.refresh_token, t.refresh_expires_in) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            Ok(res)
        }
        Err(e) => {
            let api = ApiError::from(e);
            tracing::info!(code = api.code, "single sign-on failed");
            Ok(redirect("/?sso_error=failed"))
        }
    }
}

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "auth",
    responses((status = 200, description = "The public keys that verify Palisade's access tokens (JWKS)", body = Object)),
    security(())
)]
pub async fn jwks(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(s.identity.jwks())
}
