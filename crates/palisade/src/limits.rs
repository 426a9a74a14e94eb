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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::Method;
use palisade_config::LimitsConfig;
use palisade_core::entities::{Credential, Principal};
use palisade_core::limit_policies::{LimitOverride, LimitOverrides, LimitScope, StoredLimitPolicy};
use palisade_core::quota::{Consumed, Demand, Door, LimitState, Quotas, Reservation};
use palisade_core::{CoreError, CoreResult};
use palisade_http::limits::{Admission, RequestLimits};
use palisade_limits::{Adjust, Backend, Check, Decision, Dimension, Rate};

/// Per-user figures (the defaults, or a role's own).
#[derive(Debug, Clone, Copy, Default)]
struct PerUser {
    chat: Option<Rate>,
    api: Option<Rate>,
    tokens: Option<Rate>,
    compute: Option<Rate>,
    streams: u32,
}

/// Per-tenant figures (the defaults, or a tenant's override).
#[derive(Debug, Clone, Copy, Default)]
struct PerTenant {
    requests: Option<Rate>,
    tokens: Option<Rate>,
    compute: Option<Rate>,
    streams: u32,
}

/// An admin's override, parsed: `Some` replaces the inherited figure (`Some(None)`: no limit).
#[derive(Debug, Clone, Copy, Default)]
struct Parsed {
    requests: Option<Option<Rate>>,
    chat: Option<Option<Rate>>,
    api: Option<Option<Rate>>,
    tokens: Option<Option<Rate>>,
    compute: Option<Option<Rate>>,
    streams: Option<u32>,
}

impl Parsed {
    fn from(o: &LimitOverride) -> CoreResult<Parsed> {
        let field = |name: &str, v: &Option<String>, compute: bool| -> CoreResult<_> {
            let Some(v) = v else { return Ok(None) };
            let r = if compute {
                compute_rate(name, v)
            } else {
                rate(name, v)
            };
            r.map(Some).map_err(|e| {
                CoreError::validation(
                    "invalid_limit",
                    e.to_string().replace("configuration `limits.", "`"),
                )
            })
        };
        Ok(Parsed {
            requests: field("requests", &o.requests, false)?,
            chat: field("chat", &o.chat, false)?,
            api: field("api", &o.api, false)?,
            tokens: field("tokens", &o.tokens, false)?,
            compute: field("compute", &o.compute, true)?,
            streams: o.streams,
        })
    }
}

/// Overrides by scope (tenant, user, key), then subject id.
#[derive(Debug, Default)]
struct Overrides {
    tenants: HashMap<String, Parsed>,
    users: HashMap<String, Parsed>,
    keys: HashMap<String, Parsed>,
}

impl Overrides {
    fn of(&mut self, scope: LimitScope) -> &mut HashMap<String, Parsed> {
        match scope {
            LimitScope::Tenant => &mut self.tenants,
            LimitScope::User => &mut self.users,
            LimitScope::Key => &mut self.keys,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct PerModel {
    tokens: Option<Rate>,
    compute: Option<Rate>,
    streams: u32,
}

/// `[limits]` parsed once, and the admins' overrides.
#[derive(Debug, Default)]
pub struct LimitRules {
    user: PerUser,
    roles: BTreeMap<String, PerUser>,
    models: BTreeMap<String, PerModel>,
    tenant: PerTenant,
    tokens_per_key: Option<Rate>,
    streams_global: u32,
    overrides: RwLock<Overrides>,
    /// How long a request may wait at a limit before it is refused.
    queue: Duration,
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
            tenant: PerTenant {
                requests: rate("requests_per_tenant", &l.requests_per_tenant)?,
                tokens: rate("tokens_per_tenant", &l.tokens_per_tenant)?,
                compute: compute_rate("compute_per_tenant", &l.compute_per_tenant)?,
                streams: l.streams_per_tenant,
            },
            tokens_per_key: rate("tokens_per_key", &l.tokens_per_key)?,
            streams_global: l.streams_global,
            queue: Duration::from_secs(u64::from(l.queue_seconds)),
            overrides: RwLock::default(),
        })
    }

