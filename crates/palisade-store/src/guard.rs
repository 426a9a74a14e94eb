//! Guard policies per tenant set by admins: one row per tenant, the policy as JSON.

use async_trait::async_trait;
use palisade_core::guard_policies::{GuardPolicyRepository, StoredGuardPolicy};
use palisade_core::ids::TenantId;
use palisade_core::{CoreError, CoreResult};
use sqlx::Row;

use crate::rows::id;
use crate::{db_err, Run, Scope, Store};

#[async_trait]
impl GuardPolicyRepository for Store {
    async fn list_guard_policies(&self) -> CoreResult<Vec<StoredGuardPolicy>> {
        let rows = sqlx::query(
            "SELECT tenant_id, policy, updated_at, updated_by FROM guard_policies \
             ORDER BY tenant_id",
        )
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let tenant_id: TenantId = id(&row, "tenant_id")?;
            let raw: String = row.try_get("policy").map_err(db_err)?;
            let policy = serde_json::from_str(&raw).map_err(|e| {
                CoreError::Storage(format!("corrupt guard policy of tenant {tenant_id}: {e}"))
            })?;
            out.push(StoredGuardPolicy {
                tenant_id,
                policy,
                updated_at: row.try_get("updated_at").map_err(db_err)?,
                updated_by: row.try_get("updated_by").map_err(db_err)?,
            });
        }
        Ok(out)
    }

    async fn put_guard_policy(&self, p: &StoredGuardPolicy) -> CoreResult<()> {
        let policy = serde_json::to_string(&p.policy)
            .map_err(|e| CoreError::Internal(format!("json: {e}")))?;
        let res = sqlx::query(
            "INSERT INTO guard_policies (tenant_id, policy, updated_at, updated_by) \
             VALUES ($1, $2, $3, $4) ON CONFLICT(tenant_id) DO UPDATE SET policy = excluded.policy, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(p.tenant_id.to_string())
        .bind(policy)
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

    async fn delete_guard_policy(&self, tenant: TenantId) -> CoreResult<bool> {
        let res = sqlx::query("DELETE FROM guard_policies WHERE tenant_id = $1")
            .bind(tenant.to_string())
            .execute_in(self, Scope::Tenant(tenant))
            .await
            .map_err(db_err)?;
        Ok(res.rows_affected() > 0)
    }
}
