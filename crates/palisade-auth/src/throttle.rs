//! Login throttling: exponential back-off per account after a few free failures, a hard lock
//! that only an administrator clears, and the same schedule for names that do not exist so the
//! answers never reveal which accounts are real.

use std::collections::HashMap;
use std::sync::Mutex;

use palisade_core::entities::Millis;

/// The back-off schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures allowed before any delay.
    pub free_failures: u32,
    /// Delay after the first counted failure; doubles with each further one.
    pub base_delay_secs: u64,
    pub max_delay_secs: u64,
    /// Consecutive failures that lock the account until an administrator unlocks it.
    pub hard_lock_after: u32,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            free_failures: 5,
            base_delay_secs: 1,
            max_delay_secs: 15 * 60,
            hard_lock_after: 100,
        }
    }
}

impl ThrottlePolicy {
    /// The state after one more failure: (failures, locked until, hard locked).
    pub fn after_failure(&self, failures: u32, now: Millis) -> (u32, Millis, bool) {
        let n = failures.saturating_add(1);
        if n >= self.hard_lock_after {
            return (n, now, true);
        }
        if n < self.free_failures {
            return (n, 0, false);
        }
        let exp = (n - self.free_failures).min(30);
        let delay = self
            .base_delay_secs
            .saturating_mul(1u64 << exp)
            .min(self.max_delay_secs);
        let until =
            now.saturating_add(i64::try_from(delay.saturating_mul(1000)).unwrap_or(i64::MAX));
        (n, until, false)
    }
}

/// Why a login is refused before the password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Back-off: wait this many seconds.
    Wait(u32),
    /// Locked until an administrator unlocks it.
    Locked,
}

/// Checks an account's stored state.
pub fn refusal(locked_until: Millis, hard_locked: bool, now: Millis) -> Option<Refusal> {
    if hard_locked {
        return Some(Refusal::Locked);
    }
    if locked_until > now {
        let secs = (locked_until - now + 999) / 1000;
        return Some(Refusal::Wait(u32::try_from(secs).unwrap_or(u32::MAX)));
    }
    None
}

#[derive(Debug, Clone, Copy, Default)]
struct Ghost {
    failures: u32,
    locked_until: Millis,
    hard_locked: bool,
    last_seen: Millis,
}

/// Failure counts for usernames that do not exist, kept in memory (bounded).
pub struct GhostAccounts {
    policy: ThrottlePolicy,
    map: Mutex<HashMap<String, Ghost>>,
    capacity: usize,
}

impl GhostAccounts {
    pub fn new(policy: ThrottlePolicy, capacity: usize) -> Self {
        Self {
            policy,
            map: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn key(username: &str) -> String {
        username.to_ascii_lowercase()
    }

    pub fn refusal(&self, username: &str, now: Millis) -> Option<Refusal> {
        let map = self.map.lock().ok()?;
        let g = map.get(&Self::key(username))?;
        refusal(g.locked_until, g.hard_locked, now)
    }

    pub fn fail(&self, username: &str, now: Millis) {
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= self.capacity && !map.contains_key(&Self::key(username)) {
            // Forget the entries idle longest (a day-old ghost no longer matters).
            let horizon = now - 24 * 3600 * 1000;
            map.retain(|_, g| g.last_seen > horizon && (g.hard_locked || g.locked_until > now));
            if map.len() >= self.capacity {
                return;
            }
        }
        let g = map.entry(Self::key(username)).or_default();
        let (n, until, hard) = self.policy.after_failure(g.failures, now);
        *g = Ghost {
            failures: n,
            locked_until: until,
            hard_locked: hard,
            last_seen: now,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule() {
        let p = ThrottlePolicy::default();
        let mut f = 0;
        let mut until = 0;
        for _ in 0..4 {
            let (n, u, h) = p.after_failure(f, 1_000);
            assert_eq!(u, 0);
            assert!(!h);
            f = n;
        }
        // The 5th failure starts the back-off: 1 s, then 2 s, 4 s, ...
        for expected in [1_000, 2_000, 4_000, 8_000] {
            let (n, u, _) = p.after_failure(f, 1_000);
            assert_eq!(u - 1_000, expected);
            f = n;
            until = u;
        }
        assert!(until > 0);
        // Capped at 15 minutes.
        let (_, u, h) = p.after_failure(60, 0);
        assert_eq!(u, 900_000);
        assert!(!h);
        // The 100th consecutive failure locks hard.
        let (n, _, h) = p.after_failure(99, 0);
        assert_eq!(n, 100);
        assert!(h);
        assert_eq!(refusal(0, true, 0), Some(Refusal::Locked));
        assert_eq!(refusal(2_500, false, 1_000), Some(Refusal::Wait(2)));
        assert_eq!(refusal(500, false, 1_000), None);
    }

    #[test]
    fn ghosts_follow_the_same_schedule() {
        let g = GhostAccounts::new(ThrottlePolicy::default(), 10);
        for _ in 0..5 {
            assert_eq!(g.refusal("Nobody", 0), None);
            g.fail("nobody", 0);
        }
        assert_eq!(g.refusal("NOBODY", 0), Some(Refusal::Wait(1)));
        assert_eq!(g.refusal("nobody", 5_000), None);
    }
}
