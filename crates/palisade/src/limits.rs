//! The request limits of `[limits]` over `palisade-limits`: which routes count against which
//! budget (the HTTP layer only asks [`RequestLimits::admit`]).
//!
//! A request refused by one limit charges no other (the backend decides all checks together).
//! If the counter store fails, requests pass and the failure is logged: limits protect
//! capacity, and an unreachable counter store must not take the service down (revocation, which
//! must fail closed, does not live here).

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use palisade_core::entities::Principal;
use palisade_http::limits::{Admission, RequestLimits};
use palisade_limits::{Backend, Check, Decision, Dimension, Rate};

pub struct RouteLimits {
    backend: Arc<dyn Backend>,
    chat_per_user: Option<Rate>,
    api_per_user: Option<Rate>,
    per_tenant: Option<Rate>,
}

impl RouteLimits {
    pub fn new(
        backend: Arc<dyn Backend>,
        chat_per_user: Option<Rate>,
        api_per_user: Option<Rate>,
        per_tenant: Option<Rate>,
    ) -> Self {
        Self {
            backend,
            chat_per_user,
            api_per_user,
            per_tenant,
        }
    }

    /// The checks of one request, with a readable name for each.
    fn checks(&self, method: &Method, path: &str, who: &Principal) -> Vec<(Check, String)> {
        if method != Method::POST {
            return Vec::new();
        }
        let (rate, kind, label) = match path {
            "/api/chat/message" | "/chat" => (self.chat_per_user, "chat", "chat requests per user"),
            "/v1/chat/completions" | "/api/v1/llm/generate" => {
                (self.api_per_user, "api", "API requests per user")
            }
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        if let Some(r) = rate {
            out.push((
                Check {
                    key: format!("u:{}:{kind}:{}", who.user_id, r.period.as_secs()),
                    dimension: Dimension::Requests,
                    amount: r.amount,
                    period: r.period,
                    cost: 1,
                },
                format!("{label}: {}", r.describe()),
            ));
        }
        if let Some(r) = self.per_tenant {
            out.push((
                Check {
                    key: format!("t:{}:requests:{}", who.tenant_id, r.period.as_secs()),
                    dimension: Dimension::Requests,
                    amount: r.amount,
                    period: r.period,
                    cost: 1,
                },
                format!("requests of your organisation: {}", r.describe()),
            ));
        }
        out
    }
}

#[async_trait::async_trait]
impl RequestLimits for RouteLimits {
    async fn admit(&self, method: &Method, path: &str, who: &Principal) -> Admission {
        let checks = self.checks(method, path, who);
        if checks.is_empty() {
            return Admission::Unlimited;
        }
        let plain: Vec<Check> = checks.iter().map(|(c, _)| c.clone()).collect();
        match self.backend.acquire(&plain, None).await {
            Ok(Decision::Allowed(statuses)) => match statuses.iter().min_by_key(|s| s.remaining) {
                Some(s) => Admission::Allowed {
                    limit: s.amount,
                    remaining: s.remaining,
                    reset_secs: s.reset_secs,
                },
                None => Admission::Unlimited,
            },
            Ok(Decision::Denied {
                index,
                amount,
                retry_after,
                ..
            }) => {
                let wait = retry_after.max(Duration::from_millis(1));
                Admission::Denied {
                    label: checks
                        .get(index)
                        .map(|(_, l)| l.clone())
                        .unwrap_or_else(|| "limit".into()),
                    limit: amount,
                    retry_after_secs: u32::try_from(wait.as_millis().div_ceil(1000))
                        .unwrap_or(u32::MAX),
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "limit store failed; the request passes unlimited");
                Admission::Unlimited
            }
        }
    }
}
