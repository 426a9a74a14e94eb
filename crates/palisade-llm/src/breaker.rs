//! A circuit breaker per upstream: after `threshold` consecutive failures the circuit opens
//! and calls fail fast (the router moves on to the fallback) for `cooldown`; then one probe
//! call is let through (half-open) and its outcome closes or re-opens the circuit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// What the breaker says about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// The circuit is open: fail fast.
    Rejected,
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        match self.state.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Asks to make a call now.
    pub fn admit(&self) -> Admission {
        let now = Instant::now();
        self.with(|s| match *s {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } if now >= until => {
                *s = State::HalfOpen { probing: true };
                Admission::Allowed
            }
            State::Open { .. } => Admission::Rejected,
            State::HalfOpen { probing: false } => {
                *s = State::HalfOpen { probing: true };
                Admission::Allowed
            }
            State::HalfOpen { probing: true } => Admission::Rejected,
        })
    }

    /// True when calls would fail fast right now (for listings; does not start a probe).
    pub fn is_open(&self) -> bool {
        let now = Instant::now();
        self.with(|s| match *s {
            State::Open { until } => now < until,
            _ => false,
        })
    }

    pub fn success(&self) {
        self.with(|s| *s = State::Closed { failures: 0 });
    }

    pub fn failure(&self) {
        let until = Instant::now() + self.cooldown;
        let threshold = self.threshold;
        self.with(|s| {
            *s = match *s {
                State::Closed { failures } if failures + 1 < threshold => State::Closed {
                    failures: failures + 1,
                },
                _ => State::Open { until },
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_recovers_through_a_probe() {
        let b = Breaker::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            assert_eq!(b.admit(), Admission::Allowed);
            b.failure();
        }
        assert!(!b.is_open());
        b.failure();
        assert!(b.is_open());
        assert_eq!(b.admit(), Admission::Rejected);
        std::thread::sleep(Duration::from_millis(60));
        // One probe at a time while half-open.
        assert_eq!(b.admit(), Admission::Allowed);
        assert_eq!(b.admit(), Admission::Rejected);
        b.failure();
        assert_eq!(b.admit(), Admission::Rejected);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Allowed);
        b.success();
        assert_eq!(b.admit(), Admission::Allowed);
        assert!(!b.is_open());
    }
}
