//! Usage counters per day, user, API key and model: one row each, added to in place.

use async_trait::async_trait;
use palisade_core::quota::{UsageQuery, UsageRepository, UsageRow};
use std::collections::HashMap;

use palisade_core::{CoreError, CoreResult};
use sqlx::Row;

use crate::{db_err, Run, Scope, Store};

fn count(row: &sqlx::any::AnyRow, col: &str) -> CoreResult<u64> {
    let v: i64 = row.try_get(col).map_err(db_err)?;
    Ok(u64::try_from(v).unwrap_or(0))
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl UsageRepository for Store {
    /// Adds `d` to its day's row and returns once that is committed. Rows that arrive while a
    /// batch is being written wait and go together in the next statement, rows of the same
    /// day, user, key and model added up first (group commit): under load one upsert serves
    /// many requests.
    async fn add_usage(&self, d: &UsageRow) -> CoreResult<()> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let start = self
            .usage_queue
            .push((d.clone(), done))
            .map_err(|_| CoreError::Storage("usage queue poisoned".into()))?;
        // Under load (the last batch held more than one row) a flusher task writes, after
        // letting the tasks ready to run queue their rows ([`BUSY_YIELDS`]), as the audit
        // trail's does; at low load the caller writes at once.
        if start && (self.usage_queue.busy() || !self.flush_usage_here()) {
            let store = self.clone();
            tokio::spawn(async move { store.flush_usage().await });
        }
        wait.await
            .map_err(|_| CoreError::Storage("the usage writer stopped".into()))?
    }

    async fn usage(&self, q: &UsageQuery) -> CoreResult<Vec<UsageRow>> {
        let _timed = crate::timed("usage_report");
        let rows = sqlx::query(
            "SELECT day, tenant_id, user_id, key_id, model, requests, prompt_tokens, \
             completion_tokens, compute_ms, guard_blocks, rate_limited FROM usage_daily \
             WHERE day >= $1 AND day <= $2 AND ($3 IS NULL OR tenant_id = $4) \
             AND ($5 IS NULL OR user_id = $6) \
             ORDER BY day, tenant_id, user_id, key_id, model LIMIT 100000",
        )
        .bind(&q.from_day)
        .bind(&q.to_day)
        .bind(q.tenant.map(|t| t.to_string()))
        .bind(q.tenant.map(|t| t.to_string()))
        .bind(q.user.map(|u| u.to_string()))
        .bind(q.user.map(|u| u.to_string()))
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(UsageRow {
                day: row.try_get("day").map_err(db_err)?,
                tenant_id: row.try_get("tenant_id").map_err(db_err)?,
                user_id: row.try_get("user_id").map_err(db_err)?,
                key_id: row.try_get("key_id").map_err(db_err)?,
                model: row.try_get("model").map_err(db_err)?,
                requests: count(&row, "requests")?,
                prompt_tokens: count(&row, "prompt_tokens")?,
                completion_tokens: count(&row, "completion_tokens")?,
                compute_ms: count(&row, "compute_ms")?,
                guard_blocks: count(&row, "guard_blocks")?,
                rate_limited: count(&row, "rate_limited")?,
            });
        }
        Ok(out)
    }
}

/// Usage rows waiting for the writer, and who waits for each (one flusher per process).
pub(crate) type UsageQueue =
    crate::batch::Batcher<(UsageRow, tokio::sync::oneshot::Sender<CoreResult<()>>)>;

/// Adds up rows of the same day, tenant, user, key and model.
fn merged(rows: impl Iterator<Item = UsageRow>) -> Vec<UsageRow> {
    let mut out: Vec<UsageRow> = Vec::new();
    let mut at: HashMap<(String, String, String, String, String), usize> = HashMap::new();
    for r in rows {
        let k = (
            r.day.clone(),
            r.tenant_id.clone(),
            r.user_id.clone(),
            r.key_id.clone(),
            r.model.clone(),
        );
        match at.get(&k) {
            Some(&i) => out[i].add(&r),
            None => {
                at.insert(k, out.len());
                out.push(r);
            }
        }
    }
    out
}

/// How often the usage flusher of a busy queue steps back behind the ready tasks before it
/// drains: ~2 rows a commit over the gateway benchmark instead of ~1.3 (bench/README.md,
/// session 32). Once, not twice as the audit trail's: the trail's commits gather the most when
/// these wait less.
pub(crate) const BUSY_YIELDS: usize = 1;

/// The most rows one batch holds: 11 parameters each, 11,000 in all (below the limits of
/// SQLite and PostgreSQL).
pub(crate) const MAX_BATCH: usize = 1000;

/// The columns of a usage row, in the order [`upsert`] binds them.
const COLS: usize = 11;

/// One statement adding `n` rows of distinct groups (see [`merged`]: PostgreSQL refuses an
/// upsert that touches a row twice) to their days' counters.
fn upsert_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO usage_daily (day, tenant_id, user_id, key_id, model, requests, \
         prompt_tokens, completion_tokens, compute_ms, guard_blocks, rate_limited) VALUES ",
    );
    crate::db::push_value_rows(&mut sql, n, COLS);
    sql.push_str(
        " ON CONFLICT(tenant_id, day, user_id, key_id, model) DO UPDATE SET \
         requests = usage_daily.requests + excluded.requests, \
         prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, \
         compute_ms = usage_daily.compute_ms + excluded.compute_ms, \
         guard_blocks = usage_daily.guard_blocks + excluded.guard_blocks, \
         rate_limited = usage_daily.rate_limited + excluded.rate_limited",
    );
    sql
}

