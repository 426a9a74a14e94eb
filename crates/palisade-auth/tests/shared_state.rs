//! Revocations through the shared state: a logout is seen by another service instance on the
//! same shared state (as replicas on one Redis), and when the shared state cannot answer,
//! access tokens are refused (fail closed) rather than accepted unchecked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_auth::{AuthRepos, AuthService, AuthSettings, CreateUser, KeyRing};
use palisade_core::access::RoleRegistry;
use palisade_core::auth_api::{ClientInfo, IdentityService, LoginOutcome};
use palisade_core::ids::DEFAULT_TENANT;
use palisade_core::shared::{ConfigTopic, LocalShared, SharedState};
use palisade_core::{CoreError, CoreResult};
use palisade_store::Store;
use tokio::sync::broadcast;

/// A shared state whose connection can be cut.
struct Flaky {
    inner: LocalShared,
    down: AtomicBool,
}

impl Flaky {
    fn check(&self) -> CoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(CoreError::SharedUnavailable("connection refused".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl SharedState for Flaky {
    async fn put_once(&self, key: &str, value: &[u8], ttl: Duration) -> CoreResult<()> {
        self.check()?;
        self.inner.put_once(key, value, ttl).await
    }
    async fn take(&self, key: &str) -> CoreResult<Option<Vec<u8>>> {
        self.check()?;
        self.inner.take(key).await
    }
    async fn deny(&self, jti: &str, ttl: Duration) -> CoreResult<()> {
        self.check()?;
        self.inner.deny(jti, ttl).await
    }
    async fn is_denied(&self, jti: &str) -> CoreResult<bool> {
        self.check()?;
        self.inner.is_denied(jti).await
    }
    async fn publish(&self, topic: ConfigTopic) -> CoreResult<()> {
        self.check()?;
        self.inner.publish(topic).await
    }
    fn subscribe(&self) -> broadcast::Receiver<ConfigTopic> {
        self.inner.subscribe()
    }
    fn is_shared(&self) -> bool {
        true
    }
    async fn ping(&self) -> CoreResult<()> {
        self.check()
    }
}

fn service(store: &Store, keys: &Arc<KeyRing>, shared: Arc<dyn SharedState>) -> AuthService {
    let repos = AuthRepos {
        users: Arc::new(store.clone()),
        tenants: Arc::new(store.clone()),
        tokens: Arc::new(store.clone()),
        api_keys: Arc::new(store.clone()),
        links: Arc::new(store.clone()),
        events: Arc::new(store.clone()),
        invites: Arc::new(store.clone()),
    };
    AuthService::new(
        repos,
        keys.clone(),
        Arc::new(RoleRegistry::default()),
        AuthSettings::default(),
    )
    .unwrap()
    .with_shared(shared)
}

const PW: &str = "Marble-Harvest-Comet-2207";

#[tokio::test]
async fn revocations_are_shared_and_fail_closed() {
    let store = Store::open_in_memory().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(KeyRing::load_or_create(dir.path(), "palisade", "palisade").unwrap());
    let shared = Arc::new(Flaky {
        inner: LocalShared::new(),
        down: AtomicBool::new(false),
    });
    let a = service(&store, &keys, shared.clone());
    let b = service(&store, &keys, shared.clone());
    a.create_user(CreateUser::local(DEFAULT_TENANT, "erin", PW, "admin"))
        .await
        .unwrap();
    let c = ClientInfo::default();
    let token = match a.login(None, "erin", PW, &c).await.unwrap() {
        LoginOutcome::Tokens(t) => t.access_token,
        LoginOutcome::MfaRequired { .. } => panic!("no MFA here"),
    };
    let who = b.authenticate(&token, &c).await.unwrap();

    // The shared state is down: the token is refused, with the cause, not accepted unchecked.
    shared.down.store(true, Ordering::SeqCst);
    match b.authenticate(&token, &c).await {
        Err(CoreError::SharedUnavailable(_)) => {}
        other => panic!("expected a fail-closed refusal, got {other:?}"),
    }
    // A logout that cannot reach it says so, yet the session is ended in the database, which
    // every replica reads: once the shared state is back, the token is refused there.
    assert!(matches!(
        a.logout(None, Some(&who)).await,
        Err(CoreError::SharedUnavailable(_))
    ));
    shared.down.store(false, Ordering::SeqCst);
    assert!(matches!(
        b.authenticate(&token, &c).await,
        Err(CoreError::Unauthenticated { .. })
    ));

    // A logout that reaches it denies the token id on every instance.
    let token = match a.login(None, "erin", PW, &c).await.unwrap() {
        LoginOutcome::Tokens(t) => t.access_token,
        LoginOutcome::MfaRequired { .. } => panic!("no MFA here"),
    };
    let who = b.authenticate(&token, &c).await.unwrap();
    a.logout(None, Some(&who)).await.unwrap();
    assert!(shared.inner.is_denied(&who.token_id).await.unwrap());
    assert!(matches!(
        b.authenticate(&token, &c).await,
        Err(CoreError::Unauthenticated { .. })
    ));
}
