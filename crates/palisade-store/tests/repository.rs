//! The repository suite, run on a real SQLite database (file in a temp dir, WAL mode).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_core::access::RoleName;
use palisade_core::entities::{ChatSession, GenerationMeta, NewUser, SessionSort, StoredMessage};
use palisade_core::ids::{MessageId, SessionId, TenantId, TokenFamilyId, DEFAULT_TENANT};
use palisade_core::ports::{
    ChatRepository, ConsumeOutcome, RefreshTokenRecord, RefreshTokenRepository, UserRepository,
};
use palisade_core::provider::Role;
use palisade_core::CoreError;
use palisade_store::Store;

/// The store as the server opens it: content encrypted under a master key.
async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = palisade_store::testing::store_at(&dir.path().join("t.db"))
        .await
        .unwrap()
        .with_master_keys(vec![palisade_store::MasterKey::generate().unwrap()], None);
    (dir, s)
}

async fn user(s: &Store, name: &str) -> palisade_core::entities::User {
    s.create_user(palisade_store::testing::new_user(DEFAULT_TENANT, name))
        .await
        .unwrap()
}

fn msg(session: SessionId, role: Role, content: &str, at: i64) -> StoredMessage {
    StoredMessage {
        id: MessageId::new(),
        tenant_id: DEFAULT_TENANT,
        session_id: session,
        role,
        content: content.into(),
        meta: (role == Role::Assistant).then(|| GenerationMeta {
            model: "m".into(),
            prompt_tokens: 3,
            completion_tokens: 4,
            latency_ms: 5,
            finish_reason: "stop".into(),
            partial: false,
            truncated_turns: 1,
            fallback_from: Some("primary".into()),
            cached: true,
            guard: vec![palisade_core::guard::FindingSummary {
                category: "pii".into(),
                kind: "email".into(),
                score: 1.0,
                action: palisade_core::guard::GuardAction::Pseudonymise,
                turn: Some(0),
            }],
        }),
        created_at: at,
    }
}

#[tokio::test]
async fn users_unique_and_scoped() {
    let (_d, s) = store().await;
    let a = user(&s, "alice").await;
    let dup = s
        .create_user(NewUser {
            tenant_id: DEFAULT_TENANT,
            username: "alice".into(),
            email: None,
            password_hash: "h".into(),
            role: RoleName::user(),
            must_change_password: false,
            auth_source: "local".into(),
        })
        .await;
    assert!(matches!(dup, Err(CoreError::Conflict(_))));
    assert_eq!(
        s.find_by_username(DEFAULT_TENANT, "alice")
            .await
            .unwrap()
            .unwrap()
            .id,
        a.id
    );
    // Another tenant sees nothing.
    assert!(s.find_by_id(TenantId::new(), a.id).await.unwrap().is_none());
    s.set_tokens_valid_after(DEFAULT_TENANT, a.id, 100)
        .await
        .unwrap();
    s.set_tokens_valid_after(DEFAULT_TENANT, a.id, 50)
        .await
        .unwrap();
    assert_eq!(
        s.find_by_id(DEFAULT_TENANT, a.id)
            .await
            .unwrap()
            .unwrap()
            .tokens_valid_after,
        100
    );
    assert_eq!(s.count_users().await.unwrap(), 1);
}

