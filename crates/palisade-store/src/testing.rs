//! Test helpers (feature `testing`): a fresh PostgreSQL database per test, so the same tests
//! run on SQLite and, with `TEST_POSTGRES_URL` set, on PostgreSQL.

use std::path::Path;

use palisade_core::{CoreError, CoreResult};
use sqlx::{AnyConnection, Connection, Executor};

use crate::{db_err, PgSettings, Store};

/// The variable naming the PostgreSQL server tests may use: the URL of a database the test
/// role can connect to and create databases from (e.g. `postgres://postgres@127.0.0.1:5432/test`).
pub const POSTGRES_ENV: &str = "TEST_POSTGRES_URL";

/// The URL of `TEST_POSTGRES_URL`, when it is set (and not empty).
pub fn postgres_server() -> Option<String> {
    std::env::var(POSTGRES_ENV).ok().filter(|u| !u.is_empty())
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// Creates an empty database on the server of `server` and returns its URL. Databases that
/// earlier test runs left behind (more than six hours old) are dropped first.
pub async fn fresh_postgres(server: &str) -> CoreResult<String> {
    sqlx::any::install_default_drivers();
    let mut admin = AnyConnection::connect(server).await.map_err(db_err)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let old: Vec<String> = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'palisade\\_t\\_%'",
    )
    .fetch_all(&mut admin)
    .await
    .map_err(db_err)?;
    for name in old {
        let made = name
            .split('_')
            .nth(2)
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(now);
        if now.saturating_sub(made) > 6 * 3600 {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                .await;
        }
    }
    let name = format!("palisade_t_{now}_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await
        .map_err(|e| CoreError::Storage(format!("creating test database: {e}")))?;
    let _ = admin.close().await;
    Ok(with_database(server, &name))
}

/// A test's database: a SQLite file, or a PostgreSQL database of its own when
/// `TEST_POSTGRES_URL` is set. Open it as often as the test needs.
#[derive(Debug, Clone)]
pub enum TestDb {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl TestDb {
    /// A new database: PostgreSQL when `TEST_POSTGRES_URL` is set, else SQLite at `path`.
    pub async fn new(path: &Path) -> CoreResult<TestDb> {
        match postgres_server() {
            Some(server) => Ok(TestDb::Postgres(fresh_postgres(&server).await?)),
            None => Ok(TestDb::Sqlite(path.to_path_buf())),
        }
    }

    /// A store on it (migrated).
    pub async fn open(&self) -> CoreResult<Store> {
        match self {
            TestDb::Sqlite(p) => Store::open_sqlite(p).await,
            TestDb::Postgres(url) => Store::open_postgres(url, &PgSettings::default()).await,
        }
    }
}

/// A store for a test: PostgreSQL (a database of its own) when `TEST_POSTGRES_URL` is
/// set, else SQLite at `path`.
pub async fn store_at(path: &Path) -> CoreResult<Store> {
    TestDb::new(path).await?.open().await
}

/// A plain local user of `tenant` called `name` (role `user`, a placeholder password hash), for
/// `create_user` in tests.
pub fn new_user(
    tenant: palisade_core::ids::TenantId,
    name: &str,
) -> palisade_core::entities::NewUser {
    palisade_core::entities::NewUser {
        tenant_id: tenant,
        username: name.into(),
        email: None,
        password_hash: "$argon2id$x".into(),
        role: palisade_core::access::RoleName::user(),
        must_change_password: false,
        auth_source: "local".into(),
    }
}

/// A user of the default tenant called `name`, created in `store`, and the principal it chats
/// as (role `user`, `chat:send` and every model), for tests of the chat service.
pub async fn chat_user(
    store: &Store,
    name: &str,
) -> CoreResult<palisade_core::entities::Principal> {
    use palisade_core::ports::UserRepository;
    let tenant = palisade_core::ids::DEFAULT_TENANT;
    let user = store.create_user(new_user(tenant, name)).await?;
    Ok(palisade_core::entities::Principal {
        user_id: user.id,
        tenant_id: tenant,
        username: name.into(),
        role: palisade_core::access::RoleName::user(),
        permissions: palisade_core::access::PermissionSet::of([
            palisade_core::access::CHAT_SEND,
            "model:*:use",
        ]),
        credential: palisade_core::entities::Credential::Session { session: None },
        token_id: "t".into(),
        must_change_password: false,
        needs_2fa_enrolment: false,
        client: palisade_core::auth_api::ClientInfo::default(),
    })
}

/// A model registry of one model called `name` (the default), usable by role `user`.
pub async fn one_model(
    store: &Store,
    name: &str,
) -> CoreResult<std::sync::Arc<palisade_core::models::ModelRegistry>> {
    let spec = palisade_types::models::ModelSpec {
        name: name.into(),
        ..palisade_types::models::ModelSpec::default()
    };
    let registry = palisade_core::models::ModelRegistry::load(
        vec![spec],
        name.into(),
        vec!["user".into()],
        std::sync::Arc::new(store.clone()),
    )
    .await?;
    Ok(std::sync::Arc::new(registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=require", "x"),
            "postgres://u:p@h/x?sslmode=require"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
