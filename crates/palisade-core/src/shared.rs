//! State every replica must see the same way: single-use tickets, the ids of access tokens that
//! were revoked before they expire, and notices that an administrator changed configuration kept
//! in the database (model registry, guard and limit policies), so every replica reloads it.
//!
//! One process keeps it in memory ([`LocalShared`]); with `redis.url` it lives in Redis (the
//! `palisade` crate's adapter), so logging out on one replica stops the token on all of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::CoreResult;

/// What an administrator changed: every replica reloads that part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigTopic {
    Models,
    GuardPolicies,
    LimitPolicies,
}

impl ConfigTopic {
    pub const ALL: [ConfigTopic; 3] = [
        ConfigTopic::Models,
        ConfigTopic::GuardPolicies,
        ConfigTopic::LimitPolicies,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConfigTopic::Models => "models",
            ConfigTopic::GuardPolicies => "guard_policies",
            ConfigTopic::LimitPolicies => "limit_policies",
        }
    }

    pub fn parse(s: &str) -> Option<ConfigTopic> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The shared state's operations. Errors are [`crate::CoreError::SharedUnavailable`]: callers
/// that guard security (revocation, tickets) fail closed on them.
#[async_trait]
pub trait SharedState: Send + Sync + 'static {
    /// Keeps `value` under `key` for `ttl`; [`take`](Self::take) gets it once.
    async fn put_once(&self, key: &str, value: &[u8], ttl: Duration) -> CoreResult<()>;
    /// Takes the value of `key` out (a second take finds nothing); `None` when unknown or expired.
    async fn take(&self, key: &str) -> CoreResult<Option<Vec<u8>>>;
    /// Marks the access token `jti` as revoked for `ttl` (its remaining lifetime, at least).
    async fn deny(&self, jti: &str, ttl: Duration) -> CoreResult<()>;
    /// Whether `jti` was revoked.
    async fn is_denied(&self, jti: &str) -> CoreResult<bool>;
    /// Tells every replica, this one included, that `topic` changed.
    async fn publish(&self, topic: ConfigTopic) -> CoreResult<()>;
    /// The notices [`publish`](Self::publish) sends, from every replica. After a lost connection
    /// to the shared store, every topic is announced once (notices may have been missed).
    fn subscribe(&self) -> broadcast::Receiver<ConfigTopic>;
    /// True when other processes see this state (Redis), false for this process's memory.
    fn is_shared(&self) -> bool;
    /// Answers when the shared store is reachable (`/readyz`).
    async fn ping(&self) -> CoreResult<()>;
}

/// Entries kept at most by [`LocalShared`]; beyond, expired ones are swept first.
const LOCAL_MAX: usize = 200_000;

/// [`SharedState`] in this process's memory (one replica, or tests).
pub struct LocalShared {
    values: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    denied: Mutex<HashMap<String, Instant>>,
    notices: broadcast::Sender<ConfigTopic>,
}

impl Default for LocalShared {
    fn default() -> Self {
        Self {
            values: Mutex::new(HashMap::new()),
            denied: Mutex::new(HashMap::new()),
            notices: broadcast::channel(64).0,
        }
    }
}

impl LocalShared {
    pub fn new() -> Self {
        Self::default()
    }
}

fn sweep<V>(map: &mut HashMap<String, V>, expiry: impl Fn(&V) -> Instant) -> CoreResult<()> {
    if map.len() >= LOCAL_MAX {
        let now = Instant::now();
        map.retain(|_, v| expiry(v) > now);
        if map.len() >= LOCAL_MAX {
            return Err(crate::CoreError::too_many(
                "too_many_pending",
                "too many single-use entries are waiting; try again shortly",
                30,
            ));
        }
    }
    Ok(())
}

#[async_trait]
impl SharedState for LocalShared {
    async fn put_once(&self, key: &str, value: &[u8], ttl: Duration) -> CoreResult<()> {
        let mut map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        sweep(&mut map, |v| v.1)?;
        map.insert(key.to_string(), (value.to_vec(), Instant::now() + ttl));
        Ok(())
    }

    async fn take(&self, key: &str) -> CoreResult<Option<Vec<u8>>> {
        let mut map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map
            .remove(key)
            .and_then(|(v, until)| (until > Instant::now()).then_some(v)))
    }

    async fn deny(&self, jti: &str, ttl: Duration) -> CoreResult<()> {
        let mut map = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        // A full deny list must not refuse a logout: sweep, and keep it even when still full.
        let _ = sweep(&mut map, |v| *v);
        map.insert(jti.to_string(), Instant::now() + ttl);
        Ok(())
    }

    async fn is_denied(&self, jti: &str) -> CoreResult<bool> {
        let map = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.get(jti).is_some_and(|until| *until > Instant::now()))
    }

    async fn publish(&self, topic: ConfigTopic) -> CoreResult<()> {
        // No receiver is not an error: nobody needs the notice.
        let _ = self.notices.send(topic);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<ConfigTopic> {
        self.notices.subscribe()
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn ping(&self) -> CoreResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn values_are_taken_once_and_expire() {
        let s = LocalShared::new();
        s.put_once("a", b"one", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(s.take("a").await.unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(s.take("a").await.unwrap(), None);
        s.put_once("b", b"two", Duration::from_millis(1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(s.take("b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn denied_ids_expire_and_notices_arrive() {
        let s = LocalShared::new();
        let mut rx = s.subscribe();
        assert!(!s.is_denied("j1").await.unwrap());
        s.deny("j1", Duration::from_secs(60)).await.unwrap();
        s.deny("j2", Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(s.is_denied("j1").await.unwrap());
        assert!(!s.is_denied("j2").await.unwrap());
        s.publish(ConfigTopic::GuardPolicies).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), ConfigTopic::GuardPolicies);
        for t in ConfigTopic::ALL {
            assert_eq!(ConfigTopic::parse(t.as_str()), Some(t));
        }
        assert_eq!(ConfigTopic::parse("users"), None);
    }
}
