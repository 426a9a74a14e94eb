//! The user and tenant repositories on SQLite.

use async_trait::async_trait;
use palisade_core::access::RoleName;
use palisade_core::entities::{now_millis, NewUser, User};
use palisade_core::identity::{LoginState, Tenant, UserQuery, UserUpdate};
use palisade_core::ids::{TenantId, UserId};
use palisade_core::ports::{TenantRepository, UserRepository};
use palisade_core::{CoreError, CoreResult};
use sqlx::any::AnyRow;

use crate::rows::{get, id};
use crate::{db_err, Run, RunScalar, Scope, Store};

const USER_COLS: &str = "id, tenant_id, username, email, password_hash, role, is_active, \
     tokens_valid_after, created_at, updated_at, must_change_password, failed_logins, \
     locked_until, hard_locked, auth_source, totp_secret, totp_enabled, totp_last_step, \
     last_login_at";

fn user_from(row: &AnyRow) -> CoreResult<User> {
    let role: String = get(row, "role")?;
    Ok(User {
        id: id(row, "id")?,
        tenant_id: id(row, "tenant_id")?,
        username: get(row, "username")?,
        email: get(row, "email")?,
        password_hash: get(row, "password_hash")?,
        role: RoleName::new(&role)
            .map_err(|_| CoreError::Storage(format!("corrupt role {role:?}")))?,
        is_active: get::<i64>(row, "is_active")? != 0,
        tokens_valid_after: get(row, "tokens_valid_after")?,
        created_at: get(row, "created_at")?,
        updated_at: get(row, "updated_at")?,
        must_change_password: get::<i64>(row, "must_change_password")? != 0,
        failed_logins: u32::try_from(get::<i64>(row, "failed_logins")?).unwrap_or(u32::MAX),
        locked_until: get(row, "locked_until")?,
        hard_locked: get::<i64>(row, "hard_locked")? != 0,
        auth_source: get(row, "auth_source")?,
        totp_secret: get(row, "totp_secret")?,
        totp_enabled: get::<i64>(row, "totp_enabled")? != 0,
        totp_last_step: get(row, "totp_last_step")?,
        last_login_at: get(row, "last_login_at")?,
    })
}

fn totp_at<'a>(tenant: &'a str, user: &'a str) -> crate::crypto::Place<'a> {
    crate::crypto::Place {
        tenant,
        field: "users.totp_secret",
        row: user,
    }
}

impl Store {
    /// The user with the TOTP secret decrypted.
    async fn open_user(&self, mut u: User) -> CoreResult<User> {
        let (t, row) = (u.tenant_id.to_string(), u.id.to_string());
        u.totp_secret = self
            .open_opt(&totp_at(&t, &row), u.totp_secret.take())
            .await?;
        Ok(u)
    }
}

fn tenant_from(row: &AnyRow) -> CoreResult<Tenant> {
    Ok(Tenant {
        id: id(row, "id")?,
        name: get(row, "name")?,
        is_active: get::<i64>(row, "is_active")? != 0,
        created_at: get(row, "created_at")?,
    })
}

