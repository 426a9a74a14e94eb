//! Storage adapters for Palisade's repositories (sqlx). SQLite (WAL) is the embedded default;
//! migrations are embedded in the binary and run on open.

mod audit;
mod chat;
mod crypto;
mod guard;
mod jobs;
mod keys;
mod limits;
mod models;
mod rows;
mod tokens;
mod usage;
mod users;

pub use audit::AuditReport;
pub use crypto::{MasterKey, MasterSource};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use palisade_core::entities::now_millis;
use palisade_core::ids::DEFAULT_TENANT;
use palisade_core::{CoreError, CoreResult};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// The store: one connection pool implementing every repository port.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    audit: std::sync::Arc<AuditState>,
    /// Encryption at rest (`None`: values are written as they are; tests and tools).
    cipher: Option<std::sync::Arc<crypto::Cipher>>,
}

/// The audit chain's key, its copies outside the database, and the queue of events waiting
/// for the writer (one batch at a time per process, see `audit.rs`).
struct AuditState {
    key: palisade_core::audit::AuditKey,
    /// Set once, by the server, for every clone of the store.
    mirror: std::sync::OnceLock<std::sync::Arc<dyn palisade_core::audit::AuditMirror>>,
    writer: tokio::sync::Mutex<()>,
    queue: std::sync::Mutex<Vec<audit::Pending>>,
}

impl AuditState {
    fn new(key: palisade_core::audit::AuditKey) -> std::sync::Arc<AuditState> {
        std::sync::Arc::new(AuditState {
            key,
            mirror: std::sync::OnceLock::new(),
            writer: tokio::sync::Mutex::new(()),
            queue: std::sync::Mutex::new(Vec::new()),
        })
    }
}

/// Times one repository operation for spec 003's `db_query_duration_seconds{query_type}`:
/// recorded when dropped, so every way out of the operation (errors included) counts.
pub(crate) struct Timed {
    query_type: &'static str,
    started: std::time::Instant,
}

pub(crate) fn timed(query_type: &'static str) -> Timed {
    Timed {
        query_type,
        started: std::time::Instant::now(),
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!("db_query_duration_seconds", "query_type" => self.query_type)
            .record(self.started.elapsed().as_secs_f64());
    }
}

pub(crate) fn db_err(e: sqlx::Error) -> CoreError {
    CoreError::Storage(e.to_string())
}

impl Store {
    /// Opens (creating if needed) the SQLite database file and runs the migrations.
    pub async fn open_sqlite(path: &Path) -> CoreResult<Store> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Deleted content (a shredded data key, a purged conversation) is overwritten in
            // the file, not just unlinked.
            .pragma("secure_delete", "on")
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .map_err(db_err)?;
        Self::init(pool).await
    }

    /// A private in-memory database (for tests and `--embedded` runs).
    pub async fn open_in_memory() -> CoreResult<Store> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(db_err)?
            .foreign_keys(true);
        // One connection: every connection of `:memory:` would be its own database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await
            .map_err(db_err)?;
        Self::init(pool).await
    }

    async fn init(pool: SqlitePool) -> CoreResult<Store> {
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| CoreError::Storage(format!("migration failed: {e}")))?;
        // A store opened without the server's key (tests, tools) still chains its events,
        // under a key of its own that nobody else holds.
        let store = Store {
            pool,
            audit: AuditState::new(palisade_core::audit::AuditKey::generate()),
            cipher: None,
        };
        store.ensure_default_tenant().await?;
        Ok(store)
    }

    /// Chains audit events under `key` (the server's audit key).
    pub fn with_audit_key(mut self, key: palisade_core::audit::AuditKey) -> Store {
        self.audit = AuditState::new(key);
        self
    }

    /// Copies every audit event committed from now on to `mirror` too (the file and stdout
    /// sinks), for this store and all its clones. Only the first mirror set counts: `false`
    /// when one was set before.
    pub fn set_audit_mirror(
        &self,
        mirror: std::sync::Arc<dyn palisade_core::audit::AuditMirror>,
    ) -> bool {
        self.audit.mirror.set(mirror).is_ok()
    }

    async fn ensure_default_tenant(&self) -> CoreResult<()> {
        sqlx::query("INSERT OR IGNORE INTO tenants (id, name, created_at) VALUES (?, ?, ?)")
            .bind(DEFAULT_TENANT.to_string())
            .bind("default")
            .bind(now_millis())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