/// Answers everyone waiting for a batch with its outcome.
fn answer(waiting: Vec<tokio::sync::oneshot::Sender<CoreResult<()>>>, written: CoreResult<()>) {
    match written {
        Ok(()) => {
            for w in waiting {
                let _ = w.send(Ok(()));
            }
        }
        Err(e) => {
            let unavailable = matches!(e, CoreError::StorageUnavailable(_));
            let why = e.to_string();
            for w in waiting {
                let _ = w.send(Err(if unavailable {
                    CoreError::StorageUnavailable(why.clone())
                } else {
                    CoreError::Storage(why.clone())
                }));
            }
        }
    }
}

/// The columns of `rows` in the order [`upsert`] binds them, for the SQLite file's own
/// writer (`direct.rs`).
fn columns(rows: &[UsageRow]) -> Vec<rusqlite::types::Value> {
    use rusqlite::types::Value::{Integer, Text};
    let mut v = Vec::with_capacity(rows.len() * COLS);
    for d in rows {
        v.extend([
            Text(d.day.clone()),
            Text(d.tenant_id.clone()),
            Text(d.user_id.clone()),
            Text(d.key_id.clone()),
            Text(d.model.clone()),
            Integer(signed(d.requests)),
            Integer(signed(d.prompt_tokens)),
            Integer(signed(d.completion_tokens)),
            Integer(signed(d.compute_ms)),
            Integer(signed(d.guard_blocks)),
            Integer(signed(d.rate_limited)),
        ]);
    }
    v
}

/// Adds `rows` (merged) in one statement on the SQLite file's own connection (`direct.rs`);
/// the caller holds the writers' turn.
fn write_usage_direct(writer: &crate::direct::DirectWriter, rows: &[UsageRow]) -> CoreResult<()> {
    writer
        .execute(
            &upsert_sql(rows.len()),
            rusqlite::params_from_iter(columns(rows)),
        )
        .map(|_| ())
}

/// `sql` (from [`upsert_sql`]) with the columns of `rows`.
fn upsert<'q>(
    sql: &'q str,
    rows: &'q [UsageRow],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(sql);
    for d in rows {
        q = q
            .bind(&d.day)
            .bind(&d.tenant_id)
            .bind(&d.user_id)
            .bind(&d.key_id)
            .bind(&d.model)
            .bind(signed(d.requests))
            .bind(signed(d.prompt_tokens))
            .bind(signed(d.completion_tokens))
            .bind(signed(d.compute_ms))
            .bind(signed(d.guard_blocks))
            .bind(signed(d.rate_limited));
    }
    q
}

impl Store {
    /// The usage flusher: writes what has gathered, batch after batch, until none is left.
    async fn flush_usage(&self) {
        self.usage_queue
            .drain(|batch| self.flush_usage_batch(batch))
            .await;
    }

    /// Writes what has gathered right here, in the caller's task, when the SQLite file has its
    /// own writer (`direct.rs`) and the writers' turn is free (as the audit trail does, see
    /// `Store::flush_audit_here`); `false` when a flusher task must do it.
    fn flush_usage_here(&self) -> bool {
        let Some(writer) = self.direct.as_deref() else {
            return false;
        };
        let Ok(_turn) = self.write_gate.try_lock() else {
            return false;
        };
        self.usage_queue.drain_now(|batch| {
            let (rows, waiting): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let rows = merged(rows.into_iter());
            let _timed = crate::timed("add_usage");
            answer(waiting, write_usage_direct(writer, &rows));
        });
        true
    }

    /// Writes one batch of rows and answers everyone waiting in it.
    #[allow(clippy::type_complexity)]
    async fn flush_usage_batch(
        &self,
        batch: Vec<(UsageRow, tokio::sync::oneshot::Sender<CoreResult<()>>)>,
    ) {
        let (rows, waiting): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let rows = merged(rows.into_iter());
        answer(waiting, self.write_usage(&rows).await);
    }

    /// Adds `rows` (merged: one per group) in one statement, all or none.
    async fn write_usage(&self, rows: &[UsageRow]) -> CoreResult<()> {
        let _timed = crate::timed("add_usage");
        if rows.is_empty() {
            return Ok(());
        }
        if let Some(writer) = &self.direct {
            let _turn = self.write_gate.lock().await;
            return write_usage_direct(writer, rows);
        }
        let sql = upsert_sql(rows.len());
        upsert(&sql, rows)
            .execute_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, model: &str, tokens: u64) -> UsageRow {
        UsageRow {
            day: "2026-12-06".into(),
            tenant_id: "t".into(),
            user_id: user.into(),
            key_id: String::new(),
            model: model.into(),
            requests: 1,
            prompt_tokens: tokens,
            completion_tokens: 2 * tokens,
            ..UsageRow::default()
        }
    }

    #[test]
    fn rows_of_the_same_group_are_added_up_in_order() {
        let m = merged(
            [
                row("a", "x", 1),
                row("b", "x", 10),
                row("a", "x", 2),
                row("a", "y", 5),
            ]
            .into_iter(),
        );
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].user_id.as_str(), m[0].requests, m[0].prompt_tokens),
            ("a", 2, 3)
        );
        assert_eq!(m[0].completion_tokens, 6);
        assert_eq!((m[1].user_id.as_str(), m[1].prompt_tokens), ("b", 10));
        assert_eq!((m[2].model.as_str(), m[2].prompt_tokens), ("y", 5));
    }
}
