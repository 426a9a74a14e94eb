//! The two databases behind one pool type (sqlx `Any`): connecting, migrating, and running a
//! statement inside its tenant's scope.
//!
//! On PostgreSQL every statement runs in a transaction whose `palisade.tenant` setting names
//! the tenant it may see (`*`: the platform's own work, such as looking up an API key before
//! its tenant is known). Row-level security policies (migration 0013) compare each row's
//! `tenant_id` with that setting, so a query that forgot its tenant filter still sees only its
//! tenant's rows, and one run with no setting sees nothing. SQLite has no row security: the
//! embedded single-node store relies on the filters alone.

use std::path::Path;
use std::time::Duration;

use futures::future::BoxFuture;
use palisade_core::ids::TenantId;
use palisade_core::{CoreError, CoreResult};
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyQueryResult, AnyRow};
use sqlx::query::{Query, QueryScalar};
use sqlx::{Any, AnyConnection, AnyPool, Execute, Executor, FromRow, Row, Transaction};

use crate::{db_err, Store};

/// Which database a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
    }
}

/// Connection settings for PostgreSQL (`[store]` of the configuration).
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// Connections in the pool of this process.
    pub max_connections: u32,
    /// How long a request waits for a free connection before it fails.
    pub acquire_timeout: Duration,
    /// `statement_timeout` of every connection (0: none).
    pub statement_timeout: Duration,
    /// The role statements run as (`SET ROLE`), when the login role is a more privileged one;
    /// `None`: the login role itself. Either way it must not bypass row-level security.
    pub role: Option<String>,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            role: Some("palisade_app".into()),
        }
    }
}

/// The migrations embedded for `backend`: (version, description), in order.
pub fn migrations(backend: Backend) -> Vec<(i64, String)> {
    let m = match backend {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    };
    m.iter()
        .map(|m| (m.version, m.description.to_string()))
        .collect()
}

/// What a statement may see on PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope {
    /// Every tenant: the platform's own work (pre-authentication lookups, jobs, the audit
    /// chain, key management). Each use is named at its call.
    System,
    /// One tenant's rows only.
    Tenant(TenantId),
}

impl Scope {
    fn setting(self) -> String {
        match self {
            Scope::System => "*".into(),
            Scope::Tenant(t) => t.to_string(),
        }
    }
}

fn install() {
    sqlx::any::install_default_drivers();
}

/// A SQLite file database (created if missing), WAL, foreign keys on, secure delete.
/// Every connection attaches the audit search's file (`search`) as `search`.
pub(crate) async fn sqlite_file(path: &Path, search: &Path) -> CoreResult<AnyPool> {
    install();
    let url = format!("sqlite://{}?mode=rwc", encode_path(&path.to_string_lossy()));
    let search = search.to_string_lossy().into_owned();
    AnyPoolOptions::new()
        .max_connections(8)
        // A connection to a local file does not go stale: no ping (a round trip to the
        // connection's worker thread) before each use.
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            let search = search.clone();
            Box::pin(async move {
                sqlx::query("ATTACH DATABASE $1 AS search")
                    .bind(search)
                    .execute(&mut *conn)
                    .await?;
                for pragma in [
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = NORMAL",
                    "PRAGMA foreign_keys = ON",
                    // Deleted content (a shredded data key, a purged conversation) is
                    // overwritten in the file, not just unlinked.
                    "PRAGMA secure_delete = ON",
                    "PRAGMA busy_timeout = 10000",
                    // The WAL is copied into the file by the store's checkpointer task
                    // (`spawn_sqlite_checkpointer`), off the committing request's path. Under
                    // steady writes those passive checkpoints never catch up completely, and
                    // SQLite starts the WAL over only after one that did: that is the
                    // automatic checkpoint of the commit that crosses this many pages, which
                    // copies the last frames and waits for two fsyncs (~2-4 ms on the 2-core
                    // machine). 40,000 pages (160 MB of WAL at most) make it 4x rarer than
                    // 10,000 did: at 1,000 requests/s the WAL grows ~50 MB/s (measured
                    // 2026-12-07: 94-105 fsyncs in a commit per gateway benchmark, now 22-25).
                    "PRAGMA wal_autocheckpoint = 40000",
                ] {
                    conn.execute(pragma).await?;
                }
                Ok(())
            })
        })
        .connect(&url)
        .await
        .map_err(db_err)
}

