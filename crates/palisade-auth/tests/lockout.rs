//! The hard lock after 100 consecutive failures, the admin unlock, and the bcrypt upgrade,
//! through the service on a real (in-memory SQLite) store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use palisade_auth::{AuthRepos, AuthService, AuthSettings, CreateUser, KeyRing};
use palisade_core::access::{Grant, RoleRegistry, UsersManage};
use palisade_core::auth_api::{
    AdminService, AdminUserPatch, ClientInfo, IdentityService, LoginOutcome,
};
use palisade_core::identity::LoginState;
use palisade_core::ids::DEFAULT_TENANT;
use palisade_core::ports::UserRepository;
use palisade_core::CoreError;
use palisade_store::Store;

async fn service() -> (Store, AuthService, tempfile::TempDir) {
    let store = Store::open_in_memory().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyRing::load_or_create(dir.path(), "palisade", "palisade").unwrap();
    let repos = AuthRepos {
        users: Arc::new(store.clone()),
        tenants: Arc::new(store.clone()),
        tokens: Arc::new(store.clone()),
        api_keys: Arc::new(store.clone()),
        links: Arc::new(store.clone()),
        events: Arc::new(store.clone()),
        invites: Arc::new(store.clone()),
    };
    let svc = AuthService::new(
        repos,
        Arc::new(keys),
        Arc::new(RoleRegistry::default()),
        AuthSettings::default(),
    )
    .unwrap();
    (store, svc, dir)
}

const PW: &str = "Marble-Harvest-Comet-2207";

#[tokio::test]
async fn hundred_failures_lock_until_an_admin_unlocks() {
    let (store, svc, _d) = service().await;
    let admin = svc
        .create_user(CreateUser::local(DEFAULT_TENANT, "root", PW, "admin"))
        .await
        .unwrap();
    let user = svc
        .create_user(CreateUser::local(DEFAULT_TENANT, "erin", PW, "user"))
        .await
        .unwrap();
    // 99 failures already on record (the back-off between them has passed).
    store
        .set_login_state(
            DEFAULT_TENANT,
            user.id,
            LoginState {
                failed_logins: 99,
                locked_until: 0,
                hard_locked: false,
                last_login_at: None,
            },
        )
        .await
        .unwrap();
    let c = ClientInfo::default();
    let r = svc.login(None, "erin", "Wrong-Guess-Tango-1189", &c).await;
    assert!(matches!(r, Err(CoreError::Unauthenticated { .. })));
    // The 100th failure locked the account: even the right password is refused.
    let r = svc.login(None, "erin", PW, &c).await;
    match r {
        Err(CoreError::TooManyRequests { code, .. }) => assert_eq!(code, "account_locked"),
        other => panic!("expected a lock, got {other:?}"),
    }
    let u = store
        .find_by_id(DEFAULT_TENANT, user.id)
        .await
        .unwrap()
        .unwrap();
    assert!(u.hard_locked && u.failed_logins == 100);
    // An administrator unlocks; the next login works and resets the count.
    let admin_p = match svc.login(None, "root", PW, &c).await.unwrap() {
        LoginOutcome::Tokens(t) => svc.authenticate(&t.access_token, &c).await.unwrap(),
        LoginOutcome::MfaRequired { .. } => unreachable!(),
    };
    let g = Grant::<UsersManage>::check(&admin_p).unwrap();
    svc.update_user(
        &g,
        None,
        user.id,
        AdminUserPatch {
            unlock: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        svc.login(None, "erin", PW, &c).await,
        Ok(LoginOutcome::Tokens(_))
    ));
    let u = store
        .find_by_id(DEFAULT_TENANT, user.id)
        .await
        .unwrap()
        .unwrap();
    assert!(!u.hard_locked && u.failed_logins == 0 && u.last_login_at.is_some());
    let _ = admin;
}

#[tokio::test]
async fn imported_bcrypt_hash_is_upgraded_on_login() {
    let (store, svc, _d) = service().await;
    let hash = bcrypt::hash("pass123", 4).unwrap();
    let u = svc
        .create_user(CreateUser {
            password: None,
            password_hash: Some(hash),
            skip_policy: true,
            ..CreateUser::local(DEFAULT_TENANT, "analyst1", "", "user")
        })
        .await
        .unwrap();
    assert!(u.password_hash.starts_with("$2"));
    let c = ClientInfo::default();
    assert!(svc.login(None, "analyst1", "pass124", &c).await.is_err());
    assert!(matches!(
        svc.login(None, "analyst1", "pass123", &c).await,
        Ok(LoginOutcome::Tokens(_))
    ));
    let after = store
        .find_by_id(DEFAULT_TENANT, u.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        after.password_hash.starts_with("$argon2id$"),
        "{}",
        after.password_hash
    );
    assert!(matches!(
        svc.login(None, "analyst1", "pass123", &c).await,
        Ok(LoginOutcome::Tokens(_))
    ));
}
