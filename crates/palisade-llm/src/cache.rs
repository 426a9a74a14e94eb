//! The response cache (off by default): exact-match answers for deterministic requests
//! (temperature 0 or a fixed seed). Keys hash the tenant, the model, every parameter and every
//! message, so two tenants never share an entry; the tenant is also part of the key's prefix.
//! Backends: an in-memory LRU with TTL (moka) or Redis (`SET … EX`), so replicas share it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_core::provider::{FinishReason, GenerationRequest, Usage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A cached answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The model that produced it (a fallback, perhaps).
    pub model: String,
    pub content: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub truncated_turns: u32,
}

enum Backend {
    Memory(moka::future::Cache<String, std::sync::Arc<CachedAnswer>>),
    Redis(redis::aio::ConnectionManager),
}

/// Hit and miss counts since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
}

pub struct ResponseCache {
    backend: Backend,
    ttl: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

impl ResponseCache {
    /// An in-memory LRU of at most `capacity` answers.
    pub fn memory(capacity: u64, ttl: Duration) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .build();
        Self::with(Backend::Memory(cache), ttl)
    }

    /// A Redis-backed cache shared by every replica.
    pub async fn redis(url: &str, ttl: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            redis::aio::ConnectionManager::new(client),
        )
        .await
        .map_err(|_| "connecting to redis timed out".to_string())?
        .map_err(|e| format!("connecting to redis: {e}"))?;
        Ok(Self::with(Backend::Redis(conn), ttl))
    }

    fn with(backend: Backend, ttl: Duration) -> Self {
        Self {
            backend,
            ttl,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }

    /// The cache key of a request, or `None` when the request must not be cached (sampled
    /// with randomness, or without a tenant scope).
    pub fn key(req: &GenerationRequest) -> Option<String> {
        let scope = req.cache_scope.as_deref()?;
        let p = &req.params;
        if p.temperature != 0.0 && p.seed.is_none() {
            return None;
        }
        let mut h = Sha256::new();
        let mut part = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        part(scope.as_bytes());
        part(req.model.as_bytes());
        part(&p.temperature.to_bits().to_le_bytes());
        part(&p.top_p.to_bits().to_le_bytes());
        part(&p.top_k.to_le_bytes());
        part(&p.seed.map_or(u64::MAX, u64::from).to_le_bytes());
        part(&p.max_tokens.to_le_bytes());
        for s in &p.stop {
            part(s.as_bytes());
        }
        part(b"messages");
        let canary = req.canary.as_deref().filter(|c| !c.is_empty());
        for m in &req.messages {
            part(m.role.as_str().as_bytes());
            match canary {
                Some(c) if m.content.contains(c) => {
                    part(m.content.replace(c, "\u{0}canary\u{0}").as_bytes())
                }
                _ => part(m.content.as_bytes()),
            }
        }
        let digest = hex::encode(h.finalize());
        Some(format!("palisade:cache:v1:{scope}:{digest}"))
    }

    pub async fn get(&self, key: &str) -> Option<CachedAnswer> {
        let found = match &self.backend {
            Backend::Memory(c) => c.get(key).await.map(|a| (*a).clone()),
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let asked = std::time::Instant::now();
                let got: Result<Option<String>, _> = tokio::time::timeout(
                    Duration::from_millis(500),
                    redis::cmd("GET").arg(key).query_async(&mut conn),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out")))
                });
                metrics::histogram!("palisade_redis_command_duration_seconds", "op" => "cache_get")
                    .record(asked.elapsed().as_secs_f64());
                match got {
                    Ok(Some(raw)) => serde_json::from_str(&raw).ok(),
                    Ok(None) => None,
                    Err(e) => {
                        self.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "response cache read failed");
                        None
                    }
                }
            }
        };
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!(
            "palisade_cache_requests_total",
            "result" => if found.is_some() { "hit" } else { "miss" }
        )
        .increment(1);
        found
    }

    pub async fn put(&self, key: String, answer: CachedAnswer) {
        match &self.backend {
            Backend::Memory(c) => c.insert(key, std::sync::Arc::new(answer)).await,
            Backend::Redis(conn) => {
                let Ok(raw) = serde_json::to_string(&answer) else {
                    return;
                };
                let mut conn = conn.clone();
                let r: Result<Result<(), redis::RedisError>, _> = tokio::time::timeout(
                    Duration::from_millis(500),
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(raw)
                        .arg("EX")
                        .arg(self.ttl.as_secs().max(1))
                        .query_async(&mut conn),
                )
                .await;
                if !matches!(r, Ok(Ok(()))) {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("response cache write failed");
                }
            }
        }
    }
}
