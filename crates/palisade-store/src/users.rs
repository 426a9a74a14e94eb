//! The user repository on SQLite.

use async_trait::async_trait;
use palisade_core::entities::{now_millis, NewUser, User, UserRole};
use palisade_core::ids::{TenantId, UserId};
use palisade_core::ports::UserRepository;
use palisade_core::{CoreError, CoreResult};
use sqlx::sqlite::SqliteRow;

use crate::rows::{get, id};
use crate::{db_err, Store};

const USER_COLS: &str = "id, tenant_id, username, email, password_hash, role, is_active, \
                         tokens_valid_after, created_at";

fn user_from(row: &SqliteRow) -> CoreResult<User> {
    let role: String = get(row, "role")?;
    Ok(User {
        id: id(row, "id")?,
        tenant_id: id(row, "tenant_id")?,
        username: get(row, "username")?,
        email: get(row, "email")?,
        password_hash: get(row, "password_hash")?,
        role: UserRole::parse(&role)
            .ok_or_else(|| CoreError::Storage(format!("unknown role {role:?}")))?,
        is_active: get::<i64>(row, "is_active")? != 0,
        tokens_valid_after: get(row, "tokens_valid_after")?,
        created_at: get(row, "created_at")?,
    })
}

#[async_trait]
impl UserRepository for Store {
    async fn create_user(&self, u: NewUser) -> CoreResult<User> {
        let now = now_millis();
        let user = User {
            id: UserId::new(),
            tenant_id: u.tenant_id,
            username: u.username,
            email: u.email,
            password_hash: u.password_hash,
            role: u.role,
            is_active: true,
            tokens_valid_after: 0,
            created_at: now,
        };
        let res = sqlx::query(
            "INSERT INTO users (id, tenant_id, username, email, password_hash, role, is_active, \
             tokens_valid_after, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 1, 0, ?, ?)",
        )
        .bind(user.id.to_string())
        .bind(user.tenant_id.to_string())
        .bind(&user.username)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(user),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(CoreError::Conflict(
                "a user with this name already exists".into(),
            )),
            Err(e) => Err(db_err(e)),
        }
    }

    async fn find_by_username(&self, tenant: TenantId, username: &str) -> CoreResult<Option<User>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE tenant_id = ? AND username = ?"
        ))
        .bind(tenant.to_string())
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn find_by_id(&self, tenant: TenantId, uid: UserId) -> CoreResult<Option<User>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS} FROM users WHERE tenant_id = ? AND id = ?"
        ))
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn count_users(&self) -> CoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(n.max(0) as u64)
    }

    async fn set_tokens_valid_after(
        &self,
        tenant: TenantId,
        uid: UserId,
        at_secs: i64,
    ) -> CoreResult<()> {
        sqlx::query(
            "UPDATE users SET tokens_valid_after = MAX(tokens_valid_after, ?), updated_at = ? \
             WHERE tenant_id = ? AND id = ?",
        )
        .bind(at_secs)
        .bind(now_millis())
        .bind(tenant.to_string())
        .bind(uid.to_string())
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }
}
