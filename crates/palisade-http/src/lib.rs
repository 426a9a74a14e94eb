//! Palisade's HTTP layer: the axum router, deny-by-default authentication, one JSON error shape,
//! request ids, body limits, security headers and SSE streaming. It sees only core ports.

pub mod auth;
pub mod error;
pub mod routes;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::routing::{get, patch, post};
use axum::{middleware, Router};
use palisade_core::chat::ChatService;
use palisade_core::ports::IdentityService;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;

/// Dependency checks for `/readyz` (database, ...), provided by the binary.
#[async_trait::async_trait]
pub trait Readiness: Send + Sync + 'static {
    async fn checks(&self) -> Vec<(String, bool)>;
}

/// Everything handlers can reach.
#[derive(Clone)]
pub struct AppState {
    pub identity: Arc<dyn IdentityService>,
    pub chat: Arc<ChatService>,
    pub readiness: Arc<dyn Readiness>,
    /// The public JWKS document.
    pub jwks: Arc<serde_json::Value>,
    pub body_limit_bytes: usize,
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this path",
    )
}

/// Builds the whole application router.
pub fn router(state: AppState) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let api = Router::new()
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/.well-known/jwks.json", get(routes::auth::jwks))
        .route("/api/auth/register", post(routes::auth::register))
        .route("/api/auth/login", post(routes::auth::login))
        .route("/api/auth/refresh", post(routes::auth::refresh))
        .route("/api/auth/logout", post(routes::auth::logout))
        .route("/api/auth/me", get(routes::auth::me))
        .route("/api/chat/message", post(routes::chat::send_message))
        .route("/api/chat/sessions", get(routes::chat::list_sessions))
        .route(
            "/api/chat/sessions/{id}",
            patch(routes::chat::rename_session).delete(routes::chat::delete_session),
        )
        .route(
            "/api/chat/sessions/{id}/messages",
            get(routes::chat::list_messages),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);

    let headers = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ];
    let mut app = api
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ))
        .layer(DefaultBodyLimit::max(state.body_limit_bytes));
    for (name, value) in headers {
        app = app.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ));
    }
    app.layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}
