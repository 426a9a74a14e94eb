//! Refusals and administrative changes in the audit trail.
//!
//! Every 403 and 429 that an authenticated caller receives, from any route, becomes a
//! `permission_denied` or `rate_limited` event with the route, the error code and the client.
//! A caller hammering a limit would otherwise write one event per refused request, so events
//! of one caller and code are written at most once per [`REFUSAL_WINDOW`], each carrying the
//! number of refusals folded into it since the previous one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use palisade_core::entities::Principal;
use palisade_core::identity::{SecurityEvent, SecurityEventKind};
use palisade_core::ids::UserId;
use serde_json::{json, Value};

use crate::error::ErrorCode;
use crate::AppState;

/// At most one refusal event per caller and code in this window.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

/// Above this many remembered callers, entries older than the window are dropped.
const MAX_REMEMBERED: usize = 10_000;

/// A caller and the code of their refusal.
type RefusalKey = (UserId, &'static str);

/// When each caller's refusals were last written, and how many were folded since.
#[derive(Debug, Default)]
pub struct RefusalThrottle {
    seen: Mutex<HashMap<RefusalKey, (Instant, u64)>>,
}

impl RefusalThrottle {
    /// `Some(folded)` when an event is due now (`folded` refusals were not written since the
    /// last one), `None` when this refusal is folded into the next event.
    pub fn admit(&self, user: UserId, code: &'static str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().ok()?;
        if seen.len() > MAX_REMEMBERED {
            seen.retain(|_, (at, _)| now.duration_since(*at) < REFUSAL_WINDOW);
        }
        match seen.get_mut(&(user, code)) {
            Some((at, folded)) if now.duration_since(*at) < REFUSAL_WINDOW => {
                *folded += 1;
                None
            }
            Some((at, folded)) => {
                let n = *folded;
                *at = now;
                *folded = 0;
                Some(n)
            }
            None => {
                seen.insert((user, code), (now, 0));
                Some(0)
            }
        }
    }
}

/// Middleware (inside authentication): records 403 and 429 answers to authenticated callers.
pub async fn record_refusals(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let who = req.extensions().get::<Principal>().cloned();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let res = next.run(req).await;
    let status = res.status();
    let kind = match status {
        StatusCode::FORBIDDEN => SecurityEventKind::PermissionDenied,
        StatusCode::TOO_MANY_REQUESTS => SecurityEventKind::RateLimited,
        _ => return res,
    };
    let Some(who) = who else {
        return res;
    };
    let code = res.extensions().get::<ErrorCode>().map_or("", |c| c.0);
    if let Some(folded) = s.refusals.admit(who.user_id, code, Instant::now()) {
        let retry_after = res
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let event = SecurityEvent::new(kind).caller(&who).detail(json!({
            "method": method,
            "route": route,
            "status": status.as_u16(),
            "code": code,
            "retry_after": retry_after,
            "folded": folded,
        }));
        if let Err(e) = s.events.record(event).await {
            tracing::error!(error = ?e, "could not record a refusal in the audit trail");
        }
    }
    res
}

/// Records an administrative change made by `who` (`tenant`: the tenant it concerns; `None`
/// for platform-wide settings such as the model registry).
pub async fn record_change(
    s: &AppState,
    who: &Principal,
    kind: SecurityEventKind,
    tenant: Option<palisade_core::ids::TenantId>,
    detail: Value,
) {
    let mut event = SecurityEvent::new(kind)
        .actor(who.user_id)
        .client(&who.client)
        .detail(detail);
    event.tenant_id = tenant;
    if let Err(e) = s.events.record(event).await {
        tracing::error!(error = ?e, "could not record an administrative change in the audit trail");
    }
}

/// The top-level fields that differ between two JSON objects: `(before, after)` holding only
/// those fields (absent ones as `null`).
pub fn changed_fields(before: &Value, after: &Value) -> (Value, Value) {
    let empty = serde_json::Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut old = serde_json::Map::new();
    let mut new = serde_json::Map::new();
    for k in keys {
        let (x, y) = (
            b.get(k).cloned().unwrap_or(Value::Null),
            a.get(k).cloned().unwrap_or(Value::Null),
        );
        if x != y {
            old.insert(k.clone(), x);
            new.insert(k.clone(), y);
        }
    }
    (Value::Object(old), Value::Object(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_fold_within_the_window() {
        let t = RefusalThrottle::default();
        let u = UserId::new();
        let t0 = Instant::now();
        assert_eq!(t.admit(u, "rate_limited", t0), Some(0));
        assert_eq!(
            t.admit(u, "rate_limited", t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            t.admit(u, "rate_limited", t0 + Duration::from_secs(2)),
            None
        );
        // Another code and another caller are their own.
        assert_eq!(t.admit(u, "token_budget", t0), Some(0));
        assert_eq!(t.admit(UserId::new(), "rate_limited", t0), Some(0));
        assert_eq!(
            t.admit(
                u,
                "rate_limited",
                t0 + REFUSAL_WINDOW + Duration::from_secs(1)
            ),
            Some(2)
        );
    }

    #[test]
    fn only_changed_fields_are_kept() {
        let (b, a) = changed_fields(
            &json!({"x": 1, "y": "same", "z": true}),
            &json!({"x": 2, "y": "same", "w": 5}),
        );
        assert_eq!(b, json!({"x": 1, "z": true, "w": null}));
        assert_eq!(a, json!({"x": 2, "z": null, "w": 5}));
    }
}
