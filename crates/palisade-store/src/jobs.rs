//! Background jobs and retention on SQLite.

use async_trait::async_trait;
use palisade_core::entities::Millis;
use palisade_core::ids::{TenantId, UserId};
use palisade_core::jobs::{Job, JobRepository, JobState, NewJob};
use palisade_core::retention::{RetentionRepository, TenantRetention, UserHold};
use palisade_core::{CoreError, CoreResult};
use sqlx::any::AnyRow;

use crate::rows::{get, id};
use crate::{db_err, Run, RunScalar, Scope, Store};

const JOB_COLS: &str = "id, kind, tenant_id, payload, state, attempts, max_attempts, run_at, \
                        last_error, created_at, updated_at";

fn job_from(row: &AnyRow) -> CoreResult<Job> {
    let state: String = get(row, "state")?;
    let tenant: Option<String> = get(row, "tenant_id")?;
    let payload: String = get(row, "payload")?;
    Ok(Job {
        id: get(row, "id")?,
        kind: get(row, "kind")?,
        tenant_id: tenant
            .map(|t| {
                t.parse::<uuid::Uuid>()
                    .map(TenantId::from)
                    .map_err(|_| CoreError::Storage("corrupt job tenant".into()))
            })
            .transpose()?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        state: JobState::parse(&state)
            .ok_or_else(|| CoreError::Storage(format!("corrupt job state {state:?}")))?,
        attempts: u32::try_from(get::<i64>(row, "attempts")?).unwrap_or(0),
        max_attempts: u32::try_from(get::<i64>(row, "max_attempts")?).unwrap_or(1),
        run_at: get(row, "run_at")?,
        last_error: get(row, "last_error")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
    })
}

#[async_trait]
impl JobRepository for Store {
    async fn enqueue(&self, j: &NewJob) -> CoreResult<i64> {
        let _timed = crate::timed("job_enqueue");
        let now = palisade_core::entities::now_millis();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (kind, tenant_id, payload, state, attempts, max_attempts, run_at, \
             created_at, updated_at) VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&j.kind)
        .bind(j.tenant_id.map(|t| t.to_string()))
        .bind(j.payload.to_string())
        .bind(i64::from(j.max_attempts.max(1)))
        .bind(j.run_at)
        .bind(now)
        .bind(now)
        .fetch_one_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        Ok(id)
    }

    async fn claim(&self, now: Millis, stale_before: Millis) -> CoreResult<Option<Job>> {
        let _timed = crate::timed("job_claim");
        // One statement: the oldest due job becomes ours, or nobody's. The due condition is
        // repeated outside: on PostgreSQL a replica that lost the race for the row re-checks
        // it after the winner commits, and finds the job no longer due.
        let row = sqlx::query(&format!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = $1 \
             WHERE id = (SELECT id FROM jobs WHERE (state = 'queued' AND run_at <= $2) \
                 OR (state = 'running' AND updated_at < $3) ORDER BY run_at, id LIMIT 1) \
             AND ((state = 'queued' AND run_at <= $2) OR (state = 'running' AND updated_at < $3)) \
             RETURNING {JOB_COLS}"
        ))
        .bind(now)
        .bind(now)
        .bind(stale_before)
        .fetch_optional_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        row.as_ref().map(job_from).transpose()
    }

    async fn complete(&self, id: i64, now: Millis) -> CoreResult<()> {
        let _timed = crate::timed("job_complete");
        sqlx::query(
            "UPDATE jobs SET state = 'done', last_error = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn fail(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
        now: Millis,
    ) -> CoreResult<()> {
        let _timed = crate::timed("job_fail");
        let error: String = error.chars().take(1000).collect();
        match retry_at {
            Some(at) => sqlx::query(
                "UPDATE jobs SET state = 'queued', run_at = $1, last_error = $2, updated_at = $3 \
                 WHERE id = $4",
            )
            .bind(at)
            .bind(&error)
            .bind(now)
            .bind(id),
            None => sqlx::query(
                "UPDATE jobs SET state = 'dead', last_error = $1, updated_at = $2 WHERE id = $3",
            )
            .bind(&error)
            .bind(now)
            .bind(id),
        }
        .execute_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn list_jobs(
        &self,
        state: Option<JobState>,
        tenant: Option<TenantId>,
        limit: u32,
    ) -> CoreResult<Vec<Job>> {
        let state = state.map(JobState::as_str);
        let tenant = tenant.map(|t| t.to_string());
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE ($1 IS NULL OR state = $2) \
             AND ($3 IS NULL OR tenant_id = $4) ORDER BY id DESC LIMIT $5"
        ))
        .bind(state)
        .bind(state)
        .bind(&tenant)
        .bind(&tenant)
        .bind(i64::from(limit))
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        rows.iter().map(job_from).collect()
    }

    async fn get_job(&self, jid: i64) -> CoreResult<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
            .bind(jid)
            .fetch_optional_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        row.as_ref().map(job_from).transpose()
    }

    async fn retry_job(&self, jid: i64, now: Millis) -> CoreResult<bool> {
        let r = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $1, updated_at = $2 \
             WHERE id = $3 AND state = 'dead'",
        )
        .bind(now)
        .bind(now)
        .bind(jid)
        .execute_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn discard_job(&self, jid: i64) -> CoreResult<bool> {
        let r = sqlx::query("DELETE FROM jobs WHERE id = $1 AND state = 'dead'")
            .bind(jid)
            .execute_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn pending(&self, kind: &str) -> CoreResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE kind = $1 AND state IN ('queued', 'running')",
        )
        .bind(kind)
        .fetch_one_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        Ok(n > 0)
    }
}

