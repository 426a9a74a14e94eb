//! The audit search's index on SQLite: `security_events_search` (migration 0017).
//!
//! Every index of `security_events` cost each appended event a page of its own in the WAL: an
//! event with the search's six indexes wrote ~10 pages (40 kB), and a model request appends two.
//! The searchable columns are therefore copied, a batch at a time, into a table of their own that
//! carries the search indexes: a batch of a few hundred events touches a handful of leaves per
//! index instead of one each. An appended event now writes its row, its chain's index entry and
//! its `created_at` entry.
//!
//! The copy follows `seq`: SQLite has one writer at a time, so events are committed in `seq`
//! order and everything up to the newest copied position is in the table. A search reads the
//! table up to that position and `security_events` beyond it (`keys.rs`), so an event is
//! searchable the moment it is committed. PostgreSQL keeps its indexes on `security_events`:
//! its replicas append concurrently and commit positions out of order.

use palisade_core::CoreResult;

use crate::{db_err, Backend, Store};

/// The most events one copy takes. The writers' turn is held meanwhile, so a copy is kept
/// short: ~2 ms for the ~200 events of 100 ms at 1,000 requests/s on the 2-core machine
/// (2026-12-07), which reached the p99 of the requests queued behind it; 20 ms of events,
/// at most this many, take a fraction of that. A longer backlog is copied in several turns.
const INDEX_BATCH: usize = 256;

/// Copies the events after the newest one copied (at most [`INDEX_BATCH`]): one statement, so
/// it is all or none, and a second process doing the same at once finds the rows copied.
const INDEX_EVENTS: &str = "INSERT OR IGNORE INTO security_events_search \
    (seq, kind, tenant_id, user_id, actor_id, request_id, created_at) \
    SELECT seq, kind, tenant_id, user_id, actor_id, request_id, created_at FROM security_events \
    WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM security_events_search) ORDER BY seq LIMIT $1";

/// The newest position copied into the search table.
pub(crate) const INDEXED_UPTO: &str = "SELECT COALESCE(MAX(seq), 0) FROM security_events_search";

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
        let _turn = self.write_gate.lock().await;
        let _timed = crate::timed("audit_index");
        if let Some(writer) = self.direct.as_deref() {
            return writer.execute(INDEX_EVENTS, [INDEX_BATCH as i64]);
        }
        let done = sqlx::query(INDEX_EVENTS)
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
