//! `palisade db copy`: everything an SQLite database holds, copied into a PostgreSQL database
//! (for users who started small). The target is migrated first and must hold no users,
//! conversations or audit events yet. Rows keep their ids, so encrypted content (sealed with the
//! tenant keys, which are copied wrapped by the same master key), the audit chain and every
//! reference stay valid; `palisade audit verify` on the target proves the trail came across
//! whole.
//!
//! The copy runs in one PostgreSQL transaction as the login role (the schema's owner) with the
//! platform scope (`palisade.tenant = '*'`): it all lands, or nothing does.

use std::collections::{BTreeMap, BTreeSet};

use palisade_core::{CoreError, CoreResult};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use crate::db::Backend;
use crate::{db_err, Store};

/// Rows read and written per round trip.
const BATCH: i64 = 500;

/// What was copied: rows per table, in the order they were written.
#[derive(Debug, Default)]
pub struct CopyReport {
    pub tables: Vec<(String, u64)>,
}

/// The kinds of column Palisade's schema uses, by PostgreSQL type.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int,
    Text,
    Bytes,
    Float,
    Bool,
}

fn kind_of(table: &str, column: &str, pg_type: &str) -> CoreResult<Kind> {
    Ok(match pg_type {
        "bigint" | "integer" | "smallint" => Kind::Int,
        "text" | "character varying" | "character" => Kind::Text,
        "bytea" => Kind::Bytes,
        "double precision" | "real" => Kind::Float,
        "boolean" => Kind::Bool,
        other => {
            return Err(CoreError::Storage(format!(
                "copy: column {table}.{column} has a type the copy does not know ({other})"
            )))
        }
    })
}

/// Counts rows of `table` in the target (platform scope).
async fn count(pool: &AnyPool, table: &str) -> CoreResult<i64> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    sqlx::query("SELECT set_config('palisade.tenant', '*', true)")
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(n)
}

