//! Counters in this process (the default; one replica).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::{gcra_step, status_of, Adjust, Backend, Check, Decision, Dimension, LimitError};

#[derive(Debug, Clone, Copy)]
enum Cell {
    Tat(u64),
    Count(u64),
}

/// In-memory counters behind one lock (a decision touches a handful of keys).
pub struct MemoryBackend {
    cells: Mutex<HashMap<String, Cell>>,
    started: Instant,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self {
            cells: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn now(&self, given: Option<u64>) -> u64 {
        given.unwrap_or_else(|| {
            u64::try_from(self.started.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .saturating_add(1)
        })
    }

    /// Counters held (idle ones are dropped as the map grows).
    pub fn len(&self) -> usize {
        self.cells.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait::async_trait]
impl Backend for MemoryBackend {
    async fn acquire(&self, checks: &[Check], now_us: Option<u64>) -> Result<Decision, LimitError> {
        let now = self.now(now_us);
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        if cells.len() > 100_000 {
            // A rate counter whose TAT has passed is the same as no counter.
            cells.retain(|_, c| match c {
                Cell::Tat(t) => *t > now,
                Cell::Count(n) => *n > 0,
            });
        }
        // First decide, then charge: all or nothing.
        let mut next = Vec::with_capacity(checks.len());
        for (i, c) in checks.iter().enumerate() {
            match c.dimension {
                Dimension::Concurrent => {
                    let n = match cells.get(&c.key) {
                        Some(Cell::Count(n)) => *n,
                        _ => 0,
                    };
                    if n.saturating_add(c.cost) > c.amount {
                        return Ok(Decision::Denied {
                            index: i,
                            key: c.key.clone(),
                            amount: c.amount,
                            retry_after: std::time::Duration::from_secs(1),
                            impossible: c.cost > c.amount,
                        });
                    }
                    next.push(Cell::Count(n + c.cost));
                }
                _ => {
                    let tat = match cells.get(&c.key) {
                        Some(Cell::Tat(t)) => *t,
                        _ => 0,
                    };
                    let (interval, period) = c.gcra();
                    match gcra_step(tat, now, interval, period, c.cost) {
                        Ok(t) => next.push(Cell::Tat(t)),
                        Err((wait, impossible)) => {
                            return Ok(Decision::Denied {
                                index: i,
                                key: c.key.clone(),
                                amount: c.amount,
                                retry_after: std::time::Duration::from_micros(wait),
                                impossible,
                            })
                        }
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(checks.len());
        for (c, cell) in checks.iter().zip(next) {
            cells.insert(c.key.clone(), cell);
            let (Cell::Count(v) | Cell::Tat(v)) = cell;
            out.push(status_of(c, v, now));
        }
        Ok(Decision::Allowed(out))
    }

    async fn adjust(&self, changes: &[Adjust], now_us: Option<u64>) -> Result<(), LimitError> {
        let now = self.now(now_us);
        let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
        for Adjust {
            check,
            amount,
            charge,
        } in changes
        {
            let (cur, amount) = (cells.get(&check.key).copied(), *amount);
            let (interval, _) = check.gcra();
            let next = match (check.dimension, cur, *charge) {
                (Dimension::Concurrent, Some(Cell::Count(n)), true) => {
                    Some(Cell::Count(n.saturating_add(amount)))
                }
                (Dimension::Concurrent, _, true) => Some(Cell::Count(amount)),
                (Dimension::Concurrent, Some(Cell::Count(n)), false) => {
                    Some(Cell::Count(n.saturating_sub(amount))).filter(|_| n > amount)
                }
                (Dimension::Concurrent, _, false) => None,
                (_, cur, true) => {
                    let tat = match cur {
                        Some(Cell::Tat(t)) => t,
                        _ => 0,
                    };
                    Some(Cell::Tat(
                        tat.max(now).saturating_add(interval.saturating_mul(amount)),
                    ))
                }
                (_, Some(Cell::Tat(t)), false) => {
                    let back = t.saturating_sub(interval.saturating_mul(amount));
                    Some(Cell::Tat(back)).filter(|_| back > now)
                }
                (_, _, false) => None,
            };
            match next {
                Some(cell) => cells.insert(check.key.clone(), cell),
                None => cells.remove(&check.key),
            };
        }
        Ok(())
    }
}
