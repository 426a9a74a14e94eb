//! Deny-by-default authentication: one middleware, an explicit list of public routes, and the
//! `Auth` extractor through which handlers receive the caller.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use palisade_core::entities::Principal;
use palisade_core::CoreError;

use crate::error::ApiError;
use crate::AppState;

/// Routes reachable without an access token. Everything else needs one.
const PUBLIC_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/healthz"),
    (Method::GET, "/readyz"),
    (Method::GET, "/.well-known/jwks.json"),
    (Method::POST, "/api/auth/login"),
    (Method::POST, "/api/auth/register"),
    (Method::POST, "/api/auth/refresh"),
    (Method::POST, "/api/auth/logout"),
];

pub(crate) fn is_public(method: &Method, path: &str) -> bool {
    PUBLIC_ROUTES.iter().any(|(m, p)| m == method && *p == path)
}

/// The bearer token of the `Authorization` header, if well-formed.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Authenticates every non-public request and stores the `Principal` in its extensions.
pub async fn require_auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let Some(token) = bearer(req.headers()) else {
        return ApiError::from(CoreError::unauthenticated()).into_response();
    };
    match state.identity.authenticate(token).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The authenticated caller. Only obtainable behind `require_auth`.
pub struct Auth(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Auth)
            .ok_or_else(|| CoreError::unauthenticated().into())
    }
}
