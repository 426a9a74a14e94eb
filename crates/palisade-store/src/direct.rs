//! The SQLite file's group-committed writes (audit batches, usage rows) run on a connection of
//! the store's own, without sqlx.
//!
//! sqlx runs each SQLite connection on a thread of its own and talks to it over channels: a
//! statement wakes that thread and then the task waiting for it, two context switches that cost
//! more than the statement itself (a WAL-mode commit without fsync takes tens of microseconds),
//! paid by every model request for its audit records and usage row. These writes now run here,
//! synchronously, while the writer holds the writers' turn ([`crate::db::WriteGate`]): in the
//! caller's own task when the turn is free (`Store::flush_audit_here`, `flush_usage_here`),
//! else in the flusher task. Everything else keeps sqlx.
//!
//! Both connections use the one SQLite library linked into the binary (`libsqlite3-sys`, shared
//! with sqlx), so SQLite's per-file lock bookkeeping sees them both.

use std::path::Path;
use std::sync::Mutex;

use palisade_core::{CoreError, CoreResult};

/// A connection to the SQLite file for the flushers' writes.
pub(crate) struct DirectWriter {
    conn: Mutex<rusqlite::Connection>,
}

impl DirectWriter {
    /// Opens `path` (already created and migrated by the pool) with the pool's settings.
    pub(crate) fn open(path: &Path) -> CoreResult<DirectWriter> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; \
             PRAGMA foreign_keys = ON; \
             PRAGMA secure_delete = ON; \
             PRAGMA wal_autocheckpoint = 40000;", // as the pool (db.rs: why 40,000)
        )
        .map_err(err)?;
        // A writer outside the process holding the lock (a CLI on the same file, a TRUNCATE
        // checkpoint) is waited for up to 10 s, as the pool does, and then the batch fails
        // (chained again, or answered with the store's error). The wait blocks the runtime
        // thread it happens on; the other keeps serving.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(CoreError::Storage(format!(
                "the database file is in {mode} mode, not WAL"
            )));
        }
        Ok(DirectWriter {
            conn: Mutex::new(conn),
        })
    }

    /// Runs one statement (prepared once and cached) with `params`; the rows it changed.
    /// The caller holds the writers' turn.
    pub(crate) fn execute<P: rusqlite::Params>(&self, sql: &str, params: P) -> CoreResult<usize> {
        self.with_statement(sql, |stmt| stmt.execute(params))
    }

    /// The first row of a query (prepared once and cached), or `None`.
    pub(crate) fn query_opt<T, P, F>(&self, sql: &str, params: P, row: F) -> CoreResult<Option<T>>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        use rusqlite::OptionalExtension;
        self.with_statement(sql, |stmt| stmt.query_row(params, row).optional())
    }

    /// Runs `f` inside `BEGIN IMMEDIATE … COMMIT`, rolled back when `f` or the commit fails.
    /// The caller holds the writers' turn. (`BEGIN` and `COMMIT` are cached statements:
    /// rusqlite's `Transaction` prepares both afresh each time, ~13,000 instructions apiece.)
    pub(crate) fn in_transaction<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> CoreResult<T> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| CoreError::Internal("the SQLite writer's lock was poisoned".into()))?;
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        run("BEGIN IMMEDIATE").map_err(err)?;
        match f(&conn).and_then(|v| run("COMMIT").map(|_| v)) {
            Ok(v) => Ok(v),
            Err(e) => {
                // Whatever the failure, the transaction ends here, all or nothing.
                if !conn.is_autocommit() {
                    if let Err(r) = conn.execute_batch("ROLLBACK") {
                        tracing::error!(error = %r, "the SQLite writer could not roll back");
                    }
                }
                Err(err(e))
            }
        }
    }

    /// Runs `f` on the cached statement of `sql`.
    fn with_statement<T>(
        &self,
        sql: &str,
        f: impl FnOnce(&mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<T>,
    ) -> CoreResult<T> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| CoreError::Internal("the SQLite writer's lock was poisoned".into()))?;
        let mut stmt = conn.prepare_cached(sql).map_err(err)?;
        f(&mut stmt).map_err(err)
    }
}

/// The store's error for a failed statement, as sqlx reports SQLite's: a storage error.
fn err(e: rusqlite::Error) -> CoreError {
    CoreError::Storage(e.to_string())
}
