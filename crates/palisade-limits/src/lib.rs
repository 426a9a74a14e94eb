//! Limits over several dimensions at once (requests, tokens, compute time, concurrent streams),
//! each for a scope (user, API key, tenant, model, global) and a window from seconds to months.
//!
//! Rates use GCRA (the generic cell rate algorithm): one timestamp per key, the "theoretical
//! arrival time" (TAT). A limit of `amount` per `period` has an emission interval
//! `T = period / amount` and admits a burst of `amount`. A request of cost `c` at time `now` moves
//! the TAT to `max(TAT, now) + c·T` and is admitted when that is at most `now + period`. Unused
//! cost is given back by moving the TAT back (a token reservation settled to real usage).
//! Concurrency limits are counters: acquired before, released after.
//!
//! A request's checks are decided together: all are admitted or none is charged. Two backends
//! with identical semantics: [`MemoryBackend`] (one process) and [`RedisBackend`] (shared by
//! replicas; one Lua script, one round trip per decision and one per settlement, Redis's
//! clock).

mod memory;
mod redis_backend;

use std::time::Duration;

pub use memory::MemoryBackend;
pub use redis_backend::RedisBackend;

/// A rate: `amount` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub amount: u64,
    pub period: Duration,
}

impl Rate {
    /// Parses `N/UNIT` (`10/s`, `100/min`, `5000/h`, `200000/day`, `5000000/month`; a number
    /// before the unit multiplies it: `30/5min`). `""` or `"off"` is no limit.
    pub fn parse(s: &str) -> Result<Option<Rate>, String> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let err =
            || format!("`{s}` is not a rate: write N/UNIT with UNIT one of s, min, h, day, month");
        let (n, unit) = s.split_once('/').ok_or_else(err)?;
        let amount: u64 = n.trim().replace('_', "").parse().map_err(|_| err())?;
        let unit = unit.trim();
        let digits: String = unit.chars().take_while(|c| c.is_ascii_digit()).collect();
        let times: u64 = if digits.is_empty() {
            1
        } else {
            digits.parse().map_err(|_| err())?
        };
        let secs = match &unit[digits.len()..] {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3_600,
            "d" | "day" => 86_400,
            "month" => 30 * 86_400,
            _ => return Err(err()),
        };
        if amount == 0 || times == 0 {
            return Err(format!(
                "`{s}`: the amount and the window must be above zero"
            ));
        }
        Ok(Some(Rate {
            amount,
            period: Duration::from_secs(secs * times),
        }))
    }

    /// `10 per 1 s`, `100 per 60 s`.
    pub fn describe(&self) -> String {
        format!("{} per {} s", self.amount, self.period.as_secs())
    }
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Requests,
    /// Prompt + completion tokens.
    Tokens,
    /// Milliseconds the engine or upstream spent.
    ComputeMs,
    /// Streams at the same time (a counter, not a rate).
    Concurrent,
}

impl Dimension {
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Tokens => "tokens",
            Dimension::ComputeMs => "compute_ms",
            Dimension::Concurrent => "concurrent",
        }
    }
}

/// One check of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The counter's key, e.g. `u:<user id>:tokens:86400`; it names dimension, scope and window.
    pub key: String,
    pub dimension: Dimension,
    /// How much is allowed per `period` (rates), or at once (concurrency).
    pub amount: u64,
    /// The window (ignored for concurrency).
    pub period: Duration,
    /// What this request costs (reserved up front).
    pub cost: u64,
}

impl Check {
    /// GCRA parameters in microseconds: (emission interval, window).
    fn gcra(&self) -> (u64, u64) {
        let period = u64::try_from(self.period.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        (period / self.amount.max(1), period)
    }
}

/// The state of one checked counter after a decision (for the `RateLimit-*` headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub key: String,
    pub amount: u64,
    /// What could still be spent now.
    pub remaining: u64,
    /// Seconds until the counter is back to full (rates; 0 for concurrency).
    pub reset_secs: u64,
}

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every check admitted and charged; one status per check, in order.
    Allowed(Vec<Status>),
    /// Nothing charged: the first check that refused, and when to try again.
    Denied {
        index: usize,
        key: String,
        amount: u64,
        retry_after: Duration,
        /// A cost larger than the whole limit can never pass.
        impossible: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("the limit store is unavailable: {0}")]
    Unavailable(String),
}