    fn overrides(&self) -> std::sync::RwLockReadGuard<'_, Overrides> {
        self.overrides.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The user's role figures, with the user's override on top.
    fn for_user(&self, who: &Principal) -> PerUser {
        let mut u = *self.roles.get(who.role.as_str()).unwrap_or(&self.user);
        let all = self.overrides();
        // The common case, no override at all, costs no key formatting.
        let found = if all.users.is_empty() {
            None
        } else {
            all.users.get(&who.user_id.to_string())
        };
        if let Some(o) = found {
            u.chat = o.chat.unwrap_or(u.chat);
            u.api = o.api.unwrap_or(u.api);
            u.tokens = o.tokens.unwrap_or(u.tokens);
            u.compute = o.compute.unwrap_or(u.compute);
            u.streams = o.streams.unwrap_or(u.streams);
        }
        u
    }

    /// The tenant's figures: the defaults with the tenant's override on top.
    fn for_tenant(&self, who: &Principal) -> PerTenant {
        let mut t = self.tenant;
        let all = self.overrides();
        let found = if all.tenants.is_empty() {
            None
        } else {
            all.tenants.get(&who.tenant_id.to_string())
        };
        if let Some(o) = found {
            t.requests = o.requests.unwrap_or(t.requests);
            t.tokens = o.tokens.unwrap_or(t.tokens);
            t.compute = o.compute.unwrap_or(t.compute);
            t.streams = o.streams.unwrap_or(t.streams);
        }
        t
    }

    fn for_key(&self, key: &str) -> Option<Rate> {
        match self.overrides().keys.get(key).and_then(|o| o.tokens) {
            Some(r) => r,
            None => self.tokens_per_key,
        }
    }
}

/// A rate as written in `[limits]`: `1000000/day`, `30/5min`, `off`. Compute rates are counted
/// in milliseconds and written in seconds.
fn spec(r: Option<Rate>, compute: bool) -> String {
    let Some(r) = r else { return "off".into() };
    let amount = if compute { r.amount / 1000 } else { r.amount };
    let secs = r.period.as_secs();
    for (unit, len) in [
        ("month", 30 * 86_400),
        ("day", 86_400),
        ("h", 3_600),
        ("min", 60),
        ("s", 1),
    ] {
        if secs % len == 0 {
            return match secs / len {
                1 => format!("{amount}/{unit}"),
                n => format!("{amount}/{n}{unit}"),
            };
        }
    }
    format!("{amount}/{secs}s")
}

fn streams(n: u32) -> String {
    if n == 0 {
        "off".into()
    } else {
        n.to_string()
    }
}

impl LimitOverrides for LimitRules {
    fn check(&self, _scope: LimitScope, limits: &LimitOverride) -> CoreResult<()> {
        Parsed::from(limits).map(|_| ())
    }

