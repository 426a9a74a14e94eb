//! Limit overrides set by admins: one row per (scope, subject), the figures as JSON.

use async_trait::async_trait;
use palisade_core::ids::TenantId;
use palisade_core::limit_policies::{LimitPolicyRepository, LimitScope, StoredLimitPolicy};
use palisade_core::{CoreError, CoreResult};
use sqlx::Row;

use crate::rows::id;
use crate::{db_err, Run, Scope, Store};

#[async_trait]
impl LimitPolicyRepository for Store {
    async fn list_limit_policies(&self) -> CoreResult<Vec<StoredLimitPolicy>> {
        let rows = sqlx::query(
            "SELECT scope, subject, tenant_id, limits, updated_at, updated_by \
             FROM limit_policies ORDER BY tenant_id, scope, subject LIMIT 100000",
        )
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let scope: String = row.try_get("scope").map_err(db_err)?;
            let subject: String = row.try_get("subject").map_err(db_err)?;
            let raw: String = row.try_get("limits").map_err(db_err)?;
            let tenant_id: TenantId = id(&row, "tenant_id")?;
            let corrupt =
                |e: String| CoreError::Storage(format!("corrupt limit override {subject}: {e}"));
            let scope = LimitScope::parse(&scope).map_err(|_| corrupt(scope.clone()))?;
            let limits = serde_json::from_str(&raw).map_err(|e| corrupt(e.to_string()))?;
            out.push(StoredLimitPolicy {
                scope,
                subject,
                tenant_id,
                limits,
                updated_at: row.try_get("updated_at").map_err(db_err)?,
                updated_by: row.try_get("updated_by").map_err(db_err)?,
            });
        }
        Ok(out)
    }

    async fn put_limit_policy(&self, p: &StoredLimitPolicy) -> CoreResult<()> {
        let limits = serde_json::to_string(&p.limits)
            .map_err(|e| CoreError::Internal(format!("json: {e}")))?;
        let res = sqlx::query(
            "INSERT INTO limit_policies (scope, subject, tenant_id, limits, updated_at, \
             updated_by) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT(scope, subject) DO UPDATE SET \
             tenant_id = excluded.tenant_id, limits = excluded.limits, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(p.scope.as_str())
        .bind(&p.subject)
        .bind(p.tenant_id.to_string())
        .bind(limits)
        .bind(p.updated_at)
        .bind(&p.updated_by)
        .execute_in(self, Scope::Tenant(p.tenant_id))
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                Err(CoreError::NotFound("tenant"))
            }
            Err(e) => Err(db_err(e)),
        }
    }

    async fn delete_limit_policy(&self, scope: LimitScope, subject: &str) -> CoreResult<bool> {
        let res = sqlx::query("DELETE FROM limit_policies WHERE scope = $1 AND subject = $2")
            .bind(scope.as_str())
            .bind(subject)
            .execute_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected() > 0)
    }
}
