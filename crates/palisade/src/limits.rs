//! The limits of `[limits]` over `palisade-limits`:
//! - [`RouteLimits`]: requests per user and tenant on the routes that reach a model (the HTTP
//!   layer asks [`RequestLimits::admit`] after authentication);
//! - [`Budgets`]: the pipeline's step 4 ([`Quotas`]): tokens (reserved from the prompt and
//!   `max_tokens`, settled to real usage), compute-seconds and concurrent streams, per user,
//!   API key, tenant, model and server.
//!
//! A request refused by one limit charges no other (the backend decides all checks together).
//! If the counter store fails, requests pass and the failure is logged: limits protect
//! capacity, and an unreachable counter store must not take the service down (revocation, which
//! must fail closed, does not live here).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use palisade_config::LimitsConfig;
use palisade_core::entities::{Credential, Principal};
use palisade_core::quota::{Consumed, Demand, Door, LimitState, Quotas, Reservation};
use palisade_core::{CoreError, CoreResult};
use palisade_http::limits::{Admission, RequestLimits};
use palisade_limits::{Backend, Check, Decision, Dimension, Rate};

/// Per-user figures (the defaults, or a role's own).
#[derive(Debug, Clone, Copy, Default)]
struct PerUser {
    chat: Option<Rate>,
    api: Option<Rate>,
    tokens: Option<Rate>,
    compute: Option<Rate>,
    streams: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct PerModel {
    tokens: Option<Rate>,
    compute: Option<Rate>,
    streams: u32,
}

/// `[limits]` parsed once.
#[derive(Debug, Clone, Default)]
pub struct LimitRules {
    user: PerUser,
    roles: BTreeMap<String, PerUser>,
    models: BTreeMap<String, PerModel>,
    requests_per_tenant: Option<Rate>,
    tokens_per_key: Option<Rate>,
    tokens_per_tenant: Option<Rate>,
    compute_per_tenant: Option<Rate>,
    streams_per_tenant: u32,
    streams_global: u32,
}

fn rate(key: &str, v: &str) -> anyhow::Result<Option<Rate>> {
    Rate::parse(v).map_err(|e| anyhow::anyhow!("configuration `limits.{key}`: {e}"))
}

/// Compute budgets are written in seconds and counted in milliseconds.
fn compute_rate(key: &str, v: &str) -> anyhow::Result<Option<Rate>> {
    Ok(rate(key, v)?.map(|r| Rate {
        amount: r.amount.saturating_mul(1000),
        period: r.period,
    }))
}

impl LimitRules {
    pub fn from_config(l: &LimitsConfig) -> anyhow::Result<Self> {
        let user = PerUser {
            chat: rate("chat_per_user", &l.chat_per_user)?,
            api: rate("api_per_user", &l.api_per_user)?,
            tokens: rate("tokens_per_user", &l.tokens_per_user)?,
            compute: compute_rate("compute_per_user", &l.compute_per_user)?,
            streams: l.streams_per_user,
        };
        let mut roles = BTreeMap::new();
        for (name, r) in &l.roles {
            let k = |f: &str| format!("roles.{name}.{f}");
            let pick = |key: &str, v: &Option<String>, default: Option<Rate>, compute: bool| match v
            {
                None => Ok(default),
                Some(v) if compute => compute_rate(&k(key), v),
                Some(v) => rate(&k(key), v),
            };
            roles.insert(
                name.clone(),
                PerUser {
                    chat: pick("chat_per_user", &r.chat_per_user, user.chat, false)?,
                    api: pick("api_per_user", &r.api_per_user, user.api, false)?,
                    tokens: pick("tokens_per_user", &r.tokens_per_user, user.tokens, false)?,
                    compute: pick("compute_per_user", &r.compute_per_user, user.compute, true)?,
                    streams: r.streams_per_user.unwrap_or(user.streams),
                },
            );
        }
        let mut models = BTreeMap::new();
        for (name, m) in &l.models {
            models.insert(
                name.clone(),
                PerModel {
                    tokens: rate(&format!("models.{name}.tokens"), &m.tokens)?,
                    compute: compute_rate(&format!("models.{name}.compute"), &m.compute)?,
                    streams: m.streams,
                },
            );
        }
        Ok(LimitRules {
            user,
            roles,
            models,
            requests_per_tenant: rate("requests_per_tenant", &l.requests_per_tenant)?,
            tokens_per_key: rate("tokens_per_key", &l.tokens_per_key)?,
            tokens_per_tenant: rate("tokens_per_tenant", &l.tokens_per_tenant)?,
            compute_per_tenant: compute_rate("compute_per_tenant", &l.compute_per_tenant)?,
            streams_per_tenant: l.streams_per_tenant,
            streams_global: l.streams_global,
        })
    }

