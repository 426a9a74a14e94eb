//! State shared between the async front (`LlamaEngine`) and the scheduler thread: admission
//! control (a bounded number of in-flight requests) and live statistics.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counters readable from any thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub running: AtomicBool,
    /// Requests accepted and not finished: active + queued (+ in preparation).
    pub in_flight: AtomicUsize,
    pub active: AtomicUsize,
    pub queued: AtomicUsize,
    pub kv_sequences_in_use: AtomicUsize,
    /// Moving average of a generation's duration, in milliseconds.
    avg_generation_ms: AtomicU64,
    /// `parallel + queue_capacity`.
    capacity: usize,
    parallel: usize,
}

impl Shared {
    pub fn new(parallel: usize, queue_capacity: usize) -> Self {
        Self {
            running: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            kv_sequences_in_use: AtomicUsize::new(0),
            avg_generation_ms: AtomicU64::new(0),
            capacity: parallel + queue_capacity,
            parallel: parallel.max(1),
        }
    }

    /// Takes one unit of capacity, or returns the suggested retry delay in seconds.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, u32> {
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if current >= self.capacity {
                return Err(self.retry_after_secs(current));
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Permit(Arc::clone(self))),
                Err(actual) => current = actual,
            }
        }
    }

    /// Rough time until a slot frees up: waves of `parallel` generations of average length.
    fn retry_after_secs(&self, in_flight: usize) -> u32 {
        let avg_ms = self.avg_generation_ms.load(Ordering::Relaxed).max(1000);
        let waves = (in_flight.saturating_sub(self.parallel) / self.parallel + 1) as u64;
        let secs = (avg_ms * waves).div_ceil(1000);
        u32::try_from(secs.clamp(1, 60)).unwrap_or(60)
    }

    pub fn record_duration(&self, elapsed: Duration) {
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let old = self.avg_generation_ms.load(Ordering::Relaxed);
        let new = if old == 0 { ms } else { (old * 7 + ms) / 8 };
        self.avg_generation_ms.store(new, Ordering::Relaxed);
    }
}

/// One unit of engine capacity; released when dropped (request finished, cancelled or refused).
#[derive(Debug)]
pub(crate) struct Permit(Arc<Shared>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_bounded_and_released() {
        let shared = Arc::new(Shared::new(1, 1));
        let a = shared.try_acquire().ok();
        let b = shared.try_acquire().ok();
        assert!(a.is_some() && b.is_some());
        let retry = shared.try_acquire().err();
        assert!(matches!(retry, Some(s) if (1..=60).contains(&s)));
        drop(a);
        assert!(shared.try_acquire().is_ok());
        drop(b);
        assert_eq!(shared.in_flight.load(Ordering::SeqCst), 0);
    }
}
