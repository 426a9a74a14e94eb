//! The refresh-token repository on SQLite: rotation is one transaction, reuse revokes the family.

use async_trait::async_trait;
use palisade_core::entities::Millis;
use palisade_core::identity::AuthSession;
use palisade_core::ids::{TenantId, TokenFamilyId, UserId};
use palisade_core::ports::{ConsumeOutcome, RefreshTokenRecord, RefreshTokenRepository};
use palisade_core::CoreResult;

use sqlx::any::AnyRow;

use crate::rows::{get, id};
use crate::{db_err, Run, RunScalar, Scope, Store};

const SESSION_COLS: &str =
    "id, tenant_id, user_id, created_at, last_used_at, expires_at, user_agent, ip, revoked";

fn session_from(row: &AnyRow) -> CoreResult<AuthSession> {
    Ok(AuthSession {
        id: id(row, "id")?,
        tenant_id: id(row, "tenant_id")?,
        user_id: id(row, "user_id")?,
        created_at: get(row, "created_at")?,
        last_used_at: get(row, "last_used_at")?,
        expires_at: get(row, "expires_at")?,
        user_agent: get(row, "user_agent")?,
        ip: get(row, "ip")?,
        revoked: get::<i64>(row, "revoked")? != 0,
    })
}

#[async_trait]
impl RefreshTokenRepository for Store {
    async fn create_auth_session(&self, s: &AuthSession) -> CoreResult<()> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let _timed = crate::timed("create_auth_session");
        sqlx::query(&format!(
            "INSERT INTO auth_sessions ({SESSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(s.id.to_string())
        .bind(s.tenant_id.to_string())
        .bind(s.user_id.to_string())
        .bind(s.created_at)
        .bind(s.last_used_at)
        .bind(s.expires_at)
        .bind(&s.user_agent)
        .bind(&s.ip)
        .bind(i64::from(s.revoked))
        .execute_in(self, Scope::Tenant(s.tenant_id))
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn get_auth_session(&self, sid: TokenFamilyId) -> CoreResult<Option<AuthSession>> {
        let load = async {
            let _timed = crate::timed("get_auth_session");
            let row = sqlx::query(&format!(
                "SELECT {SESSION_COLS} FROM auth_sessions WHERE id = $1"
            ))
            .bind(sid.to_string())
            .fetch_optional_in(self, Scope::System)
            .await
            .map_err(db_err)?;
            row.as_ref().map(session_from).transpose()
        };
        self.hot.sessions.read(&self.hot, &sid, load).await
    }

    async fn list_auth_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        now: Millis,
    ) -> CoreResult<Vec<AuthSession>> {
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLS} FROM auth_sessions WHERE tenant_id = $1 AND user_id = $2 \
             AND revoked = 0 AND expires_at > $3 ORDER BY created_at DESC LIMIT 500"
        ))
        .bind(tenant.to_string())
        .bind(user.to_string())
        .bind(now)
        .fetch_all_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        rows.iter().map(session_from).collect()
    }

    async fn revoke_auth_session(
        &self,
        tenant: TenantId,
        user: UserId,
        sid: TokenFamilyId,
    ) -> CoreResult<bool> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let mut tx = self.begin(Scope::Tenant(tenant)).await?;
        let r = sqlx::query(
            "UPDATE auth_sessions SET revoked = 1 WHERE id = $1 AND tenant_id = $2 AND user_id = $3",
        )
        .bind(sid.to_string())
        .bind(tenant.to_string())
        .bind(user.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked = 1 \
             WHERE family_id = $1 AND tenant_id = $2 AND user_id = $3",
        )
        .bind(sid.to_string())
        .bind(tenant.to_string())
        .bind(user.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() > 0)
    }

    async fn insert(&self, r: RefreshTokenRecord) -> CoreResult<()> {
        let _timed = crate::timed("refresh_insert");
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, tenant_id, user_id, created_at, \
             expires_at, family_expires_at, used_at, revoked) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
        .execute_in(self, Scope::Tenant(r.tenant_id))
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn consume(&self, token_hash: &str, now: Millis) -> CoreResult<ConsumeOutcome> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let _timed = crate::timed("refresh_consume");
        let mut tx = self.begin(Scope::System).await?;
        let row = sqlx::query(
            "SELECT token_hash, family_id, tenant_id, user_id, created_at, expires_at, \
             family_expires_at, used_at, revoked FROM refresh_tokens WHERE token_hash = $1",
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
            sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = $1")
                .bind(rec.family_id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            sqlx::query("UPDATE auth_sessions SET revoked = 1 WHERE id = $1")
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
            "UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
        )
        .bind(now)
        .bind(token_hash)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query("UPDATE auth_sessions SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(rec.family_id.to_string())
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
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let _timed = crate::timed("revoke_family");
        let mut tx = self.begin(Scope::System).await?;
        sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = $1")
            .bind(family.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("UPDATE auth_sessions SET revoked = 1 WHERE id = $1")
            .bind(family.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn revoke_family_of(&self, token_hash: &str) -> CoreResult<bool> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let family: Option<String> =
            sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional_in(self, Scope::System)
                .await
                .map_err(db_err)?;
        match family.and_then(|f| f.parse::<TokenFamilyId>().ok()) {
            Some(f) => {
                self.revoke_family(f).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn revoke_user(&self, tenant: TenantId, user: UserId) -> CoreResult<()> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let _timed = crate::timed("revoke_user");
        let mut tx = self.begin(Scope::Tenant(tenant)).await?;
        for table in ["refresh_tokens", "auth_sessions"] {
            sqlx::query(&format!(
                "UPDATE {table} SET revoked = 1 WHERE tenant_id = $1 AND user_id = $2"
            ))
            .bind(tenant.to_string())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }
}
