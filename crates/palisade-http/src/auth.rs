//! Deny-by-default authentication: one middleware, an explicit list of public routes, per-IP
//! limits on the credential routes, and the extractors through which handlers receive the
//! caller (`Auth`) or a proven permission (`Perm<P>`).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use palisade_core::access::{Grant, Need};
use palisade_core::auth_api::ClientInfo;
use palisade_core::entities::Principal;
use palisade_core::CoreError;

use crate::error::ApiError;
use crate::AppState;

/// Routes reachable without an access token. Everything else needs one.
const PUBLIC_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/healthz"),
    // The API's description (no data).
    (Method::GET, "/api/openapi.json"),
    (Method::GET, "/readyz"),
    (Method::GET, "/health"),
    // Authenticated by `metrics.token` inside the handler (a scraper has no user account).
    (Method::GET, "/metrics"),
    (Method::GET, "/.well-known/jwks.json"),
    (Method::GET, "/api/auth/providers"),
    (Method::GET, "/api/auth/oidc/login"),
    (Method::GET, "/api/auth/oidc/callback"),
    (Method::POST, "/api/auth/login"),
    (Method::POST, "/api/auth/login/2fa"),
    (Method::POST, "/api/auth/register"),
    (Method::POST, "/api/auth/refresh"),
    (Method::POST, "/api/auth/logout"),
    // Authenticated by `X-LLM-Token` inside the handler.
    (Method::POST, "/api/v1/llm/generate"),
    // Authenticated by its single-use ticket inside the handler (browsers cannot send headers).
    (Method::GET, "/api/chat/ws"),
    // Spec 000 / 004 compatibility logins.
    (Method::POST, "/login"),
    (Method::POST, "/auth/login"),
];

/// Routes limited per client IP before any credential is checked (spec 003: 5/min).
const IP_LIMITED_ROUTES: &[&str] = &[
    "/api/auth/login",
    "/api/auth/login/2fa",
    "/api/auth/register",
    "/api/auth/refresh",
    "/login",
    "/auth/login",
];

/// What an account that must change its password may still do.
const PASSWORD_CHANGE_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/api/auth/me"),
    (Method::POST, "/api/auth/password"),
    (Method::POST, "/api/auth/logout"),
    (Method::POST, "/api/auth/logout-all"),
];

/// What an account whose role requires 2FA may do before enrolling.
const ENROLMENT_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/api/auth/me"),
    (Method::POST, "/api/auth/password"),
    (Method::POST, "/api/auth/logout"),
    (Method::POST, "/api/auth/logout-all"),
    (Method::POST, "/api/auth/2fa/setup"),
    (Method::POST, "/api/auth/2fa/enable"),
];

fn listed(list: &[(Method, &str)], method: &Method, path: &str) -> bool {
    list.iter().any(|(m, p)| m == method && *p == path)
}

pub(crate) fn is_public(method: &Method, path: &str) -> bool {
    listed(PUBLIC_ROUTES, method, path)
        // The web UI's shell and static files (they hold no data; the API they call is guarded).
        || ((method == Method::GET || method == Method::HEAD)
            && (path == "/" || path.starts_with("/ui/")))
}

/// The bearer token of the `Authorization` header, if well-formed.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The peer address, user agent and request id of a request.
pub(crate) fn client_info(parts_ext: &axum::http::Extensions, headers: &HeaderMap) -> ClientInfo {
    ClientInfo {
        ip: client_addr(parts_ext).map(|ip| ip.to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    }
}

/// The client's address: as resolved through trusted proxies, else the TCP peer.
pub(crate) fn client_addr(ext: &axum::http::Extensions) -> Option<IpAddr> {
    ext.get::<crate::client_ip::ClientIp>()
        .map(|c| c.0)
        .or_else(|| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
}

/// Per-IP attempt limiter for the credential routes.
pub struct IpLimiter {
    limiter: RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>,
    clock: DefaultClock,
}

impl IpLimiter {
    /// `per_minute` attempts per IP with that many in a burst; `None` when 0 (off).
    pub fn per_minute(per_minute: u32) -> Option<Arc<IpLimiter>> {
        let n = NonZeroU32::new(per_minute)?;
        Some(Arc::new(IpLimiter {
            limiter: RateLimiter::keyed(Quota::per_minute(n)),
            clock: DefaultClock::default(),
        }))
    }

    /// `Err(seconds to wait)` when the IP is over its limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), u32> {
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX)
        })
    }
}

/// The verified TLS client certificate of the connection a request came on, put in the
/// request's extensions by the listener (mutual TLS). Only its subject common name is kept.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificate {
    pub common_name: Option<String>,
}

/// Authenticates every non-public request and stores the `Principal` in its extensions.
pub async fn require_auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if let Some(limiter) = &state.auth_limiter {
        if method == Method::POST && IP_LIMITED_ROUTES.contains(&path.as_str()) {
            if let Some(ip) = client_addr(req.extensions()) {
                if let Err(wait) = limiter.check(ip) {
                    return ApiError::from(CoreError::too_many(
                        "rate_limited",
                        format!("too many attempts from your address; try again in {wait} s"),
                        wait,
                    ))
                    .into_response();
                }
            }
        }
    }
    if is_public(&method, &path) {
        return next.run(req).await;
    }
    let client = client_info(req.extensions(), req.headers());
    let certificate = req
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|c| c.common_name.clone());
    // A bearer wins; without one, a verified client certificate mapped to a service account
    // stands in for it.
    let outcome = match (bearer(req.headers()), certificate) {
        (Some(token), _) => state.identity.authenticate(token, &client).await,
        (None, Some(cn)) => state.identity.authenticate_certificate(&cn, &client).await,
        (None, None) => return ApiError::from(CoreError::unauthenticated()).into_response(),
    };
    match outcome {
        Ok(principal) => {
            if principal.must_change_password && !listed(PASSWORD_CHANGE_ROUTES, &method, &path) {
                return ApiError::from(CoreError::denied(
                    "password_change_required",
                    "change your password first (POST /api/auth/password)",
                ))
                .into_response();
            }
            if principal.needs_2fa_enrolment && !listed(ENROLMENT_ROUTES, &method, &path) {
                return ApiError::from(CoreError::denied(
                    "mfa_enrolment_required",
                    "your role requires two-factor authentication; enrol first \
                     (POST /api/auth/2fa/setup)",
                ))
                .into_response();
            }
            let caller = crate::telemetry::Caller {
                user: principal.user_id.to_string(),
                tenant: principal.tenant_id.to_string(),
            };
            req.extensions_mut().insert(principal);
            let mut res = next.run(req).await;
            // For the access log, which runs outside this middleware.
            res.extensions_mut().insert(caller);
            res
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

/// Proof that the caller holds permission `P`; privileged services only accept this.
pub struct Perm<P: Need>(pub Grant<P>);

impl<S: Send + Sync, P: Need> FromRequestParts<S> for Perm<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Auth(p) = Auth::from_request_parts(parts, state).await?;
        match Grant::<P>::check(&p) {
            Ok(g) => Ok(Perm(g)),
            Err(e) => {
                tracing::info!(
                    user_id = %p.user_id,
                    permission = P::PERMISSION,
                    path = parts.uri.path(),
                    "permission denied"
                );
                Err(e.into())
            }
        }
    }
}

/// The request's client facts (IP, user agent).
pub struct Client(pub ClientInfo);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Client(client_info(&parts.extensions, &parts.headers)))
    }
}
