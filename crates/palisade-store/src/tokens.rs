//! The refresh-token repository on SQLite: rotation is one transaction, reuse revokes the family.

use async_trait::async_trait;
use palisade_core::entities::Millis;
use palisade_core::ids::{TenantId, TokenFamilyId, UserId};
use palisade_core::ports::{ConsumeOutcome, RefreshTokenRecord, RefreshTokenRepository};
use palisade_core::CoreResult;

use crate::rows::{get, id};
use crate::{db_err, Store};

#[async_trait]
impl RefreshTokenRepository for Store {
    async fn insert(&self, r: RefreshTokenRecord) -> CoreResult<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, tenant_id, user_id, created_at, \
             expires_at, family_expires_at, used_at, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.token_hash)
        .bind(r.family_id.to_string())
        .bind(r.tenant_id.to_string())
        .bind(r.user_id.to_string())
        .bind(r.created_at)
        .bind(r.expires_at)
        .bind(r.family_expires_at)
        .bind(r.used_at)
        .bind(i64::from(r.revoked))
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn consume(&self, token_hash: &str, now: Millis) -> CoreResult<ConsumeOutcome> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let row = sqlx::query(
            "SELECT token_hash, family_id, tenant_id, user_id, created_at, expires_at, \
             family_expires_at, used_at, revoked FROM refresh_tokens WHERE token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(ConsumeOutcome::Invalid);
        };
        let rec = RefreshTokenRecord {
            token_hash: get(&row, "token_hash")?,
            family_id: id(&row, "family_id")?,
            tenant_id: id(&row, "tenant_id")?,
            user_id: id(&row, "user_id")?,
            created_at: get(&row, "created_at")?,
            expires_at: get(&row, "expires_at")?,
            family_expires_at: get(&row, "family_expires_at")?,
            used_at: get(&row, "used_at")?,
            revoked: get::<i64>(&row, "revoked")? != 0,
        };
        if rec.used_at.is_some() || rec.revoked {
            sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = ?")
                .bind(rec.family_id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            return Ok(ConsumeOutcome::Reused {
                family_id: rec.family_id,
                user_id: rec.user_id,
            });
        }
        if now >= rec.expires_at || now >= rec.family_expires_at {
            return Ok(ConsumeOutcome::Invalid);
        }
        // The `used_at IS NULL` guard makes a concurrent second use lose the race.
        let updated = sqlx::query(
            "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
        )
        .bind(now)
        .bind(token_hash)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        if updated.rows_affected() == 1 {
            Ok(ConsumeOutcome::Consumed(RefreshTokenRecord {
                used_at: Some(now),
                ..rec
            }))
        } else {
            Ok(ConsumeOutcome::Invalid)
        }
    }

    async fn revoke_family(&self, family: TokenFamilyId) -> CoreResult<()> {
        sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = ?")
            .bind(family.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn revoke_family_of(&self, token_hash: &str) -> CoreResult<bool> {
        let r = sqlx::query(
            "UPDATE refresh_tokens SET revoked = 1 WHERE family_id = \
             (SELECT family_id FROM refresh_tokens WHERE token_hash = ?)",
        )
        .bind(token_hash)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() > 0)
    }

    async fn revoke_user(&self, tenant: TenantId, user: UserId) -> CoreResult<()> {
        sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE tenant_id = ? AND user_id = ?")
            .bind(tenant.to_string())
            .bind(user.to_string())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}
