//! The model registry's admin changes: one row per model name, the entry as JSON or a
//! tombstone.

use async_trait::async_trait;
use palisade_core::models::{ModelRegistryRepository, StoredModel};
use palisade_core::{CoreError, CoreResult};
use sqlx::Row;

use crate::{db_err, Run, Scope, Store};

#[async_trait]
impl ModelRegistryRepository for Store {
    async fn list_models(&self) -> CoreResult<Vec<StoredModel>> {
        let rows = sqlx::query(
            "SELECT name, spec, updated_at, updated_by FROM model_registry ORDER BY name",
        )
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get("name").map_err(db_err)?;
            let raw: Option<String> = row.try_get("spec").map_err(db_err)?;
            let spec = raw
                .map(|s| {
                    serde_json::from_str(&s).map_err(|e| {
                        CoreError::Storage(format!("corrupt model registry entry {name:?}: {e}"))
                    })
                })
                .transpose()?;
            out.push(StoredModel {
                name,
                spec,
                updated_at: row.try_get("updated_at").map_err(db_err)?,
                updated_by: row.try_get("updated_by").map_err(db_err)?,
            });
        }
        Ok(out)
    }

    async fn put_model(&self, m: &StoredModel) -> CoreResult<()> {
        let spec = m
            .spec
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| CoreError::Internal(format!("json: {e}")))?;
        sqlx::query(
            "INSERT INTO model_registry (name, spec, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, \
             updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(&m.name)
        .bind(spec)
        .bind(m.updated_at)
        .bind(&m.updated_by)
        .execute_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