    fn replace_all(&self, all: &[StoredLimitPolicy]) {
        let mut fresh = Overrides::default();
        for p in all {
            match Parsed::from(&p.limits) {
                Ok(parsed) => {
                    fresh.of(p.scope).insert(p.subject.clone(), parsed);
                }
                Err(e) => tracing::error!(
                    scope = p.scope.as_str(),
                    subject = %p.subject,
                    error = %e,
                    "a stored limit override does not parse; the defaults apply"
                ),
            }
        }
        *self.overrides.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    fn apply(&self, scope: LimitScope, subject: &str, limits: Option<&LimitOverride>) {
        let parsed = limits.and_then(|l| Parsed::from(l).ok());
        let mut all = self.overrides.write().unwrap_or_else(|e| e.into_inner());
        match parsed {
            Some(p) => all.of(scope).insert(subject.to_string(), p),
            None => all.of(scope).remove(subject),
        };
    }

    fn defaults(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut user = |prefix: &str, u: &PerUser| {
            out.push((format!("{prefix}.chat"), spec(u.chat, false)));
            out.push((format!("{prefix}.api"), spec(u.api, false)));
            out.push((format!("{prefix}.tokens"), spec(u.tokens, false)));
            out.push((format!("{prefix}.compute"), spec(u.compute, true)));
            out.push((format!("{prefix}.streams"), streams(u.streams)));
        };
        user("user", &self.user);
        for (name, r) in &self.roles {
            user(&format!("roles.{name}"), r);
        }
        let t = &self.tenant;
        out.push(("tenant.requests".into(), spec(t.requests, false)));
        out.push(("tenant.tokens".into(), spec(t.tokens, false)));
        out.push(("tenant.compute".into(), spec(t.compute, true)));
        out.push(("tenant.streams".into(), streams(t.streams)));
        out.push(("key.tokens".into(), spec(self.tokens_per_key, false)));
        for (name, m) in &self.models {
            out.push((format!("models.{name}.tokens"), spec(m.tokens, false)));
            out.push((format!("models.{name}.compute"), spec(m.compute, true)));
            out.push((format!("models.{name}.streams"), streams(m.streams)));
        }
        out.push(("server.streams".into(), streams(self.streams_global)));
        out.push(("queue_seconds".into(), self.queue.as_secs().to_string()));
        out
    }
}

/// One check with the words that name it to the caller.
struct Named {
    check: Check,
    /// The limit without its figures ("tokens per user").
    name: &'static str,
    /// The rate of a rate limit (`None`: a number at a time), for [`Named::label`].
    rate: Option<Rate>,
}

impl Named {
    /// The limit with its figures ("tokens per user: 1000 per 1 d"), for people. Made only
    /// when a refusal or the limits page needs it, not for every check of every request.
    fn label(&self) -> String {
        match self.rate {
            Some(r) if self.check.dimension == Dimension::ComputeMs => format!(
                "{}: {} compute-seconds per {} s",
                self.name,
                r.amount / 1000,
                r.period.as_secs()
            ),
            Some(r) => format!("{}: {}", self.name, r.describe()),
            None => format!("{}: {} at a time", self.name, self.check.amount),
        }
    }
}

fn rate_check(key: String, dimension: Dimension, r: Rate, cost: u64, label: &'static str) -> Named {
    Named {
        check: Check {
            key: format!("{key}:{}:{}", dimension.as_str(), r.period.as_secs()),
            dimension,
            amount: r.amount,
            period: r.period,
            cost,
        },
        name: label,
        rate: Some(r),
    }
}

fn stream_check(key: String, amount: u32, label: &'static str) -> Option<Named> {
    (amount > 0).then(|| Named {
        check: Check {
            key: format!("{key}:concurrent"),
            dimension: Dimension::Concurrent,
            amount: u64::from(amount),
            period: Duration::ZERO,
            cost: 1,
        },
        name: label,
        rate: None,
    })
}

fn wait_secs(d: Duration) -> u32 {
    u32::try_from(d.max(Duration::from_millis(1)).as_millis().div_ceil(1000)).unwrap_or(u32::MAX)
}

/// How often a request held at a concurrency limit asks again.
const QUEUE_POLL: Duration = Duration::from_millis(100);

/// Decides `checks`; a refusal that will pass within `queue` waits for it (a stream slot is
/// asked for again every [`QUEUE_POLL`]; a rate waits exactly as long as it says). A refusal
/// that cannot pass in time answers at once. The caller going away drops the wait, and
/// nothing was charged.
async fn acquire_queued(
    backend: &dyn Backend,
    checks: &[Check],
    queue: Duration,
) -> Result<Decision, palisade_limits::LimitError> {
    let deadline = tokio::time::Instant::now() + queue;
    loop {
        let decision = backend.acquire(checks, None).await?;
        let Decision::Denied {
            index,
            retry_after,
            impossible: false,
            ..
        } = &decision
        else {
            return Ok(decision);
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let concurrent = checks
            .get(*index)
            .is_some_and(|c| c.dimension == Dimension::Concurrent);
        let nap = if concurrent { QUEUE_POLL } else { *retry_after };
        if left.is_zero() || nap > left {
            return Ok(decision);
        }
        tokio::time::sleep(nap).await;
    }
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
        if let Some(r) = self.rules.for_tenant(who).requests {
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
        match acquire_queued(self.backend.as_ref(), &plain, self.rules.queue).await {
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
                name: checks.get(index).map_or("limit", |n| n.name),
                label: checks
                    .get(index)
                    .map(Named::label)
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
        let tenant = r.for_tenant(who);
        let tokens = demand.tokens();
        let u = format!("u:{}", who.user_id);
        let t = format!("t:{}", who.tenant_id);
        let m = format!("m:{}", demand.model);
        let model = r.models.get(&demand.model).copied().unwrap_or_default();
        let mut out = Vec::new();
        let mut rate =
            |scope: &str, dim: Dimension, rate: Option<Rate>, cost: u64, label: &'static str| {
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
                r.for_key(&key_id.to_string()),
                tokens,
                "tokens per API key",
            );
        }
        rate(
            &t,
            Dimension::Tokens,
            tenant.tokens,
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
            tenant.compute,
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
            tenant.streams,
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
                name: n.label(),
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
        // `Held` exists only once its counters are charged: a request dropped while it waits
        // (the client left) must not give back what it never took.
        let held = |checks: Vec<Check>| -> Box<dyn Reservation> {
            Box::new(Held {
                backend: self.backend.clone(),
                checks,
                reserved_tokens: demand.tokens(),
                settled: false,
            })
        };
        if plain.is_empty() {
            return Ok(held(plain));
        }
        match acquire_queued(self.backend.as_ref(), &plain, self.rules.queue).await {
            Ok(Decision::Allowed(_)) => Ok(held(plain)),
            Ok(Decision::Denied {
                index,
                retry_after,
                impossible,
                ..
            }) => {
                let (dimension, label) = checks
                    .get(index)
                    .map(|n| (n.check.dimension, n.label()))
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
                // Nothing was charged: nothing to give back.
                tracing::error!(error = %e, "limit store failed; the request passes unlimited");
                Ok(held(Vec::new()))
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
    /// Gives back the streams, settles tokens to `used` and charges compute time, in one call
    /// to the counter store.
    async fn close(backend: Arc<dyn Backend>, checks: Vec<Check>, reserved: u64, used: Consumed) {
        let changes: Vec<Adjust> = checks
            .into_iter()
            .filter_map(|check| {
                let (amount, charge) = match check.dimension {
                    Dimension::Concurrent => (1, false),
                    Dimension::Tokens if used.tokens() < reserved => {
                        (reserved - used.tokens(), false)
                    }
                    Dimension::Tokens if used.tokens() > reserved => {
                        (used.tokens() - reserved, true)
                    }
                    Dimension::ComputeMs if used.compute_ms > 0 => (used.compute_ms, true),
                    _ => return None,
                };
                Some(Adjust {
                    check,
                    amount,
                    charge,
                })
            })
            .collect();
        if let Err(e) = backend.adjust(&changes, None).await {
            tracing::error!(error = %e, "could not settle the limit counters of a request");
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! Every budget dimension in every scope it has, and the admins' overrides, decided by the
    //! same code the server runs (over the in-memory backend; `palisade-limits` proves Redis
    //! decides the same).

    use super::*;
    use palisade_config::ModelLimits;
    use palisade_core::access::{PermissionSet, RoleName};
    use palisade_core::ids::{ApiKeyId, TenantId, UserId};
    use palisade_limits::MemoryBackend;

    fn who(tenant: TenantId, key: Option<ApiKeyId>) -> Principal {
        Principal {
            user_id: UserId::new(),
            tenant_id: tenant,
            username: "u".into(),
            role: RoleName::new("user").unwrap(),
            permissions: PermissionSet::default(),
            credential: match key {
                Some(key_id) => Credential::ApiKey {
                    key_id,
                    store_conversations: false,
                },
                None => Credential::Session { session: None },
            },
            token_id: String::new(),
            client: Default::default(),
            must_change_password: false,
            needs_2fa_enrolment: false,
        }
    }

    fn ask(model: &str, tokens: u64) -> Demand {
        Demand {
            door: Door::Chat,
            model: model.into(),
            prompt_tokens: 0,
            max_tokens: tokens,
        }
    }

    /// Everything off, so each case sets only the limit it tests.
    fn off() -> LimitsConfig {
        LimitsConfig {
            chat_per_user: "off".into(),
            api_per_user: "off".into(),
            tokens_per_user: "off".into(),
            compute_per_user: "off".into(),
            streams_per_user: 0,
            ..LimitsConfig::default()
        }
    }

    fn budgets(cfg: &LimitsConfig) -> (Budgets, Arc<LimitRules>) {
        let rules = Arc::new(LimitRules::from_config(cfg).unwrap());
        (
            Budgets::new(Arc::new(MemoryBackend::new()), rules.clone()),
            rules,
        )
    }

    async fn spend(b: &Budgets, p: &Principal, d: &Demand, compute_ms: u64) {
        let held = b
            .reserve(p, d)
            .await
            .unwrap_or_else(|e| panic!("refused: {e}"));
        held.settle(Consumed {
            prompt_tokens: 0,
            completion_tokens: d.max_tokens,
            compute_ms,
        })
        .await;
    }

    async fn refused(b: &Budgets, p: &Principal, d: &Demand) -> String {
        match b.reserve(p, d).await {
            Ok(_) => panic!("admitted"),
            Err(e) => format!("{e:?}"),
        }
    }

    /// One case: `first` spends; `second` is refused naming `label`; `other` is not affected.
    struct Case {
        name: &'static str,
        cfg: LimitsConfig,
        first: (Principal, Demand),
        second: (Principal, Demand),
        label: &'static str,
        other: (Principal, Demand),
        compute_ms: u64,
    }

    #[tokio::test]
    async fn every_dimension_in_every_scope() {
        let (t1, t2) = (TenantId::new(), TenantId::new());
        let (k1, k2) = (ApiKeyId::new(), ApiKeyId::new());
        let alice = who(t1, None);
        let alice_key = Principal {
            credential: Credential::ApiKey {
                key_id: k1,
                store_conversations: false,
            },
            ..alice.clone()
        };
        let alice_key2 = Principal {
            credential: Credential::ApiKey {
                key_id: k2,
                store_conversations: false,
            },
            ..alice.clone()
        };
        let bob = who(t1, None);
        let carol = who(t2, None);
        let model = |tokens: &str, compute: &str| {
            let mut c = off();
            c.models.insert(
                "m".into(),
                ModelLimits {
                    tokens: tokens.into(),
                    compute: compute.into(),
                    streams: 0,
                },
            );
            c
        };
        let cases = vec![
            Case {
                name: "tokens per user",
                cfg: LimitsConfig {
                    tokens_per_user: "100/day".into(),
                    ..off()
                },
                first: (alice.clone(), ask("m", 80)),
                second: (alice.clone(), ask("m", 80)),
                label: "tokens per user",
                other: (bob.clone(), ask("m", 80)),
                compute_ms: 0,
            },
            Case {
                name: "tokens per key",
                cfg: LimitsConfig {
                    tokens_per_key: "100/day".into(),
                    ..off()
                },
                first: (alice_key.clone(), ask("m", 80)),
                second: (alice_key.clone(), ask("m", 80)),
                label: "tokens per API key",
                other: (alice_key2.clone(), ask("m", 80)),
                compute_ms: 0,
            },
            Case {
                name: "tokens per tenant",
                cfg: LimitsConfig {
                    tokens_per_tenant: "100/day".into(),
                    ..off()
                },
                first: (alice.clone(), ask("m", 80)),
                second: (bob.clone(), ask("m", 80)),
                label: "tokens of your organisation",
                other: (carol.clone(), ask("m", 80)),
                compute_ms: 0,
            },
            Case {
                name: "tokens per model",
                cfg: model("100/day", ""),
                first: (alice.clone(), ask("m", 80)),
                second: (carol.clone(), ask("m", 80)),
                label: "tokens of this model",
                other: (carol.clone(), ask("n", 80)),
                compute_ms: 0,
            },
            Case {
                name: "compute per user",
                cfg: LimitsConfig {
                    compute_per_user: "10/day".into(),
                    ..off()
                },
                first: (alice.clone(), ask("m", 1)),
                second: (alice.clone(), ask("m", 1)),
                label: "compute time per user",
                other: (bob.clone(), ask("m", 1)),
                compute_ms: 12_000,
            },
            Case {
                name: "compute per tenant",
                cfg: LimitsConfig {
                    compute_per_tenant: "10/day".into(),
                    ..off()
                },
                first: (alice.clone(), ask("m", 1)),
                second: (bob.clone(), ask("m", 1)),
                label: "compute time of your organisation",
                other: (carol.clone(), ask("m", 1)),
                compute_ms: 12_000,
            },
            Case {
                name: "compute per model",
                cfg: model("", "10/day"),
                first: (alice.clone(), ask("m", 1)),
                second: (carol.clone(), ask("m", 1)),
                label: "compute time of this model",
                other: (carol.clone(), ask("n", 1)),
                compute_ms: 12_000,
            },
        ];
        for c in cases {
            let (b, _) = budgets(&c.cfg);
            spend(&b, &c.first.0, &c.first.1, c.compute_ms).await;
            let e = refused(&b, &c.second.0, &c.second.1).await;
            assert!(e.contains(c.label), "{}: {e}", c.name);
            assert!(
                b.reserve(&c.other.0, &c.other.1).await.is_ok(),
                "{}: another subject was refused",
                c.name
            );
        }

        // Streams: per user, tenant, model and server; a finished stream frees its slot.
        let mut per_model = off();
        per_model.models.insert(
            "m".into(),
            ModelLimits {
                tokens: String::new(),
                compute: String::new(),
                streams: 1,
            },
        );
        let streams = [
            (
                LimitsConfig {
                    streams_per_user: 1,
                    ..off()
                },
                alice.clone(),
                "answers streaming per user",
                bob.clone(),
            ),
            (
                LimitsConfig {
                    streams_per_tenant: 1,
                    ..off()
                },
                bob.clone(),
                "answers streaming in your organisation",
                carol.clone(),
            ),
            (
                per_model,
                carol.clone(),
                "answers streaming on this model",
                { carol.clone() },
            ),
            (
                LimitsConfig {
                    streams_global: 1,
                    ..off()
                },
                carol.clone(),
                "answers streaming on this server",
                alice.clone(),
            ),
        ];
        for (i, (cfg, second, label, other)) in streams.into_iter().enumerate() {
            let (b, _) = budgets(&cfg);
            let held = b.reserve(&alice, &ask("m", 1)).await.unwrap();
            let e = refused(&b, &second, &ask("m", 1)).await;
            assert!(e.contains(label) && e.contains("too_many_streams"), "{e}");
            if i == 2 {
                // Another model is not this model's stream.
                assert!(b.reserve(&other, &ask("n", 1)).await.is_ok());
            } else if i < 2 {
                assert!(b.reserve(&other, &ask("m", 1)).await.is_ok(), "{label}");
            }
            held.settle(Consumed::default()).await;
            assert!(b.reserve(&second, &ask("m", 1)).await.is_ok(), "{label}");
        }

        // More than the whole budget can never pass: refused as too large, not "wait".
        let (b, _) = budgets(&LimitsConfig {
            tokens_per_user: "100/day".into(),
            ..off()
        });
        let e = refused(&b, &alice, &ask("m", 101)).await;
        assert!(e.contains("request_too_large"), "{e}");
    }

    #[tokio::test]
    async fn overrides_replace_the_figures_they_name() {
        let t1 = TenantId::new();
        let key = ApiKeyId::new();
        let alice = who(t1, Some(key));
        let bob = who(t1, None);
        let (b, rules) = budgets(&LimitsConfig {
            tokens_per_user: "100/day".into(),
            tokens_per_key: "100/day".into(),
            streams_per_user: 1,
            ..off()
        });
        let set = |scope, subject: String, o: LimitOverride| {
            rules.check(scope, &o).unwrap();
            rules.apply(scope, &subject, Some(&o));
        };
        // The user's budget lifted ("off"), the key's still applies; streams inherited.
        set(
            LimitScope::User,
            alice.user_id.to_string(),
            LimitOverride {
                tokens: Some("off".into()),
                ..LimitOverride::default()
            },
        );
        let e = refused(&b, &alice, &ask("m", 150)).await;
        assert!(e.contains("tokens per API key"), "{e}");
        set(
            LimitScope::Key,
            key.to_string(),
            LimitOverride {
                tokens: Some("1000/day".into()),
                ..LimitOverride::default()
            },
        );
        let held = b.reserve(&alice, &ask("m", 150)).await.unwrap();
        let e = refused(&b, &alice, &ask("m", 1)).await;
        assert!(e.contains("answers streaming per user: 1"), "{e}");
        held.settle(Consumed::default()).await;
        // Bob keeps the defaults.
        let e = refused(&b, &bob, &ask("m", 150)).await;
        assert!(e.contains("tokens per user"), "{e}");
        // A tenant's ceiling.
        set(
            LimitScope::Tenant,
            t1.to_string(),
            LimitOverride {
                tokens: Some("50/day".into()),
                ..LimitOverride::default()
            },
        );
        let e = refused(&b, &bob, &ask("m", 60)).await;
        assert!(e.contains("tokens of your organisation"), "{e}");
        // Removing overrides restores the defaults; a reload replaces them all.
        rules.apply(LimitScope::Tenant, &t1.to_string(), None);
        assert!(b.reserve(&bob, &ask("m", 60)).await.is_ok());
        rules.replace_all(&[]);
        let e = refused(&b, &alice, &ask("m", 150)).await;
        assert!(e.contains("tokens per user"), "{e}");
        // Values that do not parse are refused before anything applies.
        let bad = LimitOverride {
            tokens: Some("lots".into()),
            ..LimitOverride::default()
        };
        assert!(rules.check(LimitScope::User, &bad).is_err());
        // The admin view of the defaults, written as in the configuration.
        let d: BTreeMap<String, String> = rules.defaults().into_iter().collect();
        assert_eq!(d.get("user.tokens").map(String::as_str), Some("100/day"));
        assert_eq!(d.get("user.streams").map(String::as_str), Some("1"));
        assert_eq!(d.get("tenant.tokens").map(String::as_str), Some("off"));
    }

    #[test]
    fn rates_are_written_back_as_configured() {
        let r = |s: &str| Rate::parse(s).unwrap();
        assert_eq!(spec(r("1000000/day"), false), "1000000/day");
        assert_eq!(spec(r("30/5min"), false), "30/5min");
        assert_eq!(spec(r("10/s"), false), "10/s");
        assert_eq!(
            spec(compute_rate("c", "7200/day").unwrap(), true),
            "7200/day"
        );
        assert_eq!(spec(None, false), "off");
        assert_eq!(spec(r("7/90s"), false), "7/90s");
    }
}
