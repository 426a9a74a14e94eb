//! Encryption at rest on a real SQLite file (no plaintext in the database or its WAL) or, with
//! `TEST_POSTGRES_URL` set, a real PostgreSQL database (no plaintext in `pg_dump`): the owner
//! reads it back, a master-key rotation keeps it readable, and shredding a tenant's key makes it
//! unreadable for good.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use palisade_core::entities::{ChatSession, SessionSort, StoredMessage};
use palisade_core::guard::Pseudonyms;
use palisade_core::ids::{MessageId, SessionId, DEFAULT_TENANT};
use palisade_core::ports::{ChatRepository, UserRepository};
use palisade_core::provider::Role;
use palisade_core::CoreError;
use palisade_store::testing::TestDb;
use palisade_store::MasterKey;

/// Every byte of the database file and its journals.
fn disk_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            all.extend(std::fs::read(p).unwrap());
        }
    }
    all
}

/// Everything the database holds, as an attacker with the files (SQLite) or a dump
/// (PostgreSQL) sees it.
fn stored_bytes(db: &TestDb, dir: &Path) -> Vec<u8> {
    match db {
        TestDb::Sqlite(_) => disk_bytes(dir),
        TestDb::Postgres(url) => {
            let out = std::process::Command::new("pg_dump")
                .args(["--no-owner", "--dbname", url])
                .output()
                .expect("pg_dump runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(contains(&out.stdout, "COPY public.messages"));
            out.stdout
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn content_is_sealed_on_disk_and_only_its_tenant_key_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(&dir.path().join("p.db")).await.unwrap();
    let k1 = MasterKey::generate().unwrap();
    let s = db
        .open()
        .await
        .unwrap()
        .with_master_keys(vec![k1.clone()], None);
    let owner = s
        .create_user(palisade_store::testing::new_user(DEFAULT_TENANT, "olga"))
        .await
        .unwrap();
    let marker = format!("zebra-{}", uuid_like());
    let session = ChatSession {
        id: SessionId::new(),
        tenant_id: DEFAULT_TENANT,
        user_id: owner.id,
        title: format!("title {marker}"),
        system_prompt: Some(format!("system {marker}")),
        created_at: 1,
        updated_at: 1,
    };
    s.create_session(&session).await.unwrap();
    let m = StoredMessage {
        id: MessageId::new(),
        tenant_id: DEFAULT_TENANT,
        session_id: session.id,
        role: Role::User,
        content: format!("message {marker}"),
        meta: None,
        created_at: 2,
    };
    s.append_message(&m).await.unwrap();
    let mut vault = Pseudonyms::default();
    vault.placeholder("email", &format!("{marker}@example.com"));
    s.save_vault(DEFAULT_TENANT, session.id, &vault, 3)
        .await
        .unwrap();

    // Nothing of it in the file, the WAL or the shared memory file (or the dump).
    assert!(!contains(&stored_bytes(&db, dir.path()), &marker));

    // The owner reads it all back.
    let (msgs, _) = s
        .list_messages(DEFAULT_TENANT, session.id, None, 10)
        .await
        .unwrap();
    assert_eq!(msgs[0].content, format!("message {marker}"));
    let got = s
        .get_session(DEFAULT_TENANT, owner.id, session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.title, format!("title {marker}"));
    assert_eq!(got.system_prompt.unwrap(), format!("system {marker}"));
    let (list, _) = s
        .list_sessions(DEFAULT_TENANT, owner.id, SessionSort::UpdatedDesc, 10, 0)
        .await
        .unwrap();
    assert_eq!(
        list[0].last_message_preview.as_deref(),
        Some(format!("message {marker}").as_str())
    );
    let back = s
        .load_vault(DEFAULT_TENANT, session.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.len(), 1);

    // A sealed value moved to another row does not open there.
    s.rename_session(DEFAULT_TENANT, owner.id, session.id, "renamed", 4)
        .await
        .unwrap();
    drop(s);

    // Another master key opens nothing.
    let stranger = db
        .open()
        .await
        .unwrap()
        .with_master_keys(vec![MasterKey::generate().unwrap()], None);
    assert!(stranger
        .list_messages(DEFAULT_TENANT, session.id, None, 10)
        .await
        .is_err());
    drop(stranger);

    // Rotation: the data keys are re-wrapped under k2, and k2 alone then reads everything.
    let k2 = MasterKey::generate().unwrap();
    let rotating = db
        .open()
        .await
        .unwrap()
        .with_master_keys(vec![k2.clone(), k1.clone()], None);
    assert_eq!(rotating.rewrap_tenant_keys(&k2).await.unwrap(), 1);
    assert_eq!(rotating.rewrap_tenant_keys(&k2).await.unwrap(), 0);
    let (by_master, shredded) = rotating.tenant_key_summary().await.unwrap();
    assert_eq!(by_master, vec![(k2.id(), 1)]);
    assert_eq!(shredded, 0);
    drop(rotating);
    let s = db
        .open()
        .await
        .unwrap()
        .with_master_keys(vec![k2.clone()], None);
    let (msgs, _) = s
        .list_messages(DEFAULT_TENANT, session.id, None, 10)
        .await
        .unwrap();
    assert_eq!(msgs[0].content, format!("message {marker}"));

    // Shredding: what the key sealed is gone for good, new writes get a new key.
    assert_eq!(
        s.shred_tenant_keys(&DEFAULT_TENANT.to_string())
            .await
            .unwrap(),
        1
    );
    let err = s
        .list_messages(DEFAULT_TENANT, session.id, None, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, CoreError::DataDestroyed), "{err:?}");
    let fresh = ChatSession {
        id: SessionId::new(),
        title: "after".into(),
        system_prompt: None,
        ..session.clone()
    };
    s.create_session(&fresh).await.unwrap();
    let got = s
        .get_session(DEFAULT_TENANT, owner.id, fresh.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.title, "after");
    let (_, shredded) = s.tenant_key_summary().await.unwrap();
    assert_eq!(shredded, 1);
    // The old conversation stays listed (it can be deleted), without its text.
    let (list, _) = s
        .list_sessions(DEFAULT_TENANT, owner.id, SessionSort::CreatedAsc, 10, 0)
        .await
        .unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0].session.title.contains("destroyed"), "{:?}", list[0]);
    assert!(list[0].last_message_preview.is_none());
    assert_eq!(list[1].session.title, "after");
    // The shredded key's bytes are not left in the file.
    drop(s);
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
