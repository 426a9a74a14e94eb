//! The rows every authenticated request reads (user, API key, login session, tenant) are kept
//! for a moment in the process: a change made through the same store is seen by the very next
//! read, and a change made by another store on the same database (another replica) within
//! `HOT_TTL`. On SQLite, and on PostgreSQL when `TEST_POSTGRES_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use palisade_core::entities::{now_millis, User};
use palisade_core::identity::{ApiKey, AuthSession, UserUpdate};
use palisade_core::ids::{ApiKeyId, TokenFamilyId, DEFAULT_TENANT};
use palisade_core::ports::{
    ApiKeyRepository, RefreshTokenRepository, TenantRepository, UserRepository,
};
use palisade_store::testing::TestDb;
use palisade_store::{Store, HOT_TTL};

async fn user(s: &Store, name: &str) -> User {
    s.create_user(palisade_store::testing::new_user(DEFAULT_TENANT, name))
        .await
        .unwrap()
}

fn key_of(u: &User, prefix: &str) -> ApiKey {
    ApiKey {
        id: ApiKeyId::new(),
        tenant_id: u.tenant_id,
        user_id: u.id,
        name: "k".into(),
        prefix: prefix.into(),
        key_hash: "h".into(),
        scopes: vec!["chat:send".into()],
        models: None,
        expires_at: None,
        last_used_at: None,
        created_at: now_millis(),
        revoked: false,
        store_conversations: false,
    }
}

fn session_of(u: &User) -> AuthSession {
    let now = now_millis();
    AuthSession {
        id: TokenFamilyId::new(),
        tenant_id: u.tenant_id,
        user_id: u.id,
        created_at: now,
        last_used_at: now,
        expires_at: now + 3_600_000,
        user_agent: None,
        ip: None,
        revoked: false,
    }
}

#[tokio::test]
async fn a_change_through_this_store_is_seen_by_the_next_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(&dir.path().join("h.db")).await.unwrap();
    let s = db.open().await.unwrap();
    // A clone shares the copies, as every handle of the server does.
    let reader = s.clone();

    let u = user(&s, "ann").await;
    let k = key_of(&u, "pk_hot_1");
    s.insert_key(&k).await.unwrap();
    let a = session_of(&u);
    s.create_auth_session(&a).await.unwrap();
    let t = s.create_tenant("acme").await.unwrap();

    // Read twice: the second read is served from the copy.
    for _ in 0..2 {
        assert!(
            reader
                .find_by_id(DEFAULT_TENANT, u.id)
                .await
                .unwrap()
                .unwrap()
                .is_active
        );
        assert!(
            !reader
                .find_key_by_prefix("pk_hot_1")
                .await
                .unwrap()
                .unwrap()
                .revoked
        );
        assert!(
            !reader
                .get_auth_session(a.id)
                .await
                .unwrap()
                .unwrap()
                .revoked
        );
        assert!(reader.get_tenant(t.id).await.unwrap().unwrap().is_active);
    }

    let off = UserUpdate {
        is_active: Some(false),
        ..Default::default()
    };
    s.update_user(DEFAULT_TENANT, u.id, &off).await.unwrap();
    assert!(
        !reader
            .find_by_id(DEFAULT_TENANT, u.id)
            .await
            .unwrap()
            .unwrap()
            .is_active
    );

    assert!(s.revoke_key(DEFAULT_TENANT, u.id, k.id).await.unwrap());
    assert!(
        reader
            .find_key_by_prefix("pk_hot_1")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );

    assert!(s
        .revoke_auth_session(DEFAULT_TENANT, u.id, a.id)
        .await
        .unwrap());
    assert!(
        reader
            .get_auth_session(a.id)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );

    assert!(s.set_tenant_active(t.id, false).await.unwrap());
    assert!(!reader.get_tenant(t.id).await.unwrap().unwrap().is_active);

    // Ending every session of a user (a transaction of its own) is seen too.
    let b = session_of(&u);
    s.create_auth_session(&b).await.unwrap();
    assert!(
        !reader
            .get_auth_session(b.id)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    s.revoke_user(DEFAULT_TENANT, u.id).await.unwrap();
    assert!(
        reader
            .get_auth_session(b.id)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );

    // A deleted user is gone at once.
    assert!(s.delete_user(DEFAULT_TENANT, u.id).await.unwrap());
    assert!(reader
        .find_by_id(DEFAULT_TENANT, u.id)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn another_replica_sees_a_change_within_the_copy_lifetime() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(&dir.path().join("r.db")).await.unwrap();
    let a = db.open().await.unwrap();
    let b = db.open().await.unwrap();

    let u = user(&a, "bob").await;
    let k = key_of(&u, "pk_hot_2");
    a.insert_key(&k).await.unwrap();
    // A key made on A is usable on B at once (missing rows are never kept).
    assert!(b.find_key_by_prefix("pk_nothere").await.unwrap().is_none());
    assert!(
        !b.find_key_by_prefix("pk_hot_2")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(
        b.find_by_id(DEFAULT_TENANT, u.id)
            .await
            .unwrap()
            .unwrap()
            .is_active
    );

    let changed = Instant::now();
    assert!(a.revoke_key(DEFAULT_TENANT, u.id, k.id).await.unwrap());
    let off = UserUpdate {
        is_active: Some(false),
        ..Default::default()
    };
    a.update_user(DEFAULT_TENANT, u.id, &off).await.unwrap();
    loop {
        let revoked = b
            .find_key_by_prefix("pk_hot_2")
            .await
            .unwrap()
            .unwrap()
            .revoked;
        let inactive = !b
            .find_by_id(DEFAULT_TENANT, u.id)
            .await
            .unwrap()
            .unwrap()
            .is_active;
        if revoked && inactive {
            break;
        }
        assert!(
            changed.elapsed() < HOT_TTL + Duration::from_millis(300),
            "B still used its copies {:?} after the change on A",
            changed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("change on A seen on B after {:?}", changed.elapsed());
}
