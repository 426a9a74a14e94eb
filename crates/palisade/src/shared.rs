//! The state replicas share, in Redis (`redis.url`): single-use WebSocket tickets, revoked
//! access-token ids and config-change notices (pub/sub). Without Redis it is this process's
//! memory ([`LocalShared`]).
//!
//! When Redis cannot be reached, revocation checks and ticket redemption fail closed (503
//! `shared_state_unavailable`); lost notices are made up for by announcing every topic when the
//! subscription comes back, and by the periodic reload in [`spawn_reloads`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use palisade_config::Config;
use palisade_core::guard_policies::GuardPolicies;
use palisade_core::limit_policies::LimitPolicies;
use palisade_core::models::ModelRegistry;
use palisade_core::shared::{ConfigTopic, LocalShared, SharedState};
use palisade_core::{CoreError, CoreResult};
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;

/// How long one Redis command may take before the caller gets an error.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Replicas re-read the admin-editable configuration this often even without a notice.
const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// [`SharedState`] in Redis, under a key prefix.
pub struct RedisShared {
    conn: ConnectionManager,
    prefix: String,
    notices: broadcast::Sender<ConfigTopic>,
}

fn unavailable(e: impl std::fmt::Display) -> CoreError {
    CoreError::SharedUnavailable(format!("Redis: {e}"))
}

impl RedisShared {
    /// Connects to `url` (reconnecting on its own later) and subscribes to the notices of
    /// replicas sharing `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<RedisShared> {
        let client = redis::Client::open(url)?;
        let conn = tokio::time::timeout(Duration::from_secs(5), client.get_connection_manager())
            .await
            .map_err(|_| anyhow::anyhow!("connecting to Redis timed out"))??;
        let notices = broadcast::channel(64).0;
        tokio::spawn(listen(client, format!("{prefix}config"), notices.clone()));
        Ok(RedisShared {
            conn,
            prefix: prefix.to_string(),
            notices,
        })
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> CoreResult<T> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut conn))
            .await
            .map_err(|_| unavailable("no answer in time"))?
            .map_err(unavailable)
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Receives the notices of every replica; after a lost subscription, announces every topic
/// once (notices sent meanwhile are lost with it).
async fn listen(client: redis::Client, channel: String, notices: broadcast::Sender<ConfigTopic>) {
    let mut first = true;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(channel.as_str()).await {
                Ok(()) => {
                    if !first {
                        tracing::info!("config notices from other replicas are back");
                        for t in ConfigTopic::ALL {
                            let _ = notices.send(t);
                        }
                    }
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let topic = msg
                            .get_payload::<String>()
                            .ok()
                            .and_then(|p| ConfigTopic::parse(&p));
                        if let Some(t) = topic {
                            let _ = notices.send(t);
                        }
                    }
                    tracing::warn!("lost the subscription to config notices; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "subscribing to config notices failed"),
            },
            Err(e) => tracing::warn!(error = %e, "connecting for config notices failed"),
        }
        first = false;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[async_trait::async_trait]
impl SharedState for RedisShared {
    async fn put_once(&self, key: &str, value: &[u8], ttl: Duration) -> CoreResult<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}{key}", self.prefix))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl));
        self.run::<()>(cmd).await
    }

    async fn take(&self, key: &str) -> CoreResult<Option<Vec<u8>>> {
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(format!("{}{key}", self.prefix));
        self.run::<Option<Vec<u8>>>(cmd).await
    }

    async fn deny(&self, jti: &str, ttl: Duration) -> CoreResult<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}deny:{jti}", self.prefix))
            .arg(1)
            .arg("PX")
            .arg(millis(ttl));
        self.run::<()>(cmd).await
    }

    async fn is_denied(&self, jti: &str) -> CoreResult<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(format!("{}deny:{jti}", self.prefix));
        Ok(self.run::<i64>(cmd).await? > 0)
    }

    async fn publish(&self, topic: ConfigTopic) -> CoreResult<()> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(format!("{}config", self.prefix))
            .arg(topic.as_str());
        self.run::<i64>(cmd).await.map(|_| ())
    }

    fn subscribe(&self) -> broadcast::Receiver<ConfigTopic> {
        self.notices.subscribe()
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn ping(&self) -> CoreResult<()> {
        self.run::<String>(redis::cmd("PING")).await.map(|_| ())
    }
}