    fn for_user(&self, who: &Principal) -> &PerUser {
        self.roles.get(who.role.as_str()).unwrap_or(&self.user)
    }
}

/// One check with the words that name it to the caller.
struct Named {
    check: Check,
    label: String,
}

fn rate_check(key: String, dimension: Dimension, r: Rate, cost: u64, label: &str) -> Named {
    let what = match dimension {
        Dimension::ComputeMs => format!(
            "{label}: {} compute-seconds per {} s",
            r.amount / 1000,
            r.period.as_secs()
        ),
        _ => format!("{label}: {}", r.describe()),
    };
    Named {
        check: Check {
            key: format!("{key}:{}:{}", dimension.as_str(), r.period.as_secs()),
            dimension,
            amount: r.amount,
            period: r.period,
            cost,
        },
        label: what,
    }
}

fn stream_check(key: String, amount: u32, label: &str) -> Option<Named> {
    (amount > 0).then(|| Named {
        check: Check {
            key: format!("{key}:concurrent"),
            dimension: Dimension::Concurrent,
            amount: u64::from(amount),
            period: Duration::ZERO,
            cost: 1,
        },
        label: format!("{label}: {amount} at a time"),
    })
}

fn wait_secs(d: Duration) -> u32 {
    u32::try_from(d.max(Duration::from_millis(1)).as_millis().div_ceil(1000)).unwrap_or(u32::MAX)
}

pub struct RouteLimits {
    backend: Arc<dyn Backend>,
    rules: Arc<LimitRules>,
}

impl RouteLimits {
    pub fn new(backend: Arc<dyn Backend>, rules: Arc<LimitRules>) -> Self {
        Self { backend, rules }
    }

    /// The checks of one request.
    fn checks(&self, method: &Method, path: &str, who: &Principal) -> Vec<Named> {
        if method != Method::POST {
            return Vec::new();
        }
        let user = self.rules.for_user(who);
        let (rate, kind, label) = match path {
            "/api/chat/message" | "/chat" => (user.chat, "chat", "chat requests per user"),
            "/v1/chat/completions" | "/api/v1/llm/generate" => {
                (user.api, "api", "API requests per user")
            }
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        if let Some(r) = rate {
            out.push(rate_check(
                format!("u:{}:{kind}", who.user_id),
                Dimension::Requests,
                r,
                1,
                label,
            ));
        }
        if let Some(r) = self.rules.requests_per_tenant {
            out.push(rate_check(
                format!("t:{}", who.tenant_id),
                Dimension::Requests,
                r,
                1,
                "requests of your organisation",
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
        let plain: Vec<Check> = checks.iter().map(|n| n.check.clone()).collect();
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
            }) => Admission::Denied {
                label: checks
                    .get(index)
                    .map(|n| n.label.clone())
                    .unwrap_or_else(|| "limit".into()),
                limit: amount,
                retry_after_secs: wait_secs(retry_after),
            },
            Err(e) => {
                tracing::error!(error = %e, "limit store failed; the request passes unlimited");
                Admission::Unlimited
            }
        }
    }
}

/// Token, compute and stream budgets (the pipeline's [`Quotas`]).
pub struct Budgets {
    backend: Arc<dyn Backend>,
    rules: Arc<LimitRules>,
}

impl Budgets {
    pub fn new(backend: Arc<dyn Backend>, rules: Arc<LimitRules>) -> Self {
        Self { backend, rules }
    }