/// How often the checkpointer copies the WAL into the database file while there are writes...
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// ...and at most how long it sleeps while there are none (it backs off, doubling).
const CHECKPOINT_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies the WAL into the database file every [`CHECKPOINT_EVERY`] (a passive checkpoint: it
/// never waits for readers or writers), until the pool closes; while nothing is written it
/// backs off to [`CHECKPOINT_IDLE`]. SQLite's own automatic checkpoint runs inside the commit
/// that crosses the threshold: that request waited for two fsyncs (up to ~4.5 ms each on the
/// 2-core machine, 2026-12-06), and every request queued behind its write lock with it. Here
/// the fsyncs run on a pool connection's worker thread while writers go on appending to the WAL.
pub(crate) fn spawn_sqlite_checkpointer(pool: AnyPool) {
    tokio::spawn(async move {
        let mut every = CHECKPOINT_EVERY;
        // (frames in the WAL, frames copied) at the last checkpoint.
        let mut last = (-1i64, -1i64);
        loop {
            tokio::time::sleep(every).await;
            if pool.is_closed() {
                return;
            }
            let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&pool)
                .await;
            match row {
                Ok(row) => {
                    let now = (
                        row.try_get::<i64, _>(1).unwrap_or(-1),
                        row.try_get::<i64, _>(2).unwrap_or(-1),
                    );
                    every = if now == last {
                        (every * 2).min(CHECKPOINT_IDLE)
                    } else {
                        CHECKPOINT_EVERY
                    };
                    last = now;
                }
                Err(e) => {
                    if pool.is_closed() {
                        return;
                    }
                    tracing::debug!(error = %e, "WAL checkpoint failed; retried at the next tick");
                }
            }
        }
    });
}

/// Appends the placeholders of `rows` rows of `cols` values each to `sql`:
/// `($1, $2), ($3, $4)` for 2 and 2 (a multi-row `VALUES` list).
pub(crate) fn push_value_rows(sql: &mut String, rows: usize, cols: usize) {
    use std::fmt::Write;
    for i in 0..rows {
        sql.push_str(if i > 0 { ", (" } else { "(" });
        for c in 1..=cols {
            if c > 1 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "${}", i * cols + c);
        }
        sql.push(')');
    }
}

/// `%`, `?`, `#` and spaces are escaped in the URL's path; everything else stays as it is.
fn encode_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out
}

/// A private in-memory SQLite database: one connection (each connection of `:memory:` would
/// be a database of its own), never closed while the pool lives.
pub(crate) async fn sqlite_memory() -> CoreResult<AnyPool> {
    install();
    AnyPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        })
        .connect("sqlite::memory:")
        .await
        .map_err(db_err)
}

/// Runs the PostgreSQL migrations on one connection of the login role. sqlx holds a
/// PostgreSQL advisory lock while it migrates, so replicas starting together apply each
/// migration once. Returns how many were applied now.
pub(crate) async fn migrate_postgres(url: &str) -> CoreResult<usize> {
    install();
    // A pool of one connection, not a bare connection: the migrator's future over a pool is
    // `Send` for every lifetime, so the server can run it inside spawned tasks.
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        // Notices such as "relation _sqlx_migrations already exists, skipping" are not news.
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET client_min_messages = warning").await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(connect_err)?;
    let migrator = sqlx::migrate!("migrations/postgres");
    let before = applied(&pool).await;
    let run = migrator.run(&pool).await;
    let after = applied(&pool).await;
    pool.close().await;
    run.map_err(|e| CoreError::Storage(format!("migration failed: {e}")))?;
    Ok(usize::try_from(after - before).unwrap_or(0))
}