/// Tables in an order that writes every referenced row before the rows referring to it.
fn write_order(tables: &[String], edges: &[(String, String)]) -> Vec<String> {
    let mut needs: BTreeMap<&str, BTreeSet<&str>> = tables
        .iter()
        .map(|t| (t.as_str(), BTreeSet::new()))
        .collect();
    for (child, parent) in edges {
        if child != parent {
            if let Some(n) = needs.get_mut(child.as_str()) {
                n.insert(parent.as_str());
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    while !needs.is_empty() {
        let ready: Vec<&str> = needs
            .iter()
            .filter(|(_, n)| n.iter().all(|p| out.iter().any(|o| o == p)))
            .map(|(t, _)| *t)
            .collect();
        // A cycle (none in the schema): write the rest in name order.
        let ready = if ready.is_empty() {
            needs.keys().copied().collect()
        } else {
            ready
        };
        for t in ready {
            needs.remove(t);
            out.push(t.to_string());
        }
    }
    out
}

/// Copies every table of `from` (SQLite, migrated) into the PostgreSQL database at `to_url`
/// (migrated here first). `progress(table, rows_done, rows_total)` is called as batches land.
pub async fn copy_sqlite_to_postgres(
    from: &Store,
    to_url: &str,
    mut progress: impl FnMut(&str, u64, u64),
) -> CoreResult<CopyReport> {
    if from.backend() != Backend::Sqlite {
        return Err(CoreError::validation(
            "copy_source",
            "the copy reads an SQLite database (--from sqlite://PATH)",
        ));
    }
    crate::db::migrate_postgres(to_url).await?;
    let to = AnyPoolOptions::new()
        .max_connections(1)
        .connect(to_url)
        .await
        .map_err(|e| CoreError::Storage(format!("connecting to PostgreSQL: {e}")))?;
    // Both schemas at the same version.
    let version = |pool: AnyPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .map_err(db_err)
    };
    let (src_v, dst_v) = (
        version(from.pool.clone()).await?,
        version(to.clone()).await?,
    );
    if src_v != dst_v {
        return Err(CoreError::validation(
            "schema_mismatch",
            format!("the SQLite schema is at version {src_v} and PostgreSQL at {dst_v}: run both with the same Palisade"),
        ));
    }
    for table in ["users", "messages", "security_events"] {
        if count(&to, table).await? > 0 {
            return Err(CoreError::validation(
                "target_not_empty",
                format!("the PostgreSQL database already holds {table}; copy into a new, empty database"),
            ));
        }
    }

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' \
         AND table_name <> '_sqlx_migrations' ORDER BY table_name",
    )
    .fetch_all(&to)
    .await
    .map_err(db_err)?;
    let edges: Vec<(String, String)> = sqlx::query(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint \
         WHERE contype = 'f' AND connamespace = 'public'::regnamespace",
    )
    .fetch_all(&to)
    .await
    .map_err(db_err)?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect::<Result<_, sqlx::Error>>()
    .map_err(db_err)?;

    let mut tx = to.begin().await.map_err(db_err)?;
    sqlx::query("SELECT set_config('palisade.tenant', '*', true)")
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    let mut report = CopyReport::default();
    for table in write_order(&tables, &edges) {
        let columns: Vec<(String, Kind)> = sqlx::query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| {
            let name: String = r.try_get(0).map_err(db_err)?;
            let ty: String = r.try_get(1).map_err(db_err)?;
            let kind = kind_of(&table, &name, &ty)?;
            Ok((name, kind))
        })
        .collect::<CoreResult<_>>()?;
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&from.pool)
            .await
            .map_err(db_err)?;
        let total = u64::try_from(total).unwrap_or(0);
        let list = columns
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let marks = (1..=columns.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let insert =
            format!("INSERT INTO {table} ({list}) VALUES ({marks}) ON CONFLICT DO NOTHING");
        let select =
            format!("SELECT rowid, {list} FROM {table} WHERE rowid > $1 ORDER BY rowid LIMIT $2");
        let (mut last, mut done) = (i64::MIN, 0u64);
        progress(&table, 0, total);
        loop {
            let rows = sqlx::query(&select)
                .bind(last)
                .bind(BATCH)
                .fetch_all(&from.pool)
                .await
                .map_err(db_err)?;
            let Some(tail) = rows.last() else { break };
            last = tail.try_get(0).map_err(db_err)?;
            for row in &rows {
                let mut q = sqlx::query(&insert);
                for (i, (name, kind)) in columns.iter().enumerate() {
                    let at = i + 1;
                    let bad = |e: sqlx::Error| {
                        CoreError::Storage(format!("copy: reading {table}.{name}: {e}"))
                    };
                    q = match kind {
                        Kind::Int => q.bind(row.try_get::<Option<i64>, _>(at).map_err(bad)?),
                        Kind::Text => q.bind(row.try_get::<Option<String>, _>(at).map_err(bad)?),
                        Kind::Bytes => q.bind(row.try_get::<Option<Vec<u8>>, _>(at).map_err(bad)?),
                        Kind::Float => q.bind(row.try_get::<Option<f64>, _>(at).map_err(bad)?),
                        Kind::Bool => q.bind(row.try_get::<Option<bool>, _>(at).map_err(bad)?),
                    };
                }
                q.execute(&mut *tx).await.map_err(|e| {
                    CoreError::Storage(format!("copy: writing a row of {table}: {e}"))
                })?;
            }
            done += rows.len() as u64;
            progress(&table, done, total);
        }
        // Identity columns continue after the copied ids.
        for (name, kind) in &columns {
            if matches!(kind, Kind::Int) {
                sqlx::query(&format!(
                    "SELECT setval(s, (SELECT COALESCE(MAX({name}), 0) + 1 FROM {table}), false) \
                     FROM pg_get_serial_sequence('{table}', '{name}') AS s WHERE s IS NOT NULL"
                ))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
        }
        report.tables.push((table, done));
    }
    tx.commit().await.map_err(db_err)?;
    to.close().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referenced_tables_are_written_first() {
        let t = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let e = |a: &str, b: &str| (a.to_string(), b.to_string());
        let order = write_order(
            &t(&["messages", "chat_sessions", "users", "tenants", "jobs"]),
            &[
                e("messages", "chat_sessions"),
                e("chat_sessions", "users"),
                e("chat_sessions", "tenants"),
                e("users", "tenants"),
                e("users", "users"),
            ],
        );
        let at = |n: &str| order.iter().position(|o| o == n).unwrap_or(usize::MAX);
        assert!(at("tenants") < at("users"));
        assert!(at("users") < at("chat_sessions"));
        assert!(at("chat_sessions") < at("messages"));
        assert_eq!(order.len(), 5);
    }
}