/// Redis when `redis.url` is set, else this process's memory.
pub async fn open(cfg: &Config) -> anyhow::Result<Arc<dyn SharedState>> {
    match cfg.redis.resolved_url()? {
        Some(url) => {
            let shown = cfg.redis.display_url().unwrap_or_default();
            let shared = RedisShared::connect(&url, "palisade:")
                .await
                .map_err(|e| anyhow::anyhow!("shared state: Redis at {shown}: {e}"))?;
            tracing::info!(redis = %shown, "tickets, revocations and config notices are shared in Redis");
            Ok(Arc::new(shared))
        }
        None => Ok(Arc::new(LocalShared::new())),
    }
}

/// What a replica reloads when told that a part of its configuration changed.
pub struct Reloadable {
    pub models: Arc<ModelRegistry>,
    pub guard: Arc<GuardPolicies>,
    pub limits: Arc<LimitPolicies>,
}

impl Reloadable {
    async fn reload(&self, topic: ConfigTopic) {
        let done = match topic {
            ConfigTopic::Models => self.models.reload().await.map(|_| ()),
            ConfigTopic::GuardPolicies => self.guard.load().await.map(|_| ()),
            ConfigTopic::LimitPolicies => self.limits.load().await.map(|_| ()),
        };
        match done {
            Ok(()) => tracing::debug!(topic = topic.as_str(), "reloaded after a change"),
            Err(e) => tracing::warn!(topic = topic.as_str(), error = %e, "reloading failed"),
        }
    }
}

/// Reloads each part when a notice names it, and everything every [`RELOAD_EVERY`].
pub fn spawn_reloads(shared: &Arc<dyn SharedState>, parts: Reloadable) {
    let mut notices = shared.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                n = notices.recv() => match n {
                    Ok(topic) => parts.reload(topic).await,
                    // Too many notices at once: reload everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for t in ConfigTopic::ALL {
                            parts.reload(t).await;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    for t in ConfigTopic::ALL {
                        parts.reload(t).await;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The machine's Redis (as the limits tests use), under a prefix of this test's own.
    async fn redis() -> Option<(RedisShared, RedisShared)> {
        let url = "redis://127.0.0.1:6379";
        let prefix = format!("palisade-test:{}:", uuid_like());
        let a = RedisShared::connect(url, &prefix).await.ok()?;
        let b = RedisShared::connect(url, &prefix).await.ok()?;
        Some((a, b))
    }

    fn uuid_like() -> String {
        use rand::RngCore;
        let mut b = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut b);
        hex::encode(b)
    }

    #[tokio::test]
    async fn two_replicas_share_tickets_revocations_and_notices() {
        let Some((a, b)) = redis().await else {
            assert!(
                std::env::var("REQUIRE_TEST_POSTGRES").is_err(),
                "Redis must answer on 127.0.0.1:6379 in CI"
            );
            eprintln!("skipped: no Redis on 127.0.0.1:6379");
            return;
        };
        // A value put on one replica is taken once, on the other.
        a.put_once("t1", b"sealed", Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(b.take("t1").await.unwrap().as_deref(), Some(&b"sealed"[..]));
        assert_eq!(a.take("t1").await.unwrap(), None);
        // And it expires.
        a.put_once("t2", b"x", Duration::from_millis(50))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(b.take("t2").await.unwrap(), None);
        // A token revoked on one is revoked on the other.
        assert!(!b.is_denied("jti-1").await.unwrap());
        a.deny("jti-1", Duration::from_secs(60)).await.unwrap();
        assert!(b.is_denied("jti-1").await.unwrap());
        // A notice from one reaches both (the subscriptions may take a moment to start).
        let mut on_b = b.subscribe();
        let mut on_a = a.subscribe();
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                a.publish(ConfigTopic::LimitPolicies).await.unwrap();
                if let Ok(Ok(t)) =
                    tokio::time::timeout(Duration::from_millis(200), on_b.recv()).await
                {
                    return t;
                }
            }
        })
        .await
        .expect("the notice reached the other replica");
        assert_eq!(got, ConfigTopic::LimitPolicies);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(2), on_a.recv())
                .await
                .unwrap()
                .unwrap(),
            ConfigTopic::LimitPolicies
        );
        a.ping().await.unwrap();
        assert!(a.is_shared());
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_at_start() {
        // Nothing listens on port 1: the server does not start half-shared.
        assert!(RedisShared::connect("redis://127.0.0.1:1", "x:")
            .await
            .is_err());
    }
}
