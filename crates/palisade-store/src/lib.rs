//! Storage adapters for Palisade's repositories (sqlx): SQLite (WAL) is the embedded default,
//! PostgreSQL (row-level security per tenant) the production one; migrations of both are
//! embedded in the binary.

mod audit;
mod audit_index;
mod batch;
mod chat;
mod copy;
mod crypto;
mod direct;
mod guard;
mod hot;
mod jobs;
mod keys;
mod limits;
mod models;
mod rows;
mod tokens;
mod usage;
mod users;

pub use audit::AuditReport;
pub use copy::{copy_sqlite_to_postgres, CopyReport};
pub use crypto::{MasterKey, MasterSource};
pub use hot::HOT_TTL;

mod db;
#[cfg(feature = "testing")]
pub mod testing;

pub use db::{migrations, Backend, PgSettings};
pub(crate) use db::{Run, RunScalar, Scope};

use palisade_core::entities::now_millis;
use palisade_core::ids::DEFAULT_TENANT;
use palisade_core::{CoreError, CoreResult};
use sqlx::AnyPool;

/// The store: one connection pool implementing every repository port.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    audit: std::sync::Arc<AuditState>,
    /// Encryption at rest (`None`: values are written as they are; tests and tools).
    cipher: Option<std::sync::Arc<crypto::Cipher>>,
    /// Short-lived copies of the rows every authenticated request reads (`hot.rs`).
    hot: std::sync::Arc<hot::HotReads>,
    /// One SQLite writer at a time in this process (see [`db::WriteGate`]).
    write_gate: db::WriteGate,
    /// Usage rows waiting to be added (group commit, see `usage.rs`).
    usage_queue: std::sync::Arc<usage::UsageQueue>,
    /// The SQLite file's connection for the group-committed writes (`direct.rs`); `None` on
    /// PostgreSQL and in memory.
    direct: Option<std::sync::Arc<direct::DirectWriter>>,
    /// The audit search's table in a file of its own (`audit_index.rs`); `None` on PostgreSQL
    /// and in memory, where it is the database's `security_events_search`.
    search: Option<std::sync::Arc<audit_index::SearchFile>>,
}

/// The audit chain's key, its copies outside the database, and the queue of events waiting
/// for the writer (one batch at a time per process, see `audit.rs`).
struct AuditState {
    key: palisade_core::audit::AuditKey,
    /// Set once, by the server, for every clone of the store.
    mirror: std::sync::OnceLock<std::sync::Arc<dyn palisade_core::audit::AuditMirror>>,
    queue: batch::Batcher<audit::Pending>,
    /// The newest link of each chain this process wrote or read (SQLite only; see
    /// `audit.rs`): position and hash. Emptied whenever a write fails.
    heads: std::sync::Mutex<std::collections::HashMap<String, (i64, String)>>,
}