    fn checks(&self, who: &Principal, demand: &Demand) -> Vec<Named> {
        let r = &self.rules;
        let user = r.for_user(who);
        let tokens = demand.tokens();
        let u = format!("u:{}", who.user_id);
        let t = format!("t:{}", who.tenant_id);
        let m = format!("m:{}", demand.model);
        let model = r.models.get(&demand.model).copied().unwrap_or_default();
        let mut out = Vec::new();
        let mut rate = |scope: &str, dim: Dimension, rate: Option<Rate>, cost: u64, label: &str| {
            if let Some(rt) = rate {
                out.push(rate_check(scope.to_string(), dim, rt, cost, label));
            }
        };
        rate(
            &u,
            Dimension::Tokens,
            user.tokens,
            tokens,
            "tokens per user",
        );
        if let Credential::ApiKey { key_id, .. } = &who.credential {
            rate(
                &format!("k:{key_id}"),
                Dimension::Tokens,
                r.tokens_per_key,
                tokens,
                "tokens per API key",
            );
        }
        rate(
            &t,
            Dimension::Tokens,
            r.tokens_per_tenant,
            tokens,
            "tokens of your organisation",
        );
        rate(
            &m,
            Dimension::Tokens,
            model.tokens,
            tokens,
            "tokens of this model",
        );
        // Compute time is not known ahead: a budget already spent refuses (cost 0), and the
        // time is charged when the answer ends.
        rate(
            &u,
            Dimension::ComputeMs,
            user.compute,
            0,
            "compute time per user",
        );
        rate(
            &t,
            Dimension::ComputeMs,
            r.compute_per_tenant,
            0,
            "compute time of your organisation",
        );
        rate(
            &m,
            Dimension::ComputeMs,
            model.compute,
            0,
            "compute time of this model",
        );
        out.extend(stream_check(u, user.streams, "answers streaming per user"));
        out.extend(stream_check(
            t,
            r.streams_per_tenant,
            "answers streaming in your organisation",
        ));
        out.extend(stream_check(
            m,
            model.streams,
            "answers streaming on this model",
        ));
        out.extend(stream_check(
            "g".into(),
            r.streams_global,
            "answers streaming on this server",
        ));
        out
    }
}

#[async_trait::async_trait]
impl Quotas for Budgets {
    async fn status(&self, who: &Principal) -> Vec<LimitState> {
        let routes = RouteLimits::new(self.backend.clone(), self.rules.clone());
        let mut all = routes.checks(&Method::POST, "/api/chat/message", who);
        all.extend(
            routes
                .checks(&Method::POST, "/v1/chat/completions", who)
                .into_iter()
                .filter(|n| n.check.key.contains(":api:")),
        );
        let model = String::new();
        all.extend(self.checks(
            who,
            &Demand {
                door: Door::Chat,
                model,
                prompt_tokens: 0,
                max_tokens: 0,
            },
        ));
        let mut out = Vec::with_capacity(all.len());
        for n in all {
            // Model-wide and server-wide counters are not the caller's.
            if n.check.key.starts_with("m:") || n.check.key.starts_with("g:") {
                continue;
            }
            let probe = Check {
                cost: 0,
                ..n.check.clone()
            };
            let (remaining, reset_secs) = match self.backend.acquire(&[probe], None).await {
                Ok(Decision::Allowed(s)) => s
                    .first()
                    .map(|s| (s.remaining, s.reset_secs))
                    .unwrap_or((n.check.amount, 0)),
                Ok(Decision::Denied { retry_after, .. }) => (0, u64::from(wait_secs(retry_after))),
                Err(_) => continue,
            };
            let scale = if n.check.dimension == Dimension::ComputeMs {
                1000
            } else {
                1
            };
            out.push(LimitState {
                name: n.label,
                limit: n.check.amount / scale,
                remaining: remaining / scale,
                reset_secs,
            });
        }
        out
    }

