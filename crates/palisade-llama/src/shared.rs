//! State shared between the async front (`LlamaEngine`) and the scheduler thread: admission
//! control (a bounded number of in-flight requests) and live statistics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// What one tenant may hold of `capacity`.
    per_tenant: usize,
    /// Requests in flight per tenant.
    tenants: Mutex<HashMap<String, usize>>,
}

impl Shared {
    pub fn new(parallel: usize, queue_capacity: usize, tenant_share_percent: usize) -> Self {
        let capacity = parallel + queue_capacity;
        let per_tenant = (capacity * tenant_share_percent.clamp(1, 100))
            .div_ceil(100)
            .max(parallel);
        Self {
            running: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            kv_sequences_in_use: AtomicUsize::new(0),
            avg_generation_ms: AtomicU64::new(0),
            capacity,
            parallel: parallel.max(1),
            per_tenant,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one unit of capacity for `tenant`, or returns the suggested retry delay in
    /// seconds (the engine is full, or the tenant holds its whole share).
    pub fn try_acquire(self: &Arc<Self>, tenant: &str) -> Result<Permit, u32> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.in_flight.load(Ordering::Acquire);
        if current >= self.capacity {
            return Err(self.retry_after_secs(current));
        }
        let held = tenants.get(tenant).copied().unwrap_or(0);
        if held >= self.per_tenant {
            return Err(self.retry_after_secs(held));
        }
        tenants.insert(tenant.to_string(), held + 1);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(Permit {
            shared: Arc::clone(self),
            tenant: tenant.to_string(),
        })
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
pub(crate) struct Permit {
    shared: Arc<Shared>,
    tenant: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut tenants = self
            .shared
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = tenants.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                tenants.remove(&self.tenant);
            }
        }
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_bounded_and_released() {
        let shared = Arc::new(Shared::new(1, 1, 100));
        let a = shared.try_acquire("t").ok();
        let b = shared.try_acquire("t").ok();
        assert!(a.is_some() && b.is_some());
        let retry = shared.try_acquire("t").err();
        assert!(matches!(retry, Some(s) if (1..=60).contains(&s)));
        drop(a);
        assert!(shared.try_acquire("t").is_ok());
        drop(b);
        assert_eq!(shared.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn one_tenant_cannot_take_the_whole_capacity() {
        // 2 slots + 8 queued, half each: a flood from `a` stops at 5 and `b` still gets in.
        let shared = Arc::new(Shared::new(2, 8, 50));
        let held: Vec<Permit> = (0..5)
            .filter_map(|_| shared.try_acquire("a").ok())
            .collect();
        assert_eq!(held.len(), 5);
        assert!(shared.try_acquire("a").is_err());
        let b: Vec<Permit> = (0..5)
            .filter_map(|_| shared.try_acquire("b").ok())
            .collect();
        assert_eq!(b.len(), 5);
        // Full: nobody else gets in.
        assert!(shared.try_acquire("c").is_err());
        drop(held);
        assert!(shared.try_acquire("a").is_ok());
        assert!(shared.tenants.lock().map(|t| t.len()).unwrap_or(0) <= 2);
    }
}
