//! Identity tables on a real SQLite file: users admin operations, login state, TOTP replay
//! guard, recovery codes, login sessions, API keys, tenants, external links and events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_core::access::RoleName;
use palisade_core::entities::{NewUser, User};
use palisade_core::identity::{
    ApiKey, AuthSession, LoginState, SecurityEvent, SecurityEventKind, UserQuery, UserUpdate,
};
use palisade_core::ids::{ApiKeyId, TenantId, TokenFamilyId, DEFAULT_TENANT};
use palisade_core::ports::{
    ApiKeyRepository, ConsumeOutcome, ExternalIdentityRepository, RefreshTokenRecord,
    RefreshTokenRepository, SecurityEventSink, TenantRepository, UserRepository,
};
use palisade_core::CoreError;
use palisade_store::Store;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    // As the server opens it: sealed TOTP secrets and content.
    let s = palisade_store::testing::store_at(&dir.path().join("t.db"))
        .await
        .unwrap()
        .with_master_keys(vec![palisade_store::MasterKey::generate().unwrap()], None);
    (dir, s)
}

async fn user_in(s: &Store, tenant: TenantId, name: &str, email: Option<&str>) -> User {
    s.create_user(NewUser {
        tenant_id: tenant,
        username: name.into(),
        email: email.map(String::from),
        password_hash: "$argon2id$x".into(),
        role: RoleName::user(),
        must_change_password: false,
        auth_source: "local".into(),
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn admin_user_operations_and_tenant_scope() {
    let (_d, s) = store().await;
    let acme = s.create_tenant("acme").await.unwrap();
    assert!(matches!(
        s.create_tenant("acme").await,
        Err(CoreError::Conflict(_))
    ));
    let a = user_in(&s, DEFAULT_TENANT, "alice", Some("alice@x.test")).await;
    user_in(&s, DEFAULT_TENANT, "bob_1", None).await;
    // The same name in another tenant is a different account.
    let a2 = user_in(&s, acme.id, "alice", None).await;
    assert_ne!(a.id, a2.id);
    // A user in an unknown tenant is refused by the foreign key.
    let ghost = s
        .create_user(NewUser {
            tenant_id: TenantId::new(),
            username: "x".into(),
            email: None,
            password_hash: "h".into(),
            role: RoleName::user(),
            must_change_password: false,
            auth_source: "local".into(),
        })
        .await;
    assert!(ghost.is_err());

    let q = |search: Option<&str>| UserQuery {
        search: search.map(String::from),
        limit: 10,
        offset: 0,
    };
    let (list, total) = s.list_users(Some(DEFAULT_TENANT), &q(None)).await.unwrap();
    assert_eq!((list.len(), total), (2, 2));
    let (list, _) = s
        .list_users(Some(DEFAULT_TENANT), &q(Some("x.test")))
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    // LIKE wildcards in the search are literal.
    let (list, _) = s
        .list_users(Some(DEFAULT_TENANT), &q(Some("%")))
        .await
        .unwrap();
    assert!(list.is_empty());
    let (list, _) = s
        .list_users(Some(DEFAULT_TENANT), &q(Some("b_1")))
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    let (_, all) = s.list_users(None, &q(None)).await.unwrap();
    assert_eq!(all, 3);

    // Updates are scoped: the wrong tenant changes nothing.
    let upd = UserUpdate {
        role: Some(RoleName::admin()),
        ..Default::default()
    };
    assert!(s.update_user(acme.id, a.id, &upd).await.unwrap().is_none());
    let after = s
        .update_user(DEFAULT_TENANT, a.id, &upd)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.role, RoleName::admin());
    assert_eq!(after.email.as_deref(), Some("alice@x.test"));
    let cleared = s
        .update_user(
            DEFAULT_TENANT,
            a.id,
            &UserUpdate {
                email: Some(None),
                is_active: Some(false),
                must_change_password: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(cleared.email.is_none() && !cleared.is_active && cleared.must_change_password);

    // Login state and unlock.
    s.set_login_state(
        DEFAULT_TENANT,
        a.id,
        LoginState {
            failed_logins: 100,
            locked_until: 99,
            hard_locked: true,
            last_login_at: None,
        },
    )
    .await
    .unwrap();
    let locked = s.find_by_id(DEFAULT_TENANT, a.id).await.unwrap().unwrap();
    assert!(locked.hard_locked && locked.failed_logins == 100);
    let unlocked = s
        .update_user(
            DEFAULT_TENANT,
            a.id,
            &UserUpdate {
                unlock: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert!(!unlocked.hard_locked && unlocked.failed_logins == 0 && unlocked.locked_until == 0);

    // Delete is scoped and cascades to tokens and keys.
    assert!(!s.delete_user(acme.id, a.id).await.unwrap());
    assert!(s.delete_user(DEFAULT_TENANT, a.id).await.unwrap());
    assert!(s.find_by_id(DEFAULT_TENANT, a.id).await.unwrap().is_none());

    // Tenants.
    assert!(s.set_tenant_active(acme.id, false).await.unwrap());
    assert!(!s.get_tenant(acme.id).await.unwrap().unwrap().is_active);
    assert_eq!(
        s.find_tenant_by_name("acme").await.unwrap().unwrap().id,
        acme.id
    );
    assert_eq!(s.list_tenants().await.unwrap().len(), 2);
    assert!(!s.set_tenant_active(TenantId::new(), true).await.unwrap());
}

#[tokio::test]
async fn totp_steps_are_single_use_and_recovery_codes_once() {
    let (_d, s) = store().await;
    let a = user_in(&s, DEFAULT_TENANT, "alice", None).await;
    s.set_totp(DEFAULT_TENANT, a.id, Some("JBSWY3DPEHPK3PXP"), true)
        .await
        .unwrap();
    let u = s.find_by_id(DEFAULT_TENANT, a.id).await.unwrap().unwrap();
    assert!(u.totp_enabled);
    assert_eq!(u.totp_secret.as_deref(), Some("JBSWY3DPEHPK3PXP"));
    assert!(s.claim_totp_step(DEFAULT_TENANT, a.id, 100).await.unwrap());
    // Replay of the same step, or an older one, is refused.
    assert!(!s.claim_totp_step(DEFAULT_TENANT, a.id, 100).await.unwrap());
    assert!(!s.claim_totp_step(DEFAULT_TENANT, a.id, 99).await.unwrap());
    assert!(s.claim_totp_step(DEFAULT_TENANT, a.id, 101).await.unwrap());

    s.set_recovery_codes(DEFAULT_TENANT, a.id, &["h1".into(), "h2".into()])
        .await
        .unwrap();
    assert!(s
        .use_recovery_code(DEFAULT_TENANT, a.id, "h1")
        .await
        .unwrap());
    assert!(!s
        .use_recovery_code(DEFAULT_TENANT, a.id, "h1")
        .await
        .unwrap());
    assert!(!s
        .use_recovery_code(DEFAULT_TENANT, a.id, "nope")
        .await
        .unwrap());
    // Replacing the codes voids the old ones.
    s.set_recovery_codes(DEFAULT_TENANT, a.id, &["h3".into()])
        .await
        .unwrap();
    assert!(!s
        .use_recovery_code(DEFAULT_TENANT, a.id, "h2")
        .await
        .unwrap());
    assert!(s
        .use_recovery_code(DEFAULT_TENANT, a.id, "h3")
        .await
        .unwrap());
}

#[tokio::test]
async fn login_sessions_list_and_revoke() {
    let (_d, s) = store().await;
    let a = user_in(&s, DEFAULT_TENANT, "alice", None).await;
    let b = user_in(&s, DEFAULT_TENANT, "bob", None).await;
    let mk = |user: &User| AuthSession {
        id: TokenFamilyId::new(),
        tenant_id: DEFAULT_TENANT,
        user_id: user.id,
        created_at: 1,
        last_used_at: 1,
        expires_at: 10_000,
        user_agent: Some("test".into()),
        ip: Some("127.0.0.1".into()),
        revoked: false,
    };
    let s1 = mk(&a);
    let s2 = mk(&a);
    s.create_auth_session(&s1).await.unwrap();
    s.create_auth_session(&s2).await.unwrap();
    let rec = |hash: &str, fam: TokenFamilyId| RefreshTokenRecord {
        token_hash: hash.into(),
        family_id: fam,
        tenant_id: DEFAULT_TENANT,
        user_id: a.id,
        created_at: 0,
        expires_at: 5_000,
        family_expires_at: 10_000,
        used_at: None,
        revoked: false,
    };
    s.insert(rec("t1", s1.id)).await.unwrap();
    s.insert(rec("t2", s2.id)).await.unwrap();
    assert_eq!(
        s.list_auth_sessions(DEFAULT_TENANT, a.id, 5)
            .await
            .unwrap()
            .len(),
        2
    );
    // Refresh bumps last use.
    assert!(matches!(
        s.consume("t1", 7).await.unwrap(),
        ConsumeOutcome::Consumed(_)
    ));
    assert_eq!(
        s.get_auth_session(s1.id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        7
    );
    // Bob cannot revoke Alice's session.
    assert!(!s
        .revoke_auth_session(DEFAULT_TENANT, b.id, s2.id)
        .await
        .unwrap());
    assert!(s
        .revoke_auth_session(DEFAULT_TENANT, a.id, s2.id)
        .await
        .unwrap());
    assert!(s.get_auth_session(s2.id).await.unwrap().unwrap().revoked);
    assert!(!matches!(
        s.consume("t2", 8).await.unwrap(),
        ConsumeOutcome::Consumed(_)
    ));
    assert_eq!(
        s.list_auth_sessions(DEFAULT_TENANT, a.id, 8)
            .await
            .unwrap()
            .len(),
        1
    );
    // Reuse of a rotated token revokes its session too.
    assert!(matches!(
        s.consume("t1", 9).await.unwrap(),
        ConsumeOutcome::Reused { .. }
    ));
    assert!(s.get_auth_session(s1.id).await.unwrap().unwrap().revoked);
    // Logout everywhere.
    let s3 = mk(&a);
    s.create_auth_session(&s3).await.unwrap();
    s.revoke_user(DEFAULT_TENANT, a.id).await.unwrap();
    assert!(s
        .list_auth_sessions(DEFAULT_TENANT, a.id, 8)
        .await
        .unwrap()
        .is_empty());
    // Expired sessions are not listed.
    let mut old = mk(&b);
    old.expires_at = 5;
    s.create_auth_session(&old).await.unwrap();
    assert!(s
        .list_auth_sessions(DEFAULT_TENANT, b.id, 8)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn api_keys_links_and_events() {
    let (_d, s) = store().await;
    let a = user_in(&s, DEFAULT_TENANT, "alice", None).await;
    let b = user_in(&s, DEFAULT_TENANT, "bob", None).await;
    let key = ApiKey {
        id: ApiKeyId::new(),
        tenant_id: DEFAULT_TENANT,
        user_id: a.id,
        name: "ci".into(),
        prefix: "pk_abcdefgh".into(),
        key_hash: "hash".into(),
        scopes: vec!["chat:send".into()],
        models: Some(vec!["m1".into()]),
        expires_at: None,
        last_used_at: None,
        created_at: 1,
        revoked: false,
        store_conversations: true,
    };
    s.insert_key(&key).await.unwrap();
    // Prefixes are unique.
    assert!(s
        .insert_key(&ApiKey {
            id: ApiKeyId::new(),
            ..key.clone()
        })
        .await
        .is_err());
    assert_eq!(
        s.find_key_by_prefix("pk_abcdefgh").await.unwrap().unwrap(),
        key
    );
    assert!(s.list_keys(DEFAULT_TENANT, b.id).await.unwrap().is_empty());
    assert_eq!(s.list_keys(DEFAULT_TENANT, a.id).await.unwrap().len(), 1);
    assert!(!s.revoke_key(DEFAULT_TENANT, b.id, key.id).await.unwrap());
    s.touch_key(key.id, 42).await.unwrap();
    assert!(s.revoke_key(DEFAULT_TENANT, a.id, key.id).await.unwrap());
    let k = s.find_key_by_prefix("pk_abcdefgh").await.unwrap().unwrap();
    assert!(k.revoked);
    assert_eq!(k.last_used_at, Some(42));

    s.link("oidc:https://idp", "sub-1", DEFAULT_TENANT, a.id)
        .await
        .unwrap();
    assert_eq!(
        s.find_link("oidc:https://idp", "sub-1").await.unwrap(),
        Some((DEFAULT_TENANT, a.id))
    );
    assert!(s
        .link("oidc:https://idp", "sub-1", DEFAULT_TENANT, b.id)
        .await
        .is_err());
    assert!(s.find_link("ldap", "sub-1").await.unwrap().is_none());

    let other = s.create_tenant("other").await.unwrap();
    s.record(
        SecurityEvent::new(SecurityEventKind::LoginFailure)
            .user(DEFAULT_TENANT, a.id)
            .ip(Some("10.0.0.1".into()))
            .detail(serde_json::json!({"reason": "x"})),
    )
    .await
    .unwrap();
    s.record(SecurityEvent::new(SecurityEventKind::TenantCreated).user(other.id, b.id))
        .await
        .unwrap();
    let mine = s.recent_events(Some(DEFAULT_TENANT), 10).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].kind, SecurityEventKind::LoginFailure);
    assert_eq!(mine[0].detail["reason"], "x");
    assert_eq!(s.recent_events(None, 10).await.unwrap().len(), 2);
}
