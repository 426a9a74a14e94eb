//! Administration: users, their sessions, tenants and roles. Every method takes a `Grant`, is
//! confined to the caller's tenant unless the caller is the platform administrator, and never
//! lets an administrator hand out or act on more power than they hold.

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use palisade_core::access::{
    AuditRead, Grant, RoleDef, RoleName, RolesRead, TenantsManage, UsersManage,
};
use palisade_core::auth_api::{AdminNewUser, AdminService, AdminUserPatch};
use palisade_core::entities::{now_millis, Principal, User};
use palisade_core::identity::{
    AuthSession, SecurityEvent, SecurityEventKind as K, Tenant, UserQuery, UserUpdate,
};
use palisade_core::ids::{TenantId, TokenFamilyId, UserId};
use palisade_core::{CoreError, CoreResult};
use rand::RngCore;

use crate::password::hash_password;
use crate::service::{blocking, check_email, AuthService, CreateUser};

/// A random temporary password (24 base64url characters, about 144 bits). It never begins with
/// `-`, so it can be pasted after a command-line flag or typed into a terminal tool without being
/// taken for an option.
fn temporary_password() -> String {
    loop {
        let mut raw = [0u8; 18];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let pw = URL_SAFE_NO_PAD.encode(raw);
        if !pw.starts_with('-') {
            return pw;
        }
    }
}

impl AuthService {
    /// The tenant an admin call acts on: the caller's own, or any for the platform admin.
    /// Another tenant looks like an empty one to a tenant admin (404, never 403).
    fn scope(p: &Principal, tenant: Option<TenantId>) -> CoreResult<TenantId> {
        match tenant {
            None => Ok(p.tenant_id),
            Some(t) if t == p.tenant_id || p.is_platform_admin() => Ok(t),
            Some(_) => Err(CoreError::NotFound("user")),
        }
    }

    /// True when every permission of `role` is also the caller's.
    fn within_power(&self, p: &Principal, role: &RoleName) -> bool {
        let perms = self.roles.permissions(role);
        let ok = perms.iter().all(|perm| p.permissions.allows(perm));
        ok
    }

