//! The audit search's index on SQLite: `security_events_search` (migration 0017).
//!
//! Every index of `security_events` cost each appended event a page of its own in the WAL: an
//! event with the search's six indexes wrote ~10 pages (40 kB), and a model request appends two.
//! The searchable columns are therefore copied, a batch at a time, into a table of their own that
//! carries the search indexes: a batch of a few hundred events touches a handful of leaves per
//! index instead of one each. An appended event now writes its row and its chain's index entry
//! (since migration 0018, which dropped the `created_at` index and AUTOINCREMENT's
//! `sqlite_sequence` row: the export's `--since` starts from this table's time index).
//!
//! The copy follows `seq`: SQLite has one writer at a time, so events are committed in `seq`
//! order and everything up to the newest copied position is in the table. A search reads the
//! table up to that position and `security_events` beyond it (`keys.rs`), so an event is
//! searchable the moment it is committed. PostgreSQL keeps its indexes on `security_events`:
//! its replicas append concurrently and commit positions out of order.
//!
//! On a SQLite file the table lives in a file of its own beside the database
//! (`palisade-search.db`, attached to every connection of the pool as `search`), written by a
//! connection of its own ([`SearchFile`]): a copy then takes that file's write lock only, never
//! the database's, and appends go on meanwhile. In the database's file a copy held the writers'
//! turn ~0.6 ms every 20 ms at 1,000 requests/s; with the indexer off the benchmark's added p99
//! there fell from 1.63–2.12 to 1.28–1.40 ms (2026-12-07). The file holds only what can be
//! copied again: lost or deleted, it is refilled from `security_events` at the next start.
//! In memory (tests, `--embedded`) the table stays in the database (migration 0017).

use palisade_core::{CoreError, CoreResult};

use crate::{db_err, Backend, Store};

/// The most events one copy takes. The writers' turn is held meanwhile, so a copy is kept
/// short: ~2 ms for the ~200 events of 100 ms at 1,000 requests/s on the 2-core machine
/// (2026-12-07), which reached the p99 of the requests queued behind it; 20 ms of events,
/// at most this many, take a fraction of that. A longer backlog is copied in several turns.
const INDEX_BATCH: usize = 256;

/// Copies the events of `events` after the newest one in `search` (at most `$1`): one
/// statement, so it is all or none, and a second process doing the same at once finds the rows
/// copied.
fn index_events_sql(search: &str, events: &str) -> String {
    format!(
        "INSERT OR IGNORE INTO {search} \
         (seq, kind, tenant_id, user_id, actor_id, request_id, created_at) \
         SELECT seq, kind, tenant_id, user_id, actor_id, request_id, created_at FROM {events} \
         WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM {search}) ORDER BY seq LIMIT $1"
    )
}

/// The copy in the database's own file (in memory; a store without the search file).
static INDEX_EVENTS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| index_events_sql("security_events_search", "security_events"));

/// The search table's columns and indexes (migration 0017's), for the file of its own.
const SEARCH_SCHEMA: &str = "PRAGMA journal_mode = WAL; \
    CREATE TABLE IF NOT EXISTS security_events_search ( \
        seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, tenant_id TEXT, user_id TEXT, \
        actor_id TEXT, request_id TEXT, created_at INTEGER NOT NULL); \
    CREATE INDEX IF NOT EXISTS idx_security_events_search_tenant ON security_events_search(tenant_id, seq); \
    CREATE INDEX IF NOT EXISTS idx_security_events_search_kind ON security_events_search(kind, seq); \
    CREATE INDEX IF NOT EXISTS idx_security_events_search_user ON security_events_search(user_id, seq); \
    CREATE INDEX IF NOT EXISTS idx_security_events_search_actor ON security_events_search(actor_id, seq) WHERE actor_id IS NOT NULL; \
    CREATE INDEX IF NOT EXISTS idx_security_events_search_request ON security_events_search(request_id) WHERE request_id IS NOT NULL; \
    CREATE INDEX IF NOT EXISTS idx_security_events_search_created ON security_events_search(created_at);";

/// The copy on the search file's own connection: the table is `main`'s there and the events
/// come from the attached database (`ev`).
static INDEX_EVENTS_FILE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    index_events_sql("main.security_events_search", "ev.security_events")
});

/// The search file beside the SQLite database at `db`.
pub(crate) fn search_path(db: &std::path::Path) -> std::path::PathBuf {
    let name = db
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "palisade".into());
    db.with_file_name(format!("{name}-search.db"))
}