    async fn reserve(&self, who: &Principal, demand: &Demand) -> CoreResult<Box<dyn Reservation>> {
        let checks = self.checks(who, demand);
        let plain: Vec<Check> = checks.iter().map(|n| n.check.clone()).collect();
        let held = Held {
            backend: self.backend.clone(),
            checks: plain,
            reserved_tokens: demand.tokens(),
            settled: false,
        };
        if held.checks.is_empty() {
            return Ok(Box::new(held));
        }
        match self.backend.acquire(&held.checks, None).await {
            Ok(Decision::Allowed(_)) => Ok(Box::new(held)),
            Ok(Decision::Denied {
                index,
                retry_after,
                impossible,
                ..
            }) => {
                let mut held = held;
                // Nothing was charged: there is nothing to give back.
                held.settled = true;
                let (dimension, label) = checks
                    .get(index)
                    .map(|n| (n.check.dimension, n.label.clone()))
                    .unwrap_or((Dimension::Requests, "limit".into()));
                let secs = wait_secs(retry_after);
                tracing::info!(user_id = %who.user_id, limit = %label, "budget reached");
                Err(match (dimension, impossible) {
                    (Dimension::Concurrent, _) => CoreError::too_many(
                        "too_many_streams",
                        format!("too many answers at once ({label}); wait for one to finish"),
                        secs,
                    ),
                    (_, true) => CoreError::validation(
                        "request_too_large",
                        format!(
                            "this request needs more than the whole budget ({label}); \
                             ask for fewer max_tokens or send a shorter prompt"
                        ),
                    ),
                    _ => CoreError::too_many(
                        "quota_exceeded",
                        format!("budget reached ({label}); try again in {secs} s"),
                        secs,
                    ),
                })
            }
            Err(e) => {
                let mut held = held;
                held.settled = true;
                tracing::error!(error = %e, "limit store failed; the request passes unlimited");
                Ok(Box::new(held))
            }
        }
    }
}

/// What an admitted request holds: its token reservation and stream slots.
struct Held {
    backend: Arc<dyn Backend>,
    checks: Vec<Check>,
    reserved_tokens: u64,
    settled: bool,
}

impl Held {
    /// Gives back the streams, settles tokens to `used` and charges compute time.
    async fn close(backend: Arc<dyn Backend>, checks: Vec<Check>, reserved: u64, used: Consumed) {
        for c in &checks {
            let res = match c.dimension {
                Dimension::Concurrent => backend.release(c, 1, None).await,
                Dimension::Tokens if used.tokens() < reserved => {
                    backend.release(c, reserved - used.tokens(), None).await
                }
                Dimension::Tokens if used.tokens() > reserved => {
                    backend.charge(c, used.tokens() - reserved, None).await
                }
                Dimension::ComputeMs if used.compute_ms > 0 => {
                    backend.charge(c, used.compute_ms, None).await
                }
                _ => Ok(()),
            };
            if let Err(e) = res {
                tracing::error!(error = %e, key = %c.key, "could not settle a limit counter");
            }
        }
    }
}

#[async_trait::async_trait]
impl Reservation for Held {
    async fn settle(mut self: Box<Self>, used: Consumed) {
        self.settled = true;
        let checks = std::mem::take(&mut self.checks);
        Held::close(self.backend.clone(), checks, self.reserved_tokens, used).await;
    }
}

impl Drop for Held {
    /// A request that ended before it could settle (an error between admission and the answer)
    /// gives everything back.
    fn drop(&mut self) {
        if self.settled || self.checks.is_empty() {
            return;
        }
        let checks = std::mem::take(&mut self.checks);
        let (backend, reserved) = (self.backend.clone(), self.reserved_tokens);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(Held::close(backend, checks, reserved, Consumed::default()));
        }
    }
}