/// Where counters live.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Admits and charges every check, or none. `now_us`: the clock to use (tests); `None`: the
    /// backend's own clock.
    async fn acquire(&self, checks: &[Check], now_us: Option<u64>) -> Result<Decision, LimitError>;

    /// Applies several corrections at once (a request's settlement: streams given back, tokens
    /// settled to real usage, compute time charged); one round trip on Redis.
    async fn adjust(&self, changes: &[Adjust], now_us: Option<u64>) -> Result<(), LimitError>;

    /// For readiness probes: `Some(answered)` for a backend behind a network hop (Redis),
    /// `None` when there is nothing to reach (this process's memory).
    async fn ping(&self) -> Option<bool> {
        None
    }

    /// Gives back `amount` of a check's cost (unused reservation; a finished stream).
    async fn release(
        &self,
        check: &Check,
        amount: u64,
        now_us: Option<u64>,
    ) -> Result<(), LimitError> {
        let change = Adjust {
            check: check.clone(),
            amount,
            charge: false,
        };
        self.adjust(std::slice::from_ref(&change), now_us).await
    }

    /// Charges `amount` more without asking (usage beyond the reservation, compute time spent).
    /// A counter may go over its limit this way; later requests wait until it is paid back.
    async fn charge(
        &self,
        check: &Check,
        amount: u64,
        now_us: Option<u64>,
    ) -> Result<(), LimitError> {
        let change = Adjust {
            check: check.clone(),
            amount,
            charge: true,
        };
        self.adjust(std::slice::from_ref(&change), now_us).await
    }
}

/// One correction of a counter after the fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjust {
    pub check: Check,
    pub amount: u64,
    /// `true`: charge `amount` without asking; `false`: give `amount` back.
    pub charge: bool,
}

/// The outcome of one GCRA step (shared by both backends, so their semantics are identical;
/// the Redis script mirrors it line by line).
pub(crate) fn gcra_step(
    tat: u64,
    now: u64,
    interval: u64,
    period: u64,
    cost: u64,
) -> Result<u64, (u64, bool)> {
    let increment = interval.saturating_mul(cost);
    let new_tat = tat.max(now).saturating_add(increment);
    if new_tat.saturating_sub(now) <= period {
        Ok(new_tat)
    } else {
        let impossible = increment > period;
        Err((new_tat - now - period, impossible))
    }
}

/// Remaining and reset of a rate counter whose TAT is `tat`.
pub(crate) fn gcra_status(tat: u64, now: u64, interval: u64, period: u64) -> (u64, u64) {
    let used = tat.saturating_sub(now);
    let remaining = period.saturating_sub(used) / interval.max(1);
    (remaining, used.div_ceil(1_000_000))
}

/// A check's status after it was charged: `value` is the counter (concurrency) or the new TAT.
pub(crate) fn status_of(c: &Check, value: u64, now: u64) -> Status {
    let (remaining, reset_secs) = match c.dimension {
        Dimension::Concurrent => (c.amount.saturating_sub(value), 0),
        _ => {
            let (interval, period) = c.gcra();
            gcra_status(value, now, interval, period)
        }
    };
    Status {
        key: c.key.clone(),
        amount: c.amount,
        remaining,
        reset_secs,
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let r = |s| Rate::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r("10/s"),
            Some(Rate {
                amount: 10,
                period: Duration::from_secs(1)
            })
        );
        assert_eq!(r("100/min").map(|x| x.period.as_secs()), Some(60));
        assert_eq!(r("30/5min").map(|x| x.period.as_secs()), Some(300));
        assert_eq!(r("5_000_000/month").map(|x| x.amount), Some(5_000_000));
        assert_eq!(r(""), None);
        assert_eq!(r("off"), None);
        for bad in ["10", "x/s", "10/fortnight", "0/s", "10/0s"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gcra_admits_a_burst_then_paces() {
        // 10 per second: T = 100 ms.
        let (t, p) = (100_000, 1_000_000);
        let mut tat = 0;
        for _ in 0..10 {
            tat = gcra_step(tat, 0, t, p, 1).unwrap_or(u64::MAX);
        }
        assert_eq!(tat, 1_000_000);
        assert_eq!(gcra_step(tat, 0, t, p, 1), Err((100_000, false)));
        // 100 ms later one more fits.
        assert!(gcra_step(tat, 100_000, t, p, 1).is_ok());
        // A cost above the whole limit never fits.
        assert_eq!(gcra_step(0, 0, t, p, 11).map_err(|e| e.1), Err(true));
        assert_eq!(gcra_status(1_000_000, 0, t, p), (0, 1));
        assert_eq!(gcra_status(0, 0, t, p), (10, 0));
    }
}