/// The search table's file and the connection that copies events into it.
pub(crate) struct SearchFile {
    conn: std::sync::Mutex<rusqlite::Connection>,
}

impl SearchFile {
    /// Opens (creating if needed) the search file at `path` in WAL mode with its table; before
    /// the database's pool attaches it.
    pub(crate) fn create(path: &std::path::Path) -> CoreResult<SearchFile> {
        let conn = rusqlite::Connection::open(path).map_err(search_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(search_err)?;
        conn.execute_batch(SEARCH_SCHEMA).map_err(search_err)?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 10000;")
            .map_err(search_err)?;
        Ok(SearchFile {
            conn: std::sync::Mutex::new(conn),
        })
    }

    /// Attaches the (migrated) database the events are copied from.
    pub(crate) fn attach_events(&self, db: &std::path::Path) -> CoreResult<()> {
        let conn = self.lock()?;
        conn.execute(
            "ATTACH DATABASE ?1 AS ev",
            [db.to_string_lossy().into_owned()],
        )
        .map_err(search_err)?;
        Ok(())
    }

    fn lock(&self) -> CoreResult<std::sync::MutexGuard<'_, rusqlite::Connection>> {
        self.conn
            .lock()
            .map_err(|_| CoreError::Internal("the search file's lock was poisoned".into()))
    }

    /// One copy (see [`index_events_sql`]): how many events it took.
    fn copy(&self) -> CoreResult<usize> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare_cached(&INDEX_EVENTS_FILE)
            .map_err(search_err)?;
        stmt.execute([INDEX_BATCH as i64]).map_err(search_err)
    }
}

fn search_err(e: rusqlite::Error) -> CoreError {
    CoreError::Storage(format!("audit search file: {e}"))
}

/// The newest position copied into the search table named `table`.
pub(crate) fn indexed_upto_sql(table: &str) -> String {
    format!("SELECT COALESCE(MAX(seq), 0) FROM {table}")
}

/// How often the indexer looks for new events while events are being appended...
const INDEX_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
/// ...and at most how long it sleeps while none are (it backs off, doubling).
const INDEX_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

impl Store {
    /// Copies the audit events appended since the last copy into the search table (SQLite;
    /// nothing to do on PostgreSQL): how many were copied, at most 256 per call. The server
    /// calls it in the background; tools may call it to bring the index up to date.
    pub async fn index_audit_events(&self) -> CoreResult<usize> {
        if self.backend != Backend::Sqlite {
            return Ok(0);
        }
        if let Some(search) = &self.search {
            // Its own file and write lock: the database's writers go on meanwhile. On a
            // blocking thread: the search file's own automatic checkpoint fsyncs in its commit.
            let _timed = crate::timed("audit_index");
            let search = std::sync::Arc::clone(search);
            return tokio::task::spawn_blocking(move || search.copy())
                .await
                .map_err(|_| CoreError::Internal("the audit search copy stopped".into()))?;
        }
        let _turn = self.write_gate.lock().await;
        let _timed = crate::timed("audit_index");
        if let Some(writer) = self.direct.as_deref() {
            return writer.execute(&INDEX_EVENTS, [INDEX_BATCH as i64]);
        }
        let done = sqlx::query(&INDEX_EVENTS)
            .bind(INDEX_BATCH as i64)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(usize::try_from(done.rows_affected()).unwrap_or(usize::MAX))
    }
}

/// Runs [`Store::index_audit_events`] every [`INDEX_EVERY`] while events are appended (at once
/// again while a full batch came back), backing off to [`INDEX_IDLE`] while none are, until the
/// store's pool closes.
pub(crate) fn spawn_audit_indexer(store: Store) {
    tokio::spawn(async move {
        let mut every = INDEX_EVERY;
        loop {
            tokio::time::sleep(every).await;
            if store.pool.is_closed() {
                return;
            }
            match store.index_audit_events().await {
                Ok(n) if n >= INDEX_BATCH => every = std::time::Duration::ZERO,
                Ok(0) => every = (every * 2).clamp(INDEX_EVERY, INDEX_IDLE),
                Ok(_) => every = INDEX_EVERY,
                Err(e) => {
                    if store.pool.is_closed() {
                        return;
                    }
                    every = INDEX_IDLE;
                    tracing::warn!(error = %e, "copying audit events into the search index failed; retried");
                }
            }
        }
    });
}
