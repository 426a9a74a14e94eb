//! The PostgreSQL backend on a real server (`TEST_POSTGRES_URL`, e.g.
//! `postgres://postgres@127.0.0.1:5432/test`): row-level security per tenant holds even for a
//! query that forgot its tenant filter, the application role cannot bypass it or edit the audit
//! trail, replicas migrating together do not race, and both backends' migrations stay in step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_core::entities::{ChatSession, StoredMessage};
use palisade_core::ids::{MessageId, SessionId, TenantId, UserId};
use palisade_core::ports::{ChatRepository, TenantRepository, UserRepository};
use palisade_core::provider::Role;
use palisade_store::testing::{fresh_postgres, postgres_server};
use palisade_store::{PgSettings, Store};
use sqlx::{AnyConnection, Connection, Executor, Row};

fn server() -> Option<String> {
    let s = postgres_server();
    if s.is_none() {
        eprintln!("skipped: TEST_POSTGRES_URL is not set (scripts/test sets it when PostgreSQL answers on 127.0.0.1:5432)");
    }
    s
}

async fn user_with_chat(s: &Store, tenant: TenantId, name: &str) -> (UserId, SessionId) {
    let u = s
        .create_user(palisade_store::testing::new_user(tenant, name))
        .await
        .unwrap();
    let session = ChatSession {
        id: SessionId::new(),
        tenant_id: tenant,
        user_id: u.id,
        title: format!("{name}'s chat"),
        system_prompt: None,
        created_at: 1,
        updated_at: 1,
    };
    s.create_session(&session).await.unwrap();
    s.append_message(&StoredMessage {
        id: MessageId::new(),
        tenant_id: tenant,
        session_id: session.id,
        role: Role::User,
        content: format!("hello from {name}"),
        meta: None,
        created_at: 2,
    })
    .await
    .unwrap();
    (u.id, session.id)
}

/// A raw connection as the application role, as code that bypassed the store would have.
async fn app_connection(url: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    let mut c = AnyConnection::connect(url).await.unwrap();
    c.execute("SET ROLE palisade_app").await.unwrap();
    c
}

/// Names the tenant the rest of the open transaction on `c` serves, as the store does.
async fn as_tenant(c: &mut AnyConnection, tenant: &str) {
    sqlx::query("SELECT set_config('palisade.tenant', $1, true)")
        .bind(tenant)
        .execute(&mut *c)
        .await
        .unwrap();
}

async fn count(c: &mut AnyConnection, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&mut *c)
        .await
        .unwrap()
}

#[tokio::test]
async fn row_security_hides_other_tenants_even_without_a_filter() {
    let Some(server) = server() else { return };
    let url = fresh_postgres(&server).await.unwrap();
    let s = Store::open_postgres(&url, &PgSettings::default())
        .await
        .unwrap();
    let a = s.create_tenant("acme").await.unwrap().id;
    let b = s.create_tenant("globex").await.unwrap().id;
    let (_, a_chat) = user_with_chat(&s, a, "alice").await;
    let (_, b_chat) = user_with_chat(&s, b, "bob").await;

    let mut c = app_connection(&url).await;
    // No tenant setting: nothing at all, in every tenant-owned table.
    for table in [
        "users",
        "chat_sessions",
        "messages",
        "tenants",
        "tenant_keys",
        "security_events",
    ] {
        assert_eq!(
            count(&mut c, &format!("SELECT COUNT(*) FROM {table}")).await,
            0,
            "{table} without a tenant setting"
        );
    }

    // Tenant A's setting: a query with no tenant filter sees A's rows only, and B's not even
    // when it asks for them by id.
    let mut tx = c.begin().await.unwrap();
    as_tenant(&mut tx, &a.to_string()).await;
    let titles: Vec<String> = sqlx::query("SELECT tenant_id FROM chat_sessions")
        .fetch_all(&mut *tx)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("tenant_id"))
        .collect();
    assert_eq!(titles, vec![a.to_string()]);
    assert_eq!(count(&mut tx, "SELECT COUNT(*) FROM messages").await, 1);
    assert_eq!(count(&mut tx, "SELECT COUNT(*) FROM users").await, 1);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chat_sessions WHERE id = $1")
        .bind(b_chat.to_string())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0, "B's conversation is invisible to A");
    // Nor can A change B's rows, or write a row in B's name.
    let r = sqlx::query("UPDATE chat_sessions SET title = 'x' WHERE id = $1")
        .bind(b_chat.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(r.rows_affected(), 0);
    let r = sqlx::query("DELETE FROM messages")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(r.rows_affected(), 1, "A's own message only");
    tx.rollback().await.unwrap();
    let mut tx = c.begin().await.unwrap();
    as_tenant(&mut tx, &a.to_string()).await;
    let forged = sqlx::query(
        "INSERT INTO chat_sessions (id, tenant_id, user_id, title, created_at, updated_at) \
         SELECT $1, tenant_id, user_id, 'forged', 1, 1 FROM chat_sessions LIMIT 1",
    )
    .bind(SessionId::new().to_string())
    .execute(&mut *tx)
    .await;
    assert!(forged.is_ok(), "a row of its own tenant: {forged:?}");
    let forged =
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, 'intruder', 1)")
            .bind(b.to_string())
            .execute(&mut *tx)
            .await;
    assert!(forged.is_err(), "a row of another tenant is refused");
    tx.rollback().await.unwrap();

    // A wrong tenant (one that does not exist) sees nothing either.
    let mut tx = c.begin().await.unwrap();
    as_tenant(&mut tx, &TenantId::new().to_string()).await;
    assert_eq!(
        count(&mut tx, "SELECT COUNT(*) FROM chat_sessions").await,
        0
    );
    assert_eq!(count(&mut tx, "SELECT COUNT(*) FROM users").await, 0);
    tx.rollback().await.unwrap();

    // The setting is per transaction: it does not leak into the next one on the connection.
    let mut tx = c.begin().await.unwrap();
    as_tenant(&mut tx, &a.to_string()).await;
    tx.commit().await.unwrap();
    assert_eq!(count(&mut c, "SELECT COUNT(*) FROM chat_sessions").await, 0);

    // Through the store, each tenant still reads its own conversation.
    let (msgs, _) = s.list_messages(a, a_chat, None, 10).await.unwrap();
    assert_eq!(msgs[0].content, "hello from alice");
    let (msgs, _) = s.list_messages(a, b_chat, None, 10).await.unwrap();
    assert!(msgs.is_empty(), "B's conversation asked for under A");
    let _ = c.close().await;
}

