//! Palisade's HTTP layer: the axum router, deny-by-default authentication, one JSON error shape,
//! request ids, body limits, security headers and SSE streaming. It sees only core ports.

pub mod audit;
pub mod auth;
pub mod client_ip;
pub mod error;
mod headers;
pub mod limits;
pub mod openapi;
pub mod routes;
pub mod telemetry;
pub mod ui;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::routing::{delete, get, patch, post, put};
use axum::{middleware, Router};
use palisade_core::auth_api::{AccountService, AdminService, IdentityService};
use palisade_core::chat::ChatService;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;

/// Dependency checks for `/readyz` and `/health/detailed` (database, Redis, ...), provided by
/// the binary; the model's state is added by the route.
#[async_trait::async_trait]
pub trait Readiness: Send + Sync + 'static {
    async fn checks(&self) -> Vec<routes::health::Check>;
}

/// Everything handlers can reach, behind one `Arc`: every middleware layer clones the state for
/// each request, and a clone of one counter costs far less than one of twenty (on two cores,
/// each shared counter is a cache line the cores pass back and forth).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct AppParts {
    pub identity: Arc<dyn IdentityService>,
    pub account: Arc<dyn AccountService>,
    pub admin: Arc<dyn AdminService>,
    pub chat: Arc<ChatService>,
    pub readiness: Arc<dyn Readiness>,
    pub body_limit_bytes: usize,
    /// Per-IP limit of the credential routes; `None` when turned off.
    pub auth_limiter: Option<Arc<auth::IpLimiter>>,
    /// Mount spec 000/004 compatibility routes.
    pub compat_routes: bool,
    /// Tenants' guard policies (admin API).
    pub guard_policies: Arc<palisade_core::guard_policies::GuardPolicies>,
    /// Limit overrides per tenant, user and key (admin API).
    pub limit_policies: Arc<palisade_core::limit_policies::LimitPolicies>,
    /// Request limits per user and tenant (`None`: off).
    pub limits: Option<Arc<dyn limits::RequestLimits>>,
    /// Single-use tickets of the WebSocket handshake.
    pub ws_tickets: Arc<routes::ws::WsTickets>,
    /// What every replica must see: config-change notices go out through it.
    pub shared: Arc<dyn palisade_core::shared::SharedState>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<client_ip::TrustedProxies>,
    /// The audit trail (refusals and administrative changes are recorded here).
    pub events: Arc<dyn palisade_core::ports::SecurityEventSink>,
    /// Folds repeated refusals of one caller into one audit event per window.
    pub refusals: Arc<audit::RefusalThrottle>,
    /// Retention and legal holds (admin API).
    pub retention: Arc<palisade_core::retention::Retention>,
    /// Background jobs and dead letters (admin API).
    pub jobs: Arc<palisade_core::jobs::Jobs>,
    /// `GET /metrics` on this listener (`None`: the route answers 404).
    pub metrics: Option<Arc<telemetry::MetricsEndpoint>>,
    /// Web origins allowed to call the API from a browser (`http.cors_origins`; empty: none).
    pub cors_origins: Arc<Vec<String>>,
}

/// Tells every replica that an administrator changed `topic`, so each reloads it. A lost
/// notice is logged, not the admin's error: the change is stored, and replicas also reload
/// on their own every 30 seconds.
pub(crate) async fn announce(s: &AppState, topic: palisade_core::shared::ConfigTopic) {
    if let Err(e) = s.shared.publish(topic).await {
        tracing::warn!(topic = topic.as_str(), error = %e, "could not tell the other replicas about a change");
    }
}

