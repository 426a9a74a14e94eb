//! Budgets (pipeline step 4, "admit") and usage accounting (step 10, "account").
//!
//! Before a generation starts, the pipeline asks [`Quotas::reserve`] for the tokens it may spend
//! (the prompt's estimate plus `max_tokens`) and a concurrent stream. When the answer ends —
//! finished, failed, cut by the guard or abandoned by the client — the reservation is settled
//! with what was really used, and the usage is added to the day's counters
//! ([`UsageRepository`]). How limits are counted (memory, Redis) is the adapter's business.

use async_trait::async_trait;
use serde::Serialize;

use crate::entities::{Credential, Principal};
use crate::error::CoreResult;
use crate::ids::{TenantId, UserId};

/// Which door a generation came through (each has its own request limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The chat API (`/api/chat/...`, WebSocket).
    Chat,
    /// The OpenAI-compatible API and scoped generate.
    Api,
}

/// What a generation may spend, known before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub door: Door,
    pub model: String,
    /// An upper estimate of the prompt's tokens.
    pub prompt_tokens: u64,
    /// The most the answer may use.
    pub max_tokens: u64,
}

impl Demand {
    /// The tokens reserved up front.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.max_tokens)
    }
}

/// What a generation really spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consumed {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Wall time the engine or upstream spent.
    pub compute_ms: u64,
}

impl Consumed {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// The state of one limit for its caller (`status` in the CLI, the usage page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitState {
    /// What it limits, e.g. "tokens per user: 1000000 per 86400 s".
    pub name: String,
    pub limit: u64,
    /// What could be spent now.
    pub remaining: u64,
    /// Seconds until the limit is full again (0 for concurrency).
    pub reset_secs: u64,
}

/// An admitted generation's hold on the budgets. Settle it exactly once; an adapter also frees
/// what it holds when a reservation is dropped unsettled.
#[async_trait]
pub trait Reservation: Send + Sync + 'static {
    async fn settle(self: Box<Self>, used: Consumed);
}

/// Budget admission. A refusal is [`crate::CoreError::TooManyRequests`] naming the limit and
/// the wait.
#[async_trait]
pub trait Quotas: Send + Sync + 'static {
    async fn reserve(&self, who: &Principal, demand: &Demand) -> CoreResult<Box<dyn Reservation>>;

    /// What `who` has left of each limit that applies to them (charging nothing).
    async fn status(&self, _who: &Principal) -> Vec<LimitState> {
        Vec::new()
    }
}

/// No budgets (tests, limits turned off).
pub struct Unlimited;

struct Nothing;

#[async_trait]
impl Reservation for Nothing {
    async fn settle(self: Box<Self>, _used: Consumed) {}
}

#[async_trait]
impl Quotas for Unlimited {
    async fn reserve(&self, _: &Principal, _: &Demand) -> CoreResult<Box<dyn Reservation>> {
        Ok(Box::new(Nothing))
    }
}

/// One row of usage: a day's counters for one user, credential and model. Keys are the empty
/// string for requests made without an API key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub tenant_id: String,
    pub user_id: String,
    /// The API key's id, or `""`.
    pub key_id: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub compute_ms: u64,
    /// Requests the guard refused (before or during the answer).
    pub guard_blocks: u64,
    /// Requests refused by a limit.
    pub rate_limited: u64,
}

impl UsageRow {
    /// An empty row for this caller, model and moment.
    pub fn for_request(who: &Principal, model: &str, now_ms: i64) -> Self {
        UsageRow {
            day: day_of(now_ms),
            tenant_id: who.tenant_id.to_string(),
            user_id: who.user_id.to_string(),
            key_id: match &who.credential {
                Credential::ApiKey { key_id, .. } => key_id.to_string(),
                _ => String::new(),
            },
            model: model.to_string(),
            ..UsageRow::default()
        }
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Adds another row's counters (same or coarser grouping).
    pub fn add(&mut self, o: &UsageRow) {
        self.requests += o.requests;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.compute_ms += o.compute_ms;
        self.guard_blocks += o.guard_blocks;
        self.rate_limited += o.rate_limited;
    }
}

/// The UTC day of a Unix time in milliseconds.
pub fn day_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// Which rows to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// `None`: every tenant (platform administrators only).
    pub tenant: Option<TenantId>,
    pub user: Option<UserId>,
    /// First and last day, inclusive (`YYYY-MM-DD`).
    pub from_day: String,
    pub to_day: String,
}

impl UsageQuery {
    /// A window from `from`/`to` (`YYYY-MM-DD`, UTC; default: the last 30 days up to today),
    /// at most 400 days long.
    pub fn window(
        from: Option<&str>,
        to: Option<&str>,
        now_ms: i64,
    ) -> CoreResult<(String, String)> {
        use chrono::NaiveDate;
        let parse = |field: &str, v: &str| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                crate::CoreError::validation(
                    "invalid_date",
                    format!("`{field}` must be a date written YYYY-MM-DD"),
                )
            })
        };
        let today = chrono::DateTime::from_timestamp_millis(now_ms)
            .unwrap_or_default()
            .date_naive();
        let to = match to {
            Some(v) => parse("to", v)?,
            None => today,
        };
        let from = match from {
            Some(v) => parse("from", v)?,
            None => to - chrono::Days::new(29),
        };
        if from > to {
            return Err(crate::CoreError::validation(
                "invalid_date",
                "`from` must not be after `to`",
            ));
        }
        if (to - from).num_days() > 400 {
            return Err(crate::CoreError::validation(
                "invalid_date",
                "a usage window is at most 400 days",
            ));
        }
        Ok((
            from.format("%Y-%m-%d").to_string(),
            to.format("%Y-%m-%d").to_string(),
        ))
    }
}

/// Where the day counters live.
#[async_trait]
pub trait UsageRepository: Send + Sync + 'static {
    /// Adds `delta`'s counters to its (day, tenant, user, key, model) row.
    async fn add_usage(&self, delta: &UsageRow) -> CoreResult<()>;
    /// The rows in the window, ordered by day, then user, key and model.
    async fn usage(&self, q: &UsageQuery) -> CoreResult<Vec<UsageRow>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let now = 1_764_547_200_000; // 2025-12-01
        assert_eq!(
            UsageQuery::window(None, None, now).ok(),
            Some(("2025-11-02".into(), "2025-12-01".into()))
        );
        assert_eq!(
            UsageQuery::window(Some("2025-01-01"), Some("2025-01-31"), now).ok(),
            Some(("2025-01-01".into(), "2025-01-31".into()))
        );
        for (f, t) in [
            (Some("2025-02-01"), Some("2025-01-01")),
            (Some("01/02/2025"), None),
            (Some("2020-01-01"), Some("2025-01-01")),
            (Some("2025-01-01'; DROP"), None),
        ] {
            assert!(UsageQuery::window(f, t, now).is_err(), "{f:?} {t:?}");
        }
    }

    #[test]
    fn days_are_utc() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_764_547_199_999), "2025-11-30");
        assert_eq!(day_of(1_764_547_200_000), "2025-12-01");
    }
}
