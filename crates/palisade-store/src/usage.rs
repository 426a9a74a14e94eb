//! Usage counters per day, user, API key and model: one row each, added to in place.

use async_trait::async_trait;
use palisade_core::quota::{UsageQuery, UsageRepository, UsageRow};
use palisade_core::CoreResult;
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
    async fn add_usage(&self, d: &UsageRow) -> CoreResult<()> {
        let _timed = crate::timed("add_usage");
        sqlx::query(
            "INSERT INTO usage_daily (day, tenant_id, user_id, key_id, model, requests, \
             prompt_tokens, completion_tokens, compute_ms, guard_blocks, rate_limited) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT(tenant_id, day, user_id, key_id, model) DO UPDATE SET \
             requests = usage_daily.requests + excluded.requests, \
             prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, \
             completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, \
             compute_ms = usage_daily.compute_ms + excluded.compute_ms, \
             guard_blocks = usage_daily.guard_blocks + excluded.guard_blocks, \
             rate_limited = usage_daily.rate_limited + excluded.rate_limited",
        )
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
        .bind(signed(d.rate_limited))
        .execute_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        Ok(())
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
