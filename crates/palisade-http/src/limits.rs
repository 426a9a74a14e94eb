//! Request limits per user and tenant on the routes that reach a model, with the IETF draft's
//! `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` headers on every limited
//! response and `Retry-After` on a 429.
//!
//! Runs after authentication (the caller is known). Which limits apply and how they are counted
//! is the [`RequestLimits`] implementation's business (the binary's, over `palisade-limits`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use palisade_core::entities::Principal;
use palisade_core::CoreError;

use crate::error::ApiError;
use crate::AppState;

/// What admission decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// No limit applies to this route.
    Unlimited,
    /// Admitted; the tightest counter, for the headers.
    Allowed {
        limit: u64,
        remaining: u64,
        reset_secs: u64,
    },
    /// Refused by the limit named `label` (e.g. "chat requests per user: 10 per 1 s"); `name`
    /// is the same without its figures ("chat requests per user"), for metrics.
    Denied {
        name: &'static str,
        label: String,
        limit: u64,
        retry_after_secs: u32,
    },
}

/// Request admission (implemented by the binary over `palisade-limits`; this crate names no
/// adapter).
#[async_trait::async_trait]
pub trait RequestLimits: Send + Sync + 'static {
    async fn admit(&self, method: &Method, path: &str, who: &Principal) -> Admission;
}

fn set_headers(h: &mut HeaderMap, amount: u64, remaining: u64, reset: u64) {
    for (name, v) in [
        ("ratelimit-limit", amount),
        ("ratelimit-remaining", remaining),
        ("ratelimit-reset", reset),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v.to_string()) {
            h.insert(name, v);
        }
    }
}

/// The middleware.
pub async fn enforce(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(limits) = state.limits.clone() else {
        return next.run(req).await;
    };
    let Some(who) = req.extensions().get::<Principal>().cloned() else {
        return next.run(req).await;
    };
    let admission: Arc<dyn RequestLimits> = limits;
    match admission.admit(req.method(), req.uri().path(), &who).await {
        Admission::Unlimited => next.run(req).await,
        Admission::Allowed {
            limit,
            remaining,
            reset_secs,
        } => {
            let mut resp = next.run(req).await;
            set_headers(resp.headers_mut(), limit, remaining, reset_secs);
            resp
        }
        Admission::Denied {
            name,
            label,
            limit,
            retry_after_secs,
        } => {
            tracing::info!(user_id = %who.user_id, limit = %label, "rate limit reached");
            crate::telemetry::rejected(name);
            state.chat.count_refusal(&who).await;
            let mut resp = ApiError::from(CoreError::too_many(
                "rate_limited",
                format!("rate limit reached ({label}); try again in {retry_after_secs} s"),
                retry_after_secs,
            ))
            .into_response();
            set_headers(resp.headers_mut(), limit, 0, u64::from(retry_after_secs));
            resp
        }
    }
}