    async fn target(
        &self,
        p: &Principal,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<User> {
        let t = Self::scope(p, tenant)?;
        let user = self
            .repos
            .users
            .find_by_id(t, id)
            .await?
            .ok_or(CoreError::NotFound("user"))?;
        if !self.within_power(p, &user.role) {
            return Err(CoreError::Forbidden);
        }
        Ok(user)
    }

    fn not_self(p: &Principal, id: UserId, what: &str) -> CoreResult<()> {
        if p.user_id == id {
            return Err(CoreError::validation(
                "cannot_modify_self",
                format!("you cannot {what} your own account"),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl AdminService for AuthService {
    async fn list_users(
        &self,
        g: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        mut query: UserQuery,
    ) -> CoreResult<(Vec<User>, u64)> {
        let t = Self::scope(g.principal(), tenant)?;
        query.limit = query.limit.clamp(1, 200);
        if let Some(s) = &query.search {
            if s.chars().count() > 100 {
                return Err(CoreError::validation(
                    "invalid_search",
                    "search text is too long",
                ));
            }
        }
        self.repos.users.list_users(Some(t), &query).await
    }

    async fn get_user(
        &self,
        g: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<User> {
        let t = Self::scope(g.principal(), tenant)?;
        self.repos
            .users
            .find_by_id(t, id)
            .await?
            .ok_or(CoreError::NotFound("user"))
    }

    async fn create_user(
        &self,
        g: &Grant<UsersManage>,
        req: AdminNewUser,
    ) -> CoreResult<(User, Option<String>)> {
        let p = g.principal();
        let t = Self::scope(p, req.tenant_id)?;
        if t != p.tenant_id && self.repos.tenants.get_tenant(t).await?.is_none() {
            return Err(CoreError::NotFound("tenant"));
        }
        let role = self.roles.resolve(&req.role)?;
        if !self.within_power(p, &role) {
            return Err(CoreError::denied(
                "role_not_allowed",
                format!("you cannot grant the role `{role}`"),
            ));
        }
        let (password, generated) = match req.password {
            Some(pw) => (pw, None),
            None => {
                let pw = temporary_password();
                (pw.clone(), Some(pw))
            }
        };
        let user = self
            .create_user(CreateUser {
                tenant: t,
                username: req.username,
                email: req.email,
                password: Some(password),
                password_hash: None,
                role: role.as_str().to_string(),
                // An administrator-chosen or generated password is changed at first login.
                must_change_password: true,
                auth_source: "local".into(),
                skip_policy: generated.is_some(),
            })
            .await?;
        self.emit(
            SecurityEvent::new(K::UserCreated)
                .user(user.tenant_id, user.id)
                .actor(p.user_id)
                .client(&p.client)
                .detail(
                    serde_json::json!({ "role": user.role.as_str(), "username": user.username }),
                ),
        )
        .await;
        Ok((user, generated))
    }

    async fn update_user(
        &self,
        g: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
        patch: AdminUserPatch,
    ) -> CoreResult<User> {
        let p = g.principal();
        let before = self.target(p, tenant, id).await?;
        let role = match &patch.role {
            Some(r) => {
                Self::not_self(p, id, "change the role of")?;
                let role = self.roles.resolve(r)?;
                if !self.within_power(p, &role) {
                    return Err(CoreError::denied(
                        "role_not_allowed",
                        format!("you cannot grant the role `{role}`"),
                    ));
                }
                Some(role)
            }
            None => None,
        };
        if patch.is_active == Some(false) {
            Self::not_self(p, id, "disable")?;
        }
        if let Some(Some(e)) = &patch.email {
            check_email(e)?;
        }
        let update = UserUpdate {
            email: patch.email.clone(),
            role: role.clone(),
            is_active: patch.is_active,
            unlock: patch.unlock,
            ..Default::default()
        };
        let after = self
            .repos
            .users
            .update_user(before.tenant_id, id, &update)
            .await?
            .ok_or(CoreError::NotFound("user"))?;
        let role_changed = role.is_some_and(|r| r != before.role);
        let disabled = patch.is_active == Some(false) && before.is_active;
        if role_changed || disabled {
            self.end_all_sessions(after.tenant_id, after.id).await?;
        }
        let mut changes = serde_json::Map::new();
        if role_changed {
            changes.insert(
                "role".into(),
                serde_json::json!({ "before": before.role.as_str(), "after": after.role.as_str() }),
            );
        }
        if before.is_active != after.is_active {
            changes.insert(
                "is_active".into(),
                serde_json::json!({ "before": before.is_active, "after": after.is_active }),
            );
        }
        if before.email != after.email {
            changes.insert(
                "email".into(),
                serde_json::json!({ "before": before.email, "after": after.email }),
            );
        }
        if patch.unlock {
            changes.insert("unlocked".into(), serde_json::json!(true));
        }
        self.emit(
            SecurityEvent::new(K::UserUpdated)
                .user(after.tenant_id, after.id)
                .actor(p.user_id)
                .client(&p.client)
                .detail(serde_json::Value::Object(changes)),
        )
        .await;
        Ok(after)
    }

    async fn reset_password(
        &self,
        g: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<String> {
        let p = g.principal();
        let user = self.target(p, tenant, id).await?;
        let pw = temporary_password();
        let to_hash = pw.clone();
        let hash = blocking(move || hash_password(&to_hash)).await??;
        self.repos
            .users
            .update_user(
                user.tenant_id,
                id,
                &UserUpdate {
                    password_hash: Some(hash),
                    must_change_password: Some(true),
                    unlock: true,
                    ..Default::default()
                },
            )
            .await?;
        self.end_all_sessions(user.tenant_id, id).await?;
        self.emit(
            SecurityEvent::new(K::PasswordChange)
                .user(user.tenant_id, id)
                .actor(p.user_id)
                .client(&p.client)
                .detail(serde_json::json!({ "by": "admin_reset" })),
        )
        .await;
        Ok(pw)
    }

    async fn delete_user(
        &self,
        g: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<()> {
        let p = g.principal();
        Self::not_self(p, id, "delete")?;
        let user = self.target(p, tenant, id).await?;
        self.end_all_sessions(user.tenant_id, id).await?;
        if !self.repos.users.delete_user(user.tenant_id, id).await? {
            return Err(CoreError::NotFound("user"));
        }
        self.emit(
            SecurityEvent::new(K::UserDeleted)
                .user(user.tenant_id, id)
                .actor(p.user_id)
                .client(&p.client)
                .detail(serde_json::json!({ "username": user.username })),
        )
        .await;
        Ok(())
    }

    async fn user_sessions(
        &self,
        g: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<Vec<AuthSession>> {
        let user = self.target(g.principal(), tenant, id).await?;
        self.repos
            .tokens
            .list_auth_sessions(user.tenant_id, id, now_millis())
            .await
    }

    async fn revoke_user_session(
        &self,
        g: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
        session: TokenFamilyId,
    ) -> CoreResult<()> {
        let p = g.principal();
        let user = self.target(p, tenant, id).await?;
        if !self
            .repos
            .tokens
            .revoke_auth_session(user.tenant_id, id, session)
            .await?
        {
            return Err(CoreError::NotFound("session"));
        }
        self.emit(
            SecurityEvent::new(K::SessionRevoked)
                .user(user.tenant_id, id)
                .actor(p.user_id)
                .client(&p.client)
                .detail(serde_json::json!({ "session_id": session.to_string() })),
        )
        .await;
        Ok(())
    }

    async fn revoke_user_sessions(
        &self,
        g: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<()> {
        let p = g.principal();
        let user = self.target(p, tenant, id).await?;
        self.end_all_sessions(user.tenant_id, id).await?;
        self.emit(
            SecurityEvent::new(K::LogoutAll)
                .user(user.tenant_id, id)
                .actor(p.user_id)
                .client(&p.client),
        )
        .await;
        Ok(())
    }

    async fn create_invite(
        &self,
        g: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        role: &str,
        expires_in_days: u32,
    ) -> CoreResult<(String, i64)> {
        let p = g.principal();
        let t = Self::scope(p, tenant)?;
        let role = self.roles.resolve(role)?;
        if !self.within_power(p, &role) {
            return Err(CoreError::denied(
                "role_not_allowed",
                format!("you cannot grant the role `{role}`"),
            ));
        }
        if !(1..=90).contains(&expires_in_days) {
            return Err(CoreError::validation(
                "invalid_expiry",
                "expires_in_days must be between 1 and 90",
            ));
        }
        let code = temporary_password();
        let now = now_millis();
        let expires_at = now + i64::from(expires_in_days) * 86_400_000;
        self.repos
            .invites
            .create_invite(&palisade_core::identity::Invite {
                code_hash: crate::service::hash_secret(&code),
                tenant_id: t,
                role: role.clone(),
                created_by: Some(p.user_id),
                created_at: now,
                expires_at,
            })
            .await?;
        self.emit(
            SecurityEvent::new(K::InviteCreated)
                .actor(p.user_id)
                .client(&p.client)
                .detail(serde_json::json!({ "tenant_id": t.to_string(), "role": role.as_str(), "expires_at": expires_at })),
        )
        .await;
        Ok((code, expires_at))
    }

    async fn list_tenants(&self, _g: &Grant<TenantsManage>) -> CoreResult<Vec<Tenant>> {
        self.repos.tenants.list_tenants().await
    }

    async fn create_tenant(&self, g: &Grant<TenantsManage>, name: &str) -> CoreResult<Tenant> {
        let name = name.trim();
        let ok = (2..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(CoreError::validation(
                "invalid_tenant_name",
                "a tenant name has 2 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        let t = self.repos.tenants.create_tenant(name).await?;
        self.emit(
            SecurityEvent::new(K::TenantCreated)
                .actor(g.principal().user_id)
                .client(&g.principal().client)
                .detail(serde_json::json!({ "tenant_id": t.id.to_string(), "name": t.name })),
        )
        .await;
        Ok(t)
    }

    async fn set_tenant_active(
        &self,
        g: &Grant<TenantsManage>,
        id: TenantId,
        active: bool,
    ) -> CoreResult<Tenant> {
        if id == g.principal().tenant_id && !active {
            return Err(CoreError::validation(
                "cannot_modify_self",
                "you cannot disable your own tenant",
            ));
        }
        if !self.repos.tenants.set_tenant_active(id, active).await? {
            return Err(CoreError::NotFound("tenant"));
        }
        self.emit(
            SecurityEvent::new(K::TenantUpdated)
                .actor(g.principal().user_id)
                .client(&g.principal().client)
                .detail(serde_json::json!({ "tenant_id": id.to_string(), "is_active": active })),
        )
        .await;
        self.repos
            .tenants
            .get_tenant(id)
            .await?
            .ok_or(CoreError::NotFound("tenant"))
    }

    async fn list_roles(&self, _g: &Grant<RolesRead>) -> CoreResult<Vec<RoleDef>> {
        Ok(self.roles.all().cloned().collect())
    }

    async fn security_events(
        &self,
        g: &Grant<AuditRead>,
        mut query: palisade_core::identity::EventQuery,
    ) -> CoreResult<Vec<SecurityEvent>> {
        let p = g.principal();
        if !p.is_platform_admin() {
            // Another tenant's trail looks empty to a tenant's auditor.
            if query.tenant.is_some_and(|t| t != p.tenant_id) {
                return Ok(Vec::new());
            }
            query.tenant = Some(p.tenant_id);
        }
        query.limit = query.limit.clamp(1, 1000);
        self.repos.events.search_events(&query).await
    }
}

#[cfg(test)]
mod tests {
    use super::temporary_password;

    /// One in 64 base64url strings begins with `-`; 4,000 draws would show one almost surely.
    #[test]
    fn temporary_passwords_never_begin_with_a_dash() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4000 {
            let pw = temporary_password();
            assert_eq!(pw.len(), 24);
            assert!(!pw.starts_with('-'), "{pw}");
            seen.insert(pw);
        }
        assert_eq!(seen.len(), 4000);
    }
}