impl AuditState {
    fn new(key: palisade_core::audit::AuditKey) -> std::sync::Arc<AuditState> {
        std::sync::Arc::new(AuditState {
            key,
            mirror: std::sync::OnceLock::new(),
            queue: batch::Batcher::new(audit::MAX_BATCH).yielding_when_busy(audit::BUSY_YIELDS),
            heads: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }
}

/// Times one repository operation for spec 003's `db_query_duration_seconds{query_type}`:
/// recorded when dropped, so every way out of the operation (errors included) counts.
pub(crate) struct Timed {
    query_type: &'static str,
    started: std::time::Instant,
    _span: tracing::Span,
}

pub(crate) fn timed(query_type: &'static str) -> Timed {
    Timed {
        query_type,
        started: std::time::Instant::now(),
        // A trace span for the query (only when trace export wants debug spans; otherwise a
        // disabled span costs nothing). It closes when the guard drops.
        _span: tracing::debug_span!(
            "db.query",
            otel.kind = "client",
            db.operation.name = query_type
        ),
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        metrics::histogram!("db_query_duration_seconds", "query_type" => self.query_type)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// A database error as the core sees it: a lost or refused connection is a transient outage
/// ([`CoreError::StorageUnavailable`], 503 to clients), anything else a storage error.
pub(crate) fn db_err(e: sqlx::Error) -> CoreError {
    if is_outage(&e) {
        CoreError::StorageUnavailable(e.to_string())
    } else {
        CoreError::Storage(e.to_string())
    }
}

/// Errors of reaching the database rather than of a statement: I/O and TLS failures, the pool
/// timing out or closed, and PostgreSQL's connection exceptions (SQLSTATE class 08) and
/// operator interventions (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect
/// now).
fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite database file and runs the migrations.
    pub async fn open_sqlite(path: &std::path::Path) -> CoreResult<Store> {
        // The search file exists, in WAL mode with its table, before the pool attaches it.
        let search_path = audit_index::search_path(path);
        let search = audit_index::SearchFile::create(&search_path)?;
        let pool = db::sqlite_file(path, &search_path).await?;
        let mut store = Self::init(pool, Backend::Sqlite).await?;
        store.direct = Some(std::sync::Arc::new(direct::DirectWriter::open(path)?));
        search.attach_events(path)?;
        store.search = Some(std::sync::Arc::new(search));
        db::spawn_sqlite_checkpointer(store.pool.clone());
        audit_index::spawn_audit_indexer(store.clone());
        Ok(store)
    }

    /// A private in-memory database (for tests and `--embedded` runs).
    pub async fn open_in_memory() -> CoreResult<Store> {
        let pool = db::sqlite_memory().await?;
        let store = Self::init(pool, Backend::Sqlite).await?;
        audit_index::spawn_audit_indexer(store.clone());
        Ok(store)
    }

    /// Connects to PostgreSQL (`postgres://...`), runs the migrations once (an advisory lock
    /// keeps replicas starting together from racing) and checks that the role queries run as
    /// cannot bypass row-level security.
    pub async fn open_postgres(url: &str, settings: &PgSettings) -> CoreResult<Store> {
        db::migrate_postgres(url).await?;
        let pool = db::postgres_pool(url, settings).await?;
        Self::init(pool, Backend::Postgres).await
    }

    /// Runs the PostgreSQL migrations and nothing else (`palisade db migrate`); returns the
    /// number of migrations applied now.
    pub async fn migrate_postgres(url: &str) -> CoreResult<usize> {
        db::migrate_postgres(url).await
    }

    /// Which database this store is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn init(pool: AnyPool, backend: Backend) -> CoreResult<Store> {
        if backend == Backend::Sqlite {
            sqlx::migrate!("migrations/sqlite")
                .run(&pool)
                .await
                .map_err(|e| CoreError::Storage(format!("migration failed: {e}")))?;
        }
        // A store opened without the server's key (tests, tools) still chains its events,
        // under a key of its own that nobody else holds.
        let store = Store {
            pool,
            backend,
            audit: AuditState::new(palisade_core::audit::AuditKey::generate()),
            cipher: None,
            hot: std::sync::Arc::new(hot::HotReads::new(hot::HOT_TTL)),
            write_gate: db::WriteGate::default(),
            usage_queue: std::sync::Arc::new(
                usage::UsageQueue::new(usage::MAX_BATCH).yielding_when_busy(usage::BUSY_YIELDS),
            ),
            direct: None,
            search: None,
        };
        store.ensure_default_tenant().await?;
        Ok(store)
    }

    /// The audit search's table, as the pool's connections name it.
    pub(crate) fn search_table(&self) -> &'static str {
        if self.search.is_some() {
            "search.security_events_search"
        } else {
            "security_events_search"
        }
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
        sqlx::query(
            "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(DEFAULT_TENANT.to_string())
        .bind("default")
        .bind(now_millis())
        .execute_in(self, Scope::System)
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