/// Escapes `%`, `_` and `\` for a LIKE pattern used with `ESCAPE '\'`.
fn like_pattern(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[async_trait]
impl UserRepository for Store {
    async fn create_user(&self, u: NewUser) -> CoreResult<User> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let _timed = crate::timed("create_user");
        let now = now_millis();
        let res = sqlx::query(
            "INSERT INTO users (id, tenant_id, username, email, password_hash, role, is_active, \
             tokens_valid_after, created_at, updated_at, must_change_password, auth_source) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, 0, $7, $8, $9, $10)",
        )
        .bind(UserId::new().to_string())
        .bind(u.tenant_id.to_string())
        .bind(&u.username)
        .bind(&u.email)
        .bind(&u.password_hash)
        .bind(u.role.as_str())
        .bind(now)
        .bind(now)
        .bind(i64::from(u.must_change_password))
        .bind(&u.auth_source)
        .execute_in(self, Scope::Tenant(u.tenant_id))
        .await;
        match res {
            Ok(_) => self
                .find_by_username(u.tenant_id, &u.username)
                .await?
                .ok_or_else(|| CoreError::Storage("the new user vanished".into())),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(CoreError::Conflict(
                "a user with this name already exists".into(),
            )),
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                Err(CoreError::NotFound("tenant"))
            }
            Err(e) => Err(db_err(e)),
        }
    }

    async fn find_by_username(&self, tenant: TenantId, username: &str) -> CoreResult<Option<User>> {
        let _timed = crate::timed("find_by_username");
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE tenant_id = $1 AND username = $2"
        ))
        .bind(tenant.to_string())
        .bind(username)
        .fetch_optional_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        match row.as_ref().map(user_from).transpose()? {
            Some(u) => Ok(Some(self.open_user(u).await?)),
            None => Ok(None),
        }
    }

    async fn find_by_id(&self, tenant: TenantId, uid: UserId) -> CoreResult<Option<User>> {
        let load = async {
            let _timed = crate::timed("find_by_id");
            let row = sqlx::query(&format!(
                "SELECT {USER_COLS} FROM users WHERE tenant_id = $1 AND id = $2"
            ))
            .bind(tenant.to_string())
            .bind(uid.to_string())
            .fetch_optional_in(self, Scope::Tenant(tenant))
            .await
            .map_err(db_err)?;
            match row.as_ref().map(user_from).transpose()? {
                Some(u) => Ok(Some(self.open_user(u).await?)),
                None => Ok(None),
            }
        };
        self.hot.users.read(&self.hot, &(tenant, uid), load).await
    }

    async fn count_users(&self) -> CoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        Ok(n.max(0) as u64)
    }

    async fn list_users(
        &self,
        tenant: Option<TenantId>,
        q: &UserQuery,
    ) -> CoreResult<(Vec<User>, u64)> {
        let _timed = crate::timed("list_users");
        let scope = tenant.map(Scope::Tenant).unwrap_or(Scope::System);
        let tenant = tenant.map(|t| t.to_string());
        let pattern = q.search.as_deref().map(like_pattern);
        let filter = "($1 IS NULL OR tenant_id = $1) AND ($2 IS NULL OR \
                      LOWER(username) LIKE LOWER($2) ESCAPE '\\' \
                      OR LOWER(email) LIKE LOWER($2) ESCAPE '\\')";
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE {filter} \
             ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(&tenant)
        .bind(&pattern)
        .bind(i64::from(q.limit))
        .bind(i64::from(q.offset))
        .fetch_all_in(self, scope)
        .await
        .map_err(db_err)?;
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM users WHERE {filter}"))
            .bind(&tenant)
            .bind(&pattern)
            .fetch_one_in(self, scope)
            .await
            .map_err(db_err)?;
        // Listings never need the TOTP secret: it stays sealed, out of the answer.
        let users = rows
            .iter()
            .map(|r| {
                user_from(r).map(|mut u| {
                    u.totp_secret = None;
                    u
                })
            })
            .collect::<CoreResult<Vec<_>>>()?;
        Ok((users, total.max(0) as u64))
    }

    async fn update_user(
        &self,
        tenant: TenantId,
        uid: UserId,
        u: &UserUpdate,
    ) -> CoreResult<Option<User>> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let _timed = crate::timed("update_user");
        let (set_email, email) = match &u.email {
            Some(e) => (true, e.clone()),
            None => (false, None),
        };
        let r = sqlx::query(
            "UPDATE users SET \
               email = CASE WHEN $1 THEN $2 ELSE email END, \
               role = COALESCE($3, role), \
               is_active = COALESCE($4, is_active), \
               password_hash = COALESCE($5, password_hash), \
               must_change_password = COALESCE($6, must_change_password), \
               failed_logins = CASE WHEN $7 THEN 0 ELSE failed_logins END, \
               locked_until = CASE WHEN $8 THEN 0 ELSE locked_until END, \
               hard_locked = CASE WHEN $9 THEN 0 ELSE hard_locked END, \
               updated_at = $10 \
             WHERE tenant_id = $11 AND id = $12",
        )
        .bind(set_email)
        .bind(email)
        .bind(u.role.as_ref().map(|r| r.as_str().to_string()))
        .bind(u.is_active.map(i64::from))
        .bind(&u.password_hash)
        .bind(u.must_change_password.map(i64::from))
        .bind(u.unlock)
        .bind(u.unlock)
        .bind(u.unlock)
        .bind(now_millis())
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .execute_in(self, Scope::Tenant(tenant))
        .await;
        match r {
            Ok(r) if r.rows_affected() == 0 => Ok(None),
            Ok(_) => self.find_by_id(tenant, uid).await,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(CoreError::Conflict("this value is already taken".into()))
            }
            Err(e) => Err(db_err(e)),
        }
    }

    async fn delete_user(&self, tenant: TenantId, uid: UserId) -> CoreResult<bool> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let mut tx = self.begin(Scope::Tenant(tenant)).await?;
        // Refresh tokens, sessions, keys, links and codes cascade; chats cascade through
        // sessions; tokens reference the user directly.
        let r = sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.to_string())
            .bind(uid.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(r.rows_affected() > 0)
    }

    async fn set_tokens_valid_after(
        &self,
        tenant: TenantId,
        uid: UserId,
        at_secs: i64,
    ) -> CoreResult<()> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let _timed = crate::timed("set_tokens_valid_after");
        sqlx::query(
            "UPDATE users SET tokens_valid_after = CASE WHEN tokens_valid_after < $1 THEN $1 \
             ELSE tokens_valid_after END, updated_at = $2 \
             WHERE tenant_id = $3 AND id = $4",
        )
        .bind(at_secs)
        .bind(now_millis())
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .execute_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn set_login_state(
        &self,
        tenant: TenantId,
        uid: UserId,
        s: LoginState,
    ) -> CoreResult<()> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let _timed = crate::timed("set_login_state");
        sqlx::query(
            "UPDATE users SET failed_logins = $1, locked_until = $2, hard_locked = $3, \
             last_login_at = COALESCE($4, last_login_at) WHERE tenant_id = $5 AND id = $6",
        )
        .bind(i64::from(s.failed_logins))
        .bind(s.locked_until)
        .bind(i64::from(s.hard_locked))
        .bind(s.last_login_at)
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .execute_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn set_totp(
        &self,
        tenant: TenantId,
        uid: UserId,
        secret: Option<&str>,
        enabled: bool,
    ) -> CoreResult<()> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let (t, row) = (tenant.to_string(), uid.to_string());
        let secret = self.seal_opt(&totp_at(&t, &row), secret).await?;
        sqlx::query(
            "UPDATE users SET totp_secret = $1, totp_enabled = $2, updated_at = $3 \
             WHERE tenant_id = $4 AND id = $5",
        )
        .bind(secret)
        .bind(i64::from(enabled))
        .bind(now_millis())
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .execute_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn claim_totp_step(&self, tenant: TenantId, uid: UserId, step: i64) -> CoreResult<bool> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let r = sqlx::query(
            "UPDATE users SET totp_last_step = $1 \
             WHERE tenant_id = $2 AND id = $3 AND totp_last_step < $4",
        )
        .bind(step)
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .bind(step)
        .execute_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_recovery_codes(
        &self,
        tenant: TenantId,
        uid: UserId,
        hashes: &[String],
    ) -> CoreResult<()> {
        let mut tx = self.begin(Scope::Tenant(tenant)).await?;
        sqlx::query("DELETE FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant.to_string())
            .bind(uid.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        for h in hashes {
            sqlx::query(
                "INSERT INTO recovery_codes (tenant_id, user_id, code_hash) VALUES ($1, $2, $3)",
            )
            .bind(tenant.to_string())
            .bind(uid.to_string())
            .bind(h)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn use_recovery_code(
        &self,
        tenant: TenantId,
        uid: UserId,
        hash: &str,
    ) -> CoreResult<bool> {
        let r = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 \
             WHERE tenant_id = $2 AND user_id = $3 AND code_hash = $4 AND used_at IS NULL",
        )
        .bind(now_millis())
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .bind(hash)
        .execute_in(self, Scope::Tenant(tenant))
        .await
        .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }
}

#[async_trait]
impl TenantRepository for Store {
    async fn create_tenant(&self, name: &str) -> CoreResult<Tenant> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let t = Tenant {
            id: TenantId::new(),
            name: name.to_string(),
            is_active: true,
            created_at: now_millis(),
        };
        let r = sqlx::query(
            "INSERT INTO tenants (id, name, created_at, is_active) VALUES ($1, $2, $3, 1)",
        )
        .bind(t.id.to_string())
        .bind(&t.name)
        .bind(t.created_at)
        .execute_in(self, Scope::System)
        .await;
        match r {
            Ok(_) => Ok(t),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(CoreError::Conflict(
                "a tenant with this name already exists".into(),
            )),
            Err(e) => Err(db_err(e)),
        }
    }

    async fn get_tenant(&self, tid: TenantId) -> CoreResult<Option<Tenant>> {
        let load = async {
            let row =
                sqlx::query("SELECT id, name, is_active, created_at FROM tenants WHERE id = $1")
                    .bind(tid.to_string())
                    .fetch_optional_in(self, Scope::System)
                    .await
                    .map_err(db_err)?;
            row.as_ref().map(tenant_from).transpose()
        };
        self.hot.tenants.read(&self.hot, &tid, load).await
    }

    async fn find_tenant_by_name(&self, name: &str) -> CoreResult<Option<Tenant>> {
        let row =
            sqlx::query("SELECT id, name, is_active, created_at FROM tenants WHERE name = $1")
                .bind(name)
                .fetch_optional_in(self, Scope::System)
                .await
                .map_err(db_err)?;
        row.as_ref().map(tenant_from).transpose()
    }

    async fn list_tenants(&self) -> CoreResult<Vec<Tenant>> {
        let rows =
            sqlx::query("SELECT id, name, is_active, created_at FROM tenants ORDER BY created_at")
                .fetch_all_in(self, Scope::System)
                .await
                .map_err(db_err)?;
        rows.iter().map(tenant_from).collect()
    }

    async fn set_tenant_active(&self, tid: TenantId, active: bool) -> CoreResult<bool> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let r = sqlx::query("UPDATE tenants SET is_active = $1 WHERE id = $2")
            .bind(i64::from(active))
            .bind(tid.to_string())
            .execute_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() > 0)
    }
}