#[async_trait]
impl RetentionRepository for Store {
    async fn tenant_retentions(&self) -> CoreResult<Vec<TenantRetention>> {
        let rows = sqlx::query(
            "SELECT tenant_id, days, legal_hold, updated_at, updated_by FROM tenant_retention",
        )
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(TenantRetention {
                    tenant_id: id(r, "tenant_id")?,
                    days: get::<Option<i64>>(r, "days")?.map(|d| u32::try_from(d).unwrap_or(0)),
                    legal_hold: get::<i64>(r, "legal_hold")? != 0,
                    updated_at: get(r, "updated_at")?,
                    updated_by: get(r, "updated_by")?,
                })
            })
            .collect()
    }

    async fn put_tenant_retention(&self, r: &TenantRetention) -> CoreResult<()> {
        sqlx::query(
            "INSERT INTO tenant_retention (tenant_id, days, legal_hold, updated_at, updated_by) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO UPDATE SET days = excluded.days, \
             legal_hold = excluded.legal_hold, updated_at = excluded.updated_at, \
             updated_by = excluded.updated_by",
        )
        .bind(r.tenant_id.to_string())
        .bind(r.days.map(i64::from))
        .bind(i64::from(r.legal_hold))
        .bind(r.updated_at)
        .bind(&r.updated_by)
        .execute_in(self, Scope::Tenant(r.tenant_id))
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn user_holds(&self, tenant: Option<TenantId>) -> CoreResult<Vec<UserHold>> {
        let scope = tenant.map(Scope::Tenant).unwrap_or(Scope::System);
        let tenant = tenant.map(|t| t.to_string());
        let rows = sqlx::query(
            "SELECT tenant_id, user_id, reason, created_at, created_by FROM user_holds \
             WHERE ($1 IS NULL OR tenant_id = $2) ORDER BY created_at",
        )
        .bind(&tenant)
        .bind(&tenant)
        .fetch_all_in(self, scope)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(UserHold {
                    tenant_id: id(r, "tenant_id")?,
                    user_id: id(r, "user_id")?,
                    reason: get(r, "reason")?,
                    created_at: get(r, "created_at")?,
                    created_by: get(r, "created_by")?,
                })
            })
            .collect()
    }

    async fn put_user_hold(&self, h: &UserHold) -> CoreResult<()> {
        sqlx::query(
            "INSERT INTO user_holds (tenant_id, user_id, reason, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, user_id) DO UPDATE SET \
             reason = excluded.reason",
        )
        .bind(h.tenant_id.to_string())
        .bind(h.user_id.to_string())
        .bind(&h.reason)
        .bind(h.created_at)
        .bind(&h.created_by)
        .execute_in(self, Scope::Tenant(h.tenant_id))
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn delete_user_hold(&self, tenant: TenantId, user: UserId) -> CoreResult<bool> {
        let r = sqlx::query("DELETE FROM user_holds WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant.to_string())
            .bind(user.to_string())
            .execute_in(self, Scope::Tenant(tenant))
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn purge_conversations(&self, tenant: TenantId, before: Millis) -> CoreResult<u64> {
        // Messages and vaults go with their sessions (foreign keys, and explicitly).
        let mut tx = self.begin(Scope::Tenant(tenant)).await?;
        let doomed = "SELECT id FROM chat_sessions WHERE tenant_id = $1 AND updated_at < $2 \
                      AND user_id NOT IN (SELECT user_id FROM user_holds WHERE tenant_id = $1)";
        for table in ["messages", "guard_vaults"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE tenant_id = $1 AND session_id IN ({doomed})"
            ))
            .bind(tenant.to_string())
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        let r = sqlx::query(&format!(
            "DELETE FROM chat_sessions WHERE tenant_id = $1 AND id IN ({doomed})"
        ))
        .bind(tenant.to_string())
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected())
    }
}