#[tokio::test]
async fn sessions_messages_paging_and_ownership() {
    let (_d, s) = store().await;
    let a = user(&s, "alice").await;
    let b = user(&s, "bob").await;
    let sess = ChatSession {
        id: SessionId::new(),
        tenant_id: DEFAULT_TENANT,
        user_id: a.id,
        title: "t".into(),
        system_prompt: Some("Answer in French.".into()),
        created_at: 1,
        updated_at: 1,
    };
    ChatRepository::create_session(&s, &sess).await.unwrap();
    // The conversation's system prompt: stored, changed, removed, only by its owner.
    let got = |s: &Store| {
        let s = s.clone();
        let id = sess.id;
        async move {
            s.get_session(DEFAULT_TENANT, a.id, id)
                .await
                .unwrap()
                .unwrap()
                .system_prompt
        }
    };
    assert_eq!(got(&s).await.as_deref(), Some("Answer in French."));
    assert!(s
        .set_session_system_prompt(DEFAULT_TENANT, a.id, sess.id, Some("Be brief."), 2)
        .await
        .unwrap());
    assert_eq!(got(&s).await.as_deref(), Some("Be brief."));
    assert!(!s
        .set_session_system_prompt(DEFAULT_TENANT, b.id, sess.id, None, 3)
        .await
        .unwrap());
    assert!(s
        .set_session_system_prompt(DEFAULT_TENANT, a.id, sess.id, None, 3)
        .await
        .unwrap());
    assert_eq!(got(&s).await, None);

    // The guard's pseudonym vault: stored per session, replaced on save, scoped by tenant,
    // dropped with the session.
    let mut vault = palisade_core::guard::Pseudonyms::default();
    vault.placeholder("EMAIL", "alice@example.com");
    assert!(s
        .load_vault(DEFAULT_TENANT, sess.id)
        .await
        .unwrap()
        .is_none());
    s.save_vault(DEFAULT_TENANT, sess.id, &vault, 5)
        .await
        .unwrap();
    vault.placeholder("PHONE", "+20 10 1234 5678");
    s.save_vault(DEFAULT_TENANT, sess.id, &vault, 6)
        .await
        .unwrap();
    assert_eq!(
        s.load_vault(DEFAULT_TENANT, sess.id).await.unwrap(),
        Some(vault)
    );
    let other_tenant = palisade_core::ids::TenantId::new();
    assert!(s.load_vault(other_tenant, sess.id).await.unwrap().is_none());
    // A vault for a session that does not exist is not stored.
    let ghost = SessionId::new();
    s.save_vault(
        DEFAULT_TENANT,
        ghost,
        &palisade_core::guard::Pseudonyms::default(),
        7,
    )
    .await
    .unwrap();
    assert!(s.load_vault(DEFAULT_TENANT, ghost).await.unwrap().is_none());

    let mut ids = Vec::new();
    for i in 0..5 {
        let role = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        let m = msg(sess.id, role, &format!("m{i}"), 10 + i);
        ids.push(m.id);
        s.append_message(&m).await.unwrap();
    }
    let (page, more) = s
        .list_messages(DEFAULT_TENANT, sess.id, None, 2)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        ["m3", "m4"]
    );
    assert!(more);
    assert_eq!(page[0].meta.as_ref().unwrap().completion_tokens, 4);
    let (page, more) = s
        .list_messages(DEFAULT_TENANT, sess.id, Some(ids[3]), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 3);
    assert!(!more);
    let (list, total) =
        ChatRepository::list_sessions(&s, DEFAULT_TENANT, a.id, SessionSort::UpdatedDesc, 10, 0)
            .await
            .unwrap();
    assert_eq!(total, 1);
    assert_eq!(list[0].message_count, 5);
    assert_eq!(list[0].last_message_preview.as_deref(), Some("m4"));
    assert_eq!(list[0].session.updated_at, 14);
    // The list's summary is kept on the session row: a message stored late with an older time
    // counts but does not become the preview; one at the same time with a later id does (the
    // order of the message pages).
    s.append_message(&msg(sess.id, Role::User, "late", 5))
        .await
        .unwrap();
    s.append_message(&msg(sess.id, Role::Assistant, "tie", 14))
        .await
        .unwrap();
    let (list, _) =
        ChatRepository::list_sessions(&s, DEFAULT_TENANT, a.id, SessionSort::UpdatedDesc, 10, 0)
            .await
            .unwrap();
    assert_eq!(list[0].message_count, 7);
    assert_eq!(list[0].last_message_preview.as_deref(), Some("tie"));
    let (page, _) = s
        .list_messages(DEFAULT_TENANT, sess.id, None, 1)
        .await
        .unwrap();
    assert_eq!(page[0].content, "tie");
    // Bob can't see, rename or delete it.
    assert!(
        ChatRepository::get_session(&s, DEFAULT_TENANT, b.id, sess.id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(!s
        .rename_session(DEFAULT_TENANT, b.id, sess.id, "x", 20)
        .await
        .unwrap());
    assert!(!s
        .delete_session(DEFAULT_TENANT, b.id, sess.id)
        .await
        .unwrap());
    assert_eq!(
        ChatRepository::list_sessions(&s, DEFAULT_TENANT, b.id, SessionSort::CreatedAsc, 10, 0)
            .await
            .unwrap()
            .1,
        0
    );
    // Alice deletes: messages go too; appending afterwards fails cleanly.
    assert!(s
        .delete_session(DEFAULT_TENANT, a.id, sess.id)
        .await
        .unwrap());
    let (page, _) = s
        .list_messages(DEFAULT_TENANT, sess.id, None, 10)
        .await
        .unwrap();
    assert!(page.is_empty());
    assert!(s
        .load_vault(DEFAULT_TENANT, sess.id)
        .await
        .unwrap()
        .is_none());
    let late = s
        .append_message(&msg(sess.id, Role::Assistant, "late", 30))
        .await;
    assert!(matches!(late, Err(CoreError::NotFound(_))));
}

#[tokio::test]
async fn refresh_rotation_and_reuse_revokes_family() {
    let (_d, s) = store().await;
    let a = user(&s, "alice").await;
    let fam = TokenFamilyId::new();
    let rec = |hash: &str| RefreshTokenRecord {
        token_hash: hash.into(),
        family_id: fam,
        tenant_id: DEFAULT_TENANT,
        user_id: a.id,
        created_at: 0,
        expires_at: 1_000,
        family_expires_at: 2_000,
        used_at: None,
        revoked: false,
    };
    s.insert(rec("h1")).await.unwrap();
    assert!(matches!(
        s.consume("h1", 10).await.unwrap(),
        ConsumeOutcome::Consumed(_)
    ));
    s.insert(rec("h2")).await.unwrap();
    // h1 again: reuse → family revoked, so h2 is dead too.
    assert!(matches!(
        s.consume("h1", 11).await.unwrap(),
        ConsumeOutcome::Reused { .. }
    ));
    assert!(matches!(
        s.consume("h2", 12).await.unwrap(),
        ConsumeOutcome::Reused { .. }
    ));
    assert_eq!(
        s.consume("nope", 12).await.unwrap(),
        ConsumeOutcome::Invalid
    );
    // Expiry.
    let fam2 = TokenFamilyId::new();
    s.insert(RefreshTokenRecord {
        family_id: fam2,
        ..rec("h3")
    })
    .await
    .unwrap();
    assert_eq!(
        s.consume("h3", 5_000).await.unwrap(),
        ConsumeOutcome::Invalid
    );
    // Logout by token hash.
    s.insert(RefreshTokenRecord {
        family_id: TokenFamilyId::new(),
        ..rec("h4")
    })
    .await
    .unwrap();
    assert!(s.revoke_family_of("h4").await.unwrap());
    assert!(!matches!(
        s.consume("h4", 10).await.unwrap(),
        ConsumeOutcome::Consumed(_)
    ));
}

#[tokio::test]
async fn in_memory_store_works() {
    let s = Store::open_in_memory().await.unwrap();
    assert!(s.ping().await);
    assert_eq!(s.count_users().await.unwrap(), 0);
}