#[tokio::test]
async fn the_application_role_cannot_bypass_row_security_or_edit_the_audit_trail() {
    let Some(server) = server() else { return };
    let url = fresh_postgres(&server).await.unwrap();
    let s = Store::open_postgres(&url, &PgSettings::default())
        .await
        .unwrap();
    user_with_chat(&s, palisade_core::ids::DEFAULT_TENANT, "carol").await;
    use palisade_core::ports::SecurityEventSink;
    s.record(palisade_core::identity::SecurityEvent::new(
        palisade_core::identity::SecurityEventKind::LoginSuccess,
    ))
    .await
    .unwrap();

    let mut c = app_connection(&url).await;
    let row =
        sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert!(!row.get::<bool, _>("rolsuper"));
    assert!(!row.get::<bool, _>("rolbypassrls"));
    // Turning row security off is refused for a role subject to it.
    assert!(c
        .execute("SET row_security = off; SELECT COUNT(*) FROM users")
        .await
        .is_err());
    let mut tx = c.begin().await.unwrap();
    as_tenant(&mut tx, "*").await;
    assert!(count(&mut tx, "SELECT COUNT(*) FROM security_events").await >= 1);
    for sql in [
        "UPDATE security_events SET detail = '{}'",
        "DELETE FROM security_events",
    ] {
        let mut sp = tx.begin().await.unwrap();
        let err = sp.execute(sql).await.unwrap_err().to_string();
        assert!(err.contains("permission denied"), "{sql}: {err}");
        sp.rollback().await.unwrap();
    }
    tx.rollback().await.unwrap();
    let _ = c.close().await;

    // A store told to run as the (superuser) login role refuses to start.
    let err = Store::open_postgres(
        &url,
        &PgSettings {
            role: None,
            ..PgSettings::default()
        },
    )
    .await
    .err()
    .expect("a role that bypasses row security is refused");
    let err = format!("{err:?}");
    assert!(err.contains("bypass row-level security"), "{err}");
}

#[tokio::test]
async fn replicas_migrating_together_apply_each_migration_once() {
    let Some(server) = server() else { return };
    let url = fresh_postgres(&server).await.unwrap();
    let (a, b, c) = tokio::join!(
        Store::migrate_postgres(&url),
        Store::migrate_postgres(&url),
        Store::migrate_postgres(&url)
    );
    // All three succeed (none trips over another's half-made schema), and afterwards
    // nothing is left to apply.
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let total = palisade_store::migrations(palisade_store::Backend::Postgres).len();
    assert!(a.max(b).max(c) <= total, "{a} {b} {c}");
    assert_eq!(Store::migrate_postgres(&url).await.unwrap(), 0);
    // And the store opens on it, twice at once (two replicas starting).
    let settings = PgSettings::default();
    let (x, y) = tokio::join!(
        Store::open_postgres(&url, &settings),
        Store::open_postgres(&url, &settings)
    );
    assert!(x.unwrap().ping().await && y.unwrap().ping().await);
}

#[test]
fn both_backends_have_the_same_migrations() {
    let sqlite = palisade_store::migrations(palisade_store::Backend::Sqlite);
    let pg = palisade_store::migrations(palisade_store::Backend::Postgres);
    assert_eq!(sqlite, pg);
    assert!(sqlite.len() >= 13);
}
