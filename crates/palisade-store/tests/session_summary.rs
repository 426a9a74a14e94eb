//! Migration 0016 fills the conversation list's summary (message count, latest message) of the
//! conversations that existed before it, from their messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;

use sqlx::migrate::Migrator;
use sqlx::Row;

#[tokio::test]
async fn migration_16_summarises_existing_conversations() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/old.db?mode=rwc", dir.path().display());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let all = sqlx::migrate!("migrations/sqlite");
    let before: Vec<_> = all
        .migrations
        .iter()
        .filter(|m| m.version < 16)
        .cloned()
        .collect();
    assert!(all.migrations.iter().any(|m| m.version == 16));
    let old = Migrator {
        migrations: Cow::Owned(before),
        ..Migrator::DEFAULT
    };
    old.run(&pool).await.unwrap();

    // A database of the version before: a tenant, a user, two conversations, one empty.
    for sql in [
        "INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', 0)",
        "INSERT INTO users (id, tenant_id, username, password_hash, role, created_at, updated_at) \
         VALUES ('u', 't', 'alice', 'x', 'user', 0, 0)",
        "INSERT INTO chat_sessions (id, tenant_id, user_id, title, created_at, updated_at) \
         VALUES ('s1', 't', 'u', 'x', 0, 0), ('s2', 't', 'u', 'y', 0, 0)",
        "INSERT INTO messages (id, tenant_id, session_id, role, content, created_at) VALUES \
         ('m1', 't', 's1', 'user', 'a', 10), ('m3', 't', 's1', 'assistant', 'b', 20), \
         ('m2', 't', 's1', 'user', 'c', 20), ('m0', 't', 's1', 'user', 'd', 5)",
    ] {
        if let Err(e) = sqlx::query(sql).execute(&pool).await {
            panic!("{sql}: {e}");
        }
    }
    all.run(&pool).await.unwrap();
    let rows = sqlx::query(
        "SELECT id, message_count, last_message_id, last_message_at FROM chat_sessions ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let got: Vec<(String, i64, Option<String>, Option<i64>)> = rows
        .iter()
        .map(|r| {
            (
                r.get("id"),
                r.get("message_count"),
                r.get("last_message_id"),
                r.get("last_message_at"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("s1".to_string(), 4, Some("m3".to_string()), Some(20)),
            ("s2".to_string(), 0, None, None),
        ]
    );
}