/// CORS for the configured origins only: bearer-token calls (no cookies: the refresh cookie
/// is `SameSite=Strict` and stays with Palisade's own UI), preflights answered before
/// authentication. `None` when no origin is configured: browsers then keep other sites out.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::Method;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if list.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
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
        .route("/", get(ui::index))
        .route("/ui/{*path}", get(ui::asset))
        .route("/api/openapi.json", get(openapi::serve))
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/metrics", get(telemetry::scrape))
        .route("/health", get(routes::health::health))
        .route("/health/detailed", get(routes::health::detailed))
        .route("/.well-known/jwks.json", get(routes::auth::jwks))
        .route("/api/auth/providers", get(routes::auth::providers))
        .route("/api/auth/oidc/login", get(routes::auth::oidc_login))
        .route("/api/auth/oidc/callback", get(routes::auth::oidc_callback))
        .route("/api/auth/register", post(routes::auth::register))
        .route("/api/auth/login", post(routes::auth::login))
        .route(
            "/api/auth/login/2fa",
            post(routes::auth::login_second_factor),
        )
        .route("/api/auth/refresh", post(routes::auth::refresh))
        .route("/api/auth/logout", post(routes::auth::logout))
        .route("/api/auth/logout-all", post(routes::auth::logout_all))
        .route(
            "/api/auth/me",
            get(routes::auth::me).patch(routes::account::update_me),
        )
        .route("/api/auth/password", post(routes::account::change_password))
        .route("/api/auth/2fa/setup", post(routes::account::totp_setup))
        .route("/api/auth/2fa/enable", post(routes::account::totp_enable))
        .route("/api/auth/2fa/disable", post(routes::account::totp_disable))
        .route("/api/auth/sessions", get(routes::account::my_sessions))
        .route(
            "/api/auth/sessions/{id}",
            delete(routes::account::revoke_my_session),
        )
        .route(
            "/api/auth/api-keys",
            get(routes::account::list_api_keys).post(routes::account::create_api_key),
        )
        .route(
            "/api/auth/api-keys/{id}",
            delete(routes::account::revoke_api_key),
        )
        .route(
            "/api/auth/scoped-token",
            post(routes::account::scoped_token),
        )
        .route("/api/v1/llm/generate", post(routes::account::generate))
        .route(
            "/api/admin/users",
            get(routes::admin::list_users).post(routes::admin::create_user),
        )
        .route(
            "/api/admin/users/{id}",
            get(routes::admin::get_user)
                .patch(routes::admin::update_user)
                .delete(routes::admin::delete_user),
        )
        .route(
            "/api/admin/users/{id}/reset-password",
            post(routes::admin::reset_password),
        )
        .route(
            "/api/admin/users/{id}/sessions",
            get(routes::admin::user_sessions).delete(routes::admin::revoke_user_sessions),
        )
        .route(
            "/api/admin/users/{id}/sessions/{sid}",
            delete(routes::admin::revoke_user_session),
        )
        .route(
            "/api/admin/tenants",
            get(routes::admin::list_tenants).post(routes::admin::create_tenant),
        )
        .route(
            "/api/admin/tenants/{id}",
            patch(routes::admin::update_tenant),
        )
        .route("/api/admin/roles", get(routes::admin::list_roles))
        .route("/api/usage", get(routes::usage::own))
        .route("/api/admin/usage", get(routes::usage::admin))
        .route("/api/admin/limits", get(routes::limits::list))
        .route(
            "/api/admin/limits/{scope}/{subject}",
            put(routes::limits::put).delete(routes::limits::reset),
        )
        .route("/api/admin/retention", get(routes::retention::view))
        .route(
            "/api/admin/retention/tenants/{id}",
            put(routes::retention::put_tenant),
        )
        .route(
            "/api/admin/retention/users/{id}",
            put(routes::retention::put_user),
        )
        .route("/api/admin/jobs", get(routes::jobs::list))
        .route("/api/admin/jobs/{id}", delete(routes::jobs::discard))
        .route("/api/admin/jobs/{id}/retry", post(routes::jobs::retry))
        .route("/api/admin/invites", post(routes::admin::create_invite))
        .route(
            "/api/admin/security-events",
            get(routes::admin::security_events),
        )
        .route("/api/models", get(routes::models::list))
        .route("/api/admin/models", get(routes::models::admin_list))
        .route(
            "/api/admin/models/{name}",
            put(routes::models::admin_put).delete(routes::models::admin_delete),
        )
        .route("/api/admin/cache", get(routes::models::admin_cache))
        .route(
            "/api/admin/guard/tenants/{id}",
            get(routes::guard::get_policy)
                .put(routes::guard::put_policy)
                .delete(routes::guard::reset_policy),
        )
        .route(
            "/api/admin/models/{name}/test",
            post(routes::models::admin_test),
        )
        .route(
            "/v1/chat/completions",
            post(routes::openai::chat_completions),
        )
        .route("/v1/models", get(routes::openai::list_models))
        .route("/v1/models/{id}", get(routes::openai::get_model))
        .route("/api/chat/message", post(routes::chat::send_message))
        .route("/api/chat/ws/ticket", post(routes::ws::ticket))
        .route("/api/chat/ws", get(routes::ws::connect))
        .route("/api/chat/sessions", get(routes::chat::list_sessions))
        .route("/api/chat/export", get(routes::chat::export))
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
    let api = if state.compat_routes {
        api.route("/login", post(routes::auth::login))
            .route("/auth/login", post(routes::auth::login))
            .route("/auth/scoped-token", post(routes::account::scoped_token))
            .route("/chat", post(routes::compat::chat))
    } else {
        api
    };

    // Layers run outside in: authentication first, then the audit of refusals, then the
    // limits (which need the caller).
    let mut app = api
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::enforce,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            audit::record_refusals,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ))
        .layer({
            let proxies = state.trusted_proxies.clone();
            tower::util::MapRequestLayer::new(move |req| client_ip::resolve(&proxies, req))
        })
        .layer(DefaultBodyLimit::max(state.body_limit_bytes))
        // Outermost of the per-route layers: sees every answer, refusals included, and the
        // matched route pattern.
        .layer(middleware::from_fn(telemetry::track));
    // Outside authentication: a preflight carries no credential.
    if let Some(c) = cors(&state.cors_origins) {
        app = app.layer(c);
    }
    app.layer(headers::SecurityHeadersLayer)
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuidV7))
        // A plain function of the request: tower's map needs no copy of the stack inside it
        // per request (axum's `map_request`, being async, clones it).
        .layer(tower::util::MapRequestLayer::new(sanitize_request_id))
        .with_state(state)
}

/// Request ids for requests that bring none: UUIDv7, time-ordered. The audit trail indexes
/// events by request id; ids that grow with time add each event at the index's end, where a
/// random (v4) id dirtied a page anywhere in it, and every such page went to SQLite's WAL and
/// its checkpoint.
#[derive(Clone, Copy)]
struct MakeRequestUuidV7;

impl MakeRequestId for MakeRequestUuidV7 {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// A client's `X-Request-Id` is kept only when it is a plausible id (1 to 128 characters of
/// letters, digits and `-_.:`); otherwise a fresh one is made, so logs and the audit trail
/// never carry what a client smuggled in.
fn sanitize_request_id(mut req: axum::extract::Request) -> axum::extract::Request {
    let ok = req.headers().get("x-request-id").map(|v| {
        let b = v.as_bytes();
        !b.is_empty()
            && b.len() <= 128
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
    });
    if ok == Some(false) {
        req.headers_mut().remove("x-request-id");
    }
    req
}