async fn applied(pool: &AnyPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

/// A connection error without the URL (it may hold a password).
fn connect_err(e: sqlx::Error) -> CoreError {
    CoreError::Storage(format!("connecting to PostgreSQL: {e}"))
}

/// Role names are identifiers: lower-case letters, digits and `_`.
fn valid_role(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 63
        && r.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The pool of a replica: every connection switches to the application role and gets the
/// statement timeout; a role that could bypass row-level security is refused.
pub(crate) async fn postgres_pool(url: &str, s: &PgSettings) -> CoreResult<AnyPool> {
    install();
    if let Some(r) = &s.role {
        if !valid_role(r) {
            return Err(CoreError::Storage(format!(
                "store.role {r:?} is not a plain role name (lower-case letters, digits, _)"
            )));
        }
    }
    let role = s.role.clone();
    let timeout_ms = s.statement_timeout.as_millis();
    let pool = AnyPoolOptions::new()
        .max_connections(s.max_connections.max(1))
        .acquire_timeout(s.acquire_timeout)
        .after_connect(move |conn, _| {
            let role = role.clone();
            Box::pin(async move {
                if let Some(r) = role {
                    conn.execute(format!("SET ROLE {r}").as_str()).await?;
                }
                conn.execute(format!("SET statement_timeout = {timeout_ms}").as_str())
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .map_err(connect_err)?;
    let bypass: bool = sqlx::query_scalar(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&pool)
    .await
    .map_err(db_err)?;
    if bypass {
        pool.close().await;
        return Err(CoreError::Storage(
            "the database role Palisade runs as can bypass row-level security (SUPERUSER or \
             BYPASSRLS); set store.role to a role without either (migrations create \
             palisade_app) or connect as one"
                .into(),
        ));
    }
    Ok(pool)
}

/// The writers' turn on SQLite: one write (a statement or a transaction) at a time in this
/// process.
///
/// SQLite lets one connection write at a time anyway; without a turn, the pool's connections
/// find the file locked and wait in SQLite's busy handler, which sleeps (1, 2, 5, 10 ... 100
/// ms) instead of waking when the lock is free: under load the CPU idles while requests queue.
/// Taking turns in the process hands the lock over at once. (Another process on the same file,
/// `palisade admin` say, still meets the busy handler, as before.) Readers never wait: WAL.
pub(crate) type WriteGate = std::sync::Arc<tokio::sync::Mutex<()>>;

/// A transaction of the store: on SQLite it holds the writers' turn until it ends.
pub(crate) struct Tx {
    // Dropped first: the transaction ends (rolls back unless committed), then the turn passes.
    tx: Transaction<'static, Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// True for a statement that may write (anything but a plain `SELECT`).
fn writes(sql: &str) -> bool {
    let head = sql.trim_start();
    !head
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("select"))
}

impl Store {
    /// A transaction that sees what `scope` allows (PostgreSQL), or one holding the writers'
    /// turn (SQLite, `BEGIN IMMEDIATE`: it may write without upgrading its lock).
    pub(crate) async fn begin(&self, scope: Scope) -> CoreResult<Tx> {
        if self.backend == Backend::Sqlite {
            let turn = self.write_gate.clone().lock_owned().await;
            let tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(db_err)?;
            return Ok(Tx {
                tx,
                _turn: Some(turn),
            });
        }
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        set_scope(&mut tx, scope, Till::Commit)
            .await
            .map_err(db_err)?;
        Ok(Tx { tx, _turn: None })
    }

    /// A transaction holding the database's write lock for the audit chain: `BEGIN IMMEDIATE`
    /// on SQLite, a transaction-scoped advisory lock on PostgreSQL (shared by every replica).
    pub(crate) async fn begin_exclusive(&self) -> CoreResult<Tx> {
        let mut tx = self.begin(Scope::System).await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(AUDIT_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        Ok(tx)
    }
}

/// The advisory lock key of the audit chain writer ("palisade" in ASCII, as a number).
const AUDIT_LOCK: i64 = 0x7061_6c69_7361_6465;

/// Sets `scope` on `conn`: for the rest of the transaction (`Till::Commit`, the first act of
/// [`Store::begin`]) or for the connection's session until the next statement sets its own
/// (`Till::NextStatement`, by [`Run`] / [`RunScalar`]). Every statement of the store on
/// PostgreSQL runs on a connection whose scope was set just before it: the pool is never used
/// without one. A transaction-local setting wins inside its transaction.
async fn set_scope(conn: &mut AnyConnection, scope: Scope, till: Till) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('palisade.tenant', $1, $2)")
        .bind(scope.setting())
        .bind(till == Till::Commit)
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

/// How long a scope set by [`set_scope`] lasts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Till {
    Commit,
    NextStatement,
}

/// Runs one statement in its scope: on SQLite straight on the pool, on PostgreSQL on a pooled
/// connection after setting its scope. One statement is atomic on its own, so it needs no
/// transaction: two round trips instead of four (BEGIN, scope, statement, COMMIT), which on a
/// read-heavy route is most of the database's work.
pub(crate) trait Run<'q>: Sized {
    fn execute_in(
        self,
        store: &'q Store,
        scope: Scope,
    ) -> BoxFuture<'q, Result<AnyQueryResult, sqlx::Error>>;
    fn fetch_optional_in(
        self,
        store: &'q Store,
        scope: Scope,
    ) -> BoxFuture<'q, Result<Option<AnyRow>, sqlx::Error>>;
    fn fetch_all_in(
        self,
        store: &'q Store,
        scope: Scope,
    ) -> BoxFuture<'q, Result<Vec<AnyRow>, sqlx::Error>>;
}

/// Runs `$body` with `$exec` as the pool (SQLite) or a scoped transaction (PostgreSQL).
macro_rules! scoped {
    ($store:ident, $scope:ident, $write:expr, |$exec:ident| $body:expr) => {
        Box::pin(async move {
            if $store.backend == Backend::Sqlite {
                let _turn = match $write {
                    true => Some($store.write_gate.lock().await),
                    false => None,
                };
                let $exec = &$store.pool;
                return $body.await;
            }
            let mut conn = $store.pool.acquire().await?;
            set_scope(&mut conn, $scope, Till::NextStatement).await?;
            let $exec = &mut *conn;
            $body.await
        })
    };
}

impl<'q> Run<'q> for Query<'q, Any, AnyArguments<'q>> {
    fn execute_in(
        self,
        store: &'q Store,
        scope: Scope,
    ) -> BoxFuture<'q, Result<AnyQueryResult, sqlx::Error>> {
        scoped!(store, scope, true, |e| self.execute(e))
    }

    fn fetch_optional_in(
        self,
        store: &'q Store,
        scope: Scope,
    ) -> BoxFuture<'q, Result<Option<AnyRow>, sqlx::Error>> {
        let write = writes(self.sql());
        scoped!(store, scope, write, |e| self.fetch_optional(e))
    }

    fn fetch_all_in(
        self,
        store: &'q Store,
        scope: Scope,
    ) -> BoxFuture<'q, Result<Vec<AnyRow>, sqlx::Error>> {
        let write = writes(self.sql());
        scoped!(store, scope, write, |e| self.fetch_all(e))
    }
}

/// As [`Run`] for `query_scalar`.
pub(crate) trait RunScalar<'q, O>: Sized {
    fn fetch_one_in(self, store: &'q Store, scope: Scope) -> BoxFuture<'q, Result<O, sqlx::Error>>;
    fn fetch_optional_in(
        self,
        store: &'q Store,
        scope: Scope,
    ) -> BoxFuture<'q, Result<Option<O>, sqlx::Error>>;
}

impl<'q, O> RunScalar<'q, O> for QueryScalar<'q, Any, O, AnyArguments<'q>>
where
    O: Send + Unpin + 'q,
    (O,): Send + Unpin + for<'r> FromRow<'r, AnyRow>,
{
    fn fetch_one_in(self, store: &'q Store, scope: Scope) -> BoxFuture<'q, Result<O, sqlx::Error>> {
        let write = writes(self.sql());
        scoped!(store, scope, write, |e| self.fetch_one(e))
    }

    fn fetch_optional_in(
        self,
        store: &'q Store,
        scope: Scope,
    ) -> BoxFuture<'q, Result<Option<O>, sqlx::Error>> {
        let write = writes(self.sql());
        scoped!(store, scope, write, |e| self.fetch_optional(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_plain_identifiers() {
        assert!(valid_role("palisade_app"));
        assert!(!valid_role("app; DROP TABLE users"));
        assert!(!valid_role("App"));
        assert!(!valid_role(""));
    }

    #[test]
    fn statements_that_may_write_take_the_writers_turn() {
        assert!(!writes("SELECT 1"));
        assert!(!writes("  select id FROM users"));
        assert!(writes("INSERT INTO jobs VALUES (1) RETURNING id"));
        assert!(writes("UPDATE jobs SET x = 1 RETURNING id"));
        assert!(writes(
            "WITH d AS (DELETE FROM x RETURNING id) SELECT id FROM d"
        ));
        assert!(writes(""));
    }

    #[test]
    fn value_rows_are_numbered_in_order() {
        let mut sql = String::from("VALUES ");
        push_value_rows(&mut sql, 2, 3);
        assert_eq!(sql, "VALUES ($1, $2, $3), ($4, $5, $6)");
    }

    #[test]
    fn paths_are_escaped_in_sqlite_urls() {
        assert_eq!(encode_path("/tmp/a b?#%.db"), "/tmp/a%20b%3F%23%25.db");
    }
}
