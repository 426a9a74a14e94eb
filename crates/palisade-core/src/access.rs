//! Roles and permissions: the built-in roles, custom roles from configuration, the permission
//! check, and `Grant<P>`, the proof a caller holds permission `P` that privileged services ask for.
//!
//! A permission is a string such as `chat:send`, `users:manage` or `model:<name>:use` (`*` as the
//! name means every model). A role is a named set of permissions. The effective permissions of a
//! request are the role's, narrowed by the scopes of the credential (API key, scoped token).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::entities::Principal;
use crate::error::{CoreError, CoreResult};

/// Send chat messages (and use `/v1` completions).
pub const CHAT_SEND: &str = "chat:send";
/// Set a custom system prompt.
pub const CHAT_SYSTEM_PROMPT: &str = "chat:system_prompt";
/// Manage users of the caller's tenant (platform admins: of every tenant).
pub const USERS_MANAGE: &str = "users:manage";
/// Create, list and disable tenants.
pub const TENANTS_MANAGE: &str = "tenants:manage";
/// Read role definitions.
pub const ROLES_READ: &str = "roles:read";
/// Read the audit trail.
pub const AUDIT_READ: &str = "audit:read";
/// Create and revoke one's own API keys.
pub const API_KEYS_MANAGE: &str = "apikeys:manage";
/// Call the scoped generation endpoint (scope of scoped LLM tokens).
pub const LLM_GENERATE: &str = "llm:generate";
/// Change the model registry (platform-wide).
pub const MODELS_MANAGE: &str = "models:manage";
/// Change the content guard's policy of a tenant (platform administrators; a custom role given
/// it manages its own tenant only).
pub const GUARD_MANAGE: &str = "guard:manage";
/// Read the usage of the caller's tenant (platform administrators: of every tenant).
pub const USAGE_READ: &str = "usage:read";
/// Change limit overrides: of the users and keys of the caller's tenant (platform
/// administrators: of every tenant, and tenants' own limits).
pub const LIMITS_MANAGE: &str = "limits:manage";
/// See the background jobs of the caller's tenant (platform administrators: all), retry or
/// discard dead letters.
pub const JOBS_MANAGE: &str = "jobs:manage";
/// Set retention and legal holds of the caller's tenant and its users (platform
/// administrators: of every tenant).
pub const RETENTION_MANAGE: &str = "retention:manage";
/// Every permission (the platform administrator).
pub const ALL: &str = "*";

/// Permissions that are not model grants.
pub const KNOWN_PERMISSIONS: &[&str] = &[
    CHAT_SEND,
    CHAT_SYSTEM_PROMPT,
    USERS_MANAGE,
    TENANTS_MANAGE,
    ROLES_READ,
    AUDIT_READ,
    API_KEYS_MANAGE,
    LLM_GENERATE,
    MODELS_MANAGE,
    GUARD_MANAGE,
    USAGE_READ,
    LIMITS_MANAGE,
    JOBS_MANAGE,
    RETENTION_MANAGE,
    ALL,
];

/// The built-in role names.
pub const ROLE_ADMIN: &str = "admin";
pub const ROLE_TENANT_ADMIN: &str = "tenant_admin";
pub const ROLE_AUDITOR: &str = "auditor";
pub const ROLE_USER: &str = "user";

/// Checks a permission string's form: a known permission or `model:<name|*>:use`.
pub fn validate_permission(p: &str) -> CoreResult<()> {
    if KNOWN_PERMISSIONS.contains(&p) {
        return Ok(());
    }
    if let Some(name) = p
        .strip_prefix("model:")
        .and_then(|r| r.strip_suffix(":use"))
    {
        if name == "*" || valid_model_name(name) {
            return Ok(());
        }
    }
    Err(CoreError::validation(
        "invalid_permission",
        format!("unknown permission `{p}`"),
    ))
}

fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

/// A validated role name: lowercase ASCII letters, digits, `_` and `-`, 1–32 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoleName(String);

impl RoleName {
    pub fn new(s: &str) -> CoreResult<RoleName> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok {
            Ok(RoleName(s.to_string()))
        } else {
            Err(CoreError::validation(
                "invalid_role",
                "a role name is 1-32 lowercase letters, digits, `_` or `-`",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn admin() -> RoleName {
        RoleName(ROLE_ADMIN.into())
    }

    pub fn user() -> RoleName {
        RoleName(ROLE_USER.into())
    }
}

impl TryFrom<String> for RoleName {
    type Error = CoreError;
    fn try_from(s: String) -> CoreResult<RoleName> {
        RoleName::new(&s)
    }
}

impl From<RoleName> for String {
    fn from(r: RoleName) -> String {
        r.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One role: its permissions and whether its members must use a second factor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleDef {
    pub name: RoleName,
    pub permissions: BTreeSet<String>,
    pub require_2fa: bool,
    pub builtin: bool,
    pub description: String,
}

/// A set of permissions with the model-grant logic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionSet(BTreeSet<String>);

impl PermissionSet {
    pub fn of<I: IntoIterator<Item = S>, S: Into<String>>(it: I) -> PermissionSet {
        PermissionSet(it.into_iter().map(Into::into).collect())
    }

    /// True when the set grants `perm` (directly, through `*`, or `model:*:use` for models).
    pub fn allows(&self, perm: &str) -> bool {
        if self.0.contains(ALL) || self.0.contains(perm) {
            return true;
        }
        perm.starts_with("model:") && perm.ends_with(":use") && self.0.contains("model:*:use")
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.allows(&format!("model:{model}:use"))
    }

    /// Permissions granted by both sets (a credential's scopes narrow its owner's role).
    pub fn intersect(&self, scopes: &PermissionSet) -> PermissionSet {
        let mut out = BTreeSet::new();
        for p in &scopes.0 {
            if p == ALL {
                return self.clone();
            }
            if self.allows(p) {
                out.insert(p.clone());
            }
        }
        // A role holding `model:x:use` keeps it under a scope of `model:*:use`.
        if scopes.0.contains("model:*:use") {
            for p in &self.0 {
                if p.starts_with("model:") {
                    out.insert(p.clone());
                }
            }
        }
        PermissionSet(out)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A custom role as written in the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomRole {
    pub name: String,
    pub permissions: Vec<String>,
    pub require_2fa: bool,
    pub description: String,
}

/// Every role the deployment knows: the four built-ins and the configured ones.
#[derive(Debug, Clone)]
pub struct RoleRegistry {
    roles: BTreeMap<RoleName, RoleDef>,
}

fn builtin(name: &str, perms: &[&str], description: &str) -> RoleDef {
    RoleDef {
        name: RoleName(name.into()),
        permissions: perms.iter().map(|s| s.to_string()).collect(),
        require_2fa: false,
        builtin: true,
        description: description.into(),
    }
}

impl RoleRegistry {
    /// The built-in roles plus `custom`; built-ins may get `require_2fa` through `require_2fa`.
    pub fn new(custom: &[CustomRole], require_2fa: &[String]) -> CoreResult<RoleRegistry> {
        let mut roles = BTreeMap::new();
        for r in [
            builtin(ROLE_ADMIN, &[ALL], "platform administrator: everything"),
            builtin(
                ROLE_TENANT_ADMIN,
                &[
                    USERS_MANAGE,
                    ROLES_READ,
                    AUDIT_READ,
                    USAGE_READ,
                    LIMITS_MANAGE,
                    RETENTION_MANAGE,
                    JOBS_MANAGE,
                    CHAT_SEND,
                    CHAT_SYSTEM_PROMPT,
                    API_KEYS_MANAGE,
                    "model:*:use",
                ],
                "manages the users of one tenant",
            ),
            builtin(
                ROLE_AUDITOR,
                &[AUDIT_READ, ROLES_READ, USAGE_READ],
                "reads the audit trail",
            ),
            builtin(
                ROLE_USER,
                &[CHAT_SEND, API_KEYS_MANAGE, "model:*:use"],
                "chats with the models",
            ),
        ] {
            roles.insert(r.name.clone(), r);
        }
        for c in custom {
            let name = RoleName::new(&c.name)?;
            if roles.contains_key(&name) {
                return Err(CoreError::validation(
                    "invalid_role",
                    format!("role `{name}` is defined twice or shadows a built-in role"),
                ));
            }
            for p in &c.permissions {
                validate_permission(p)?;
            }
            roles.insert(
                name.clone(),
                RoleDef {
                    name,
                    permissions: c.permissions.iter().cloned().collect(),
                    require_2fa: c.require_2fa,
                    builtin: false,
                    description: c.description.clone(),
                },
            );
        }
        for r in require_2fa {
            let name = RoleName::new(r)?;
            match roles.get_mut(&name) {
                Some(def) => def.require_2fa = true,
                None => {
                    return Err(CoreError::validation(
                        "invalid_role",
                        format!("require_2fa names an unknown role `{name}`"),
                    ))
                }
            }
        }
        Ok(RoleRegistry { roles })
    }

    pub fn get(&self, name: &RoleName) -> Option<&RoleDef> {
        self.roles.get(name)
    }

    /// Parses and checks that the role exists.
    pub fn resolve(&self, name: &str) -> CoreResult<RoleName> {
        let n = RoleName::new(name)?;
        if self.roles.contains_key(&n) {
            Ok(n)
        } else {
            Err(CoreError::validation(
                "unknown_role",
                format!("there is no role `{name}`"),
            ))
        }
    }

    /// The permissions of a role; an unknown role (removed from config) has none.
    pub fn permissions(&self, name: &RoleName) -> PermissionSet {
        self.roles
            .get(name)
            .map(|d| PermissionSet(d.permissions.clone()))
            .unwrap_or_default()
    }

    pub fn requires_2fa(&self, name: &RoleName) -> bool {
        self.roles.get(name).map(|d| d.require_2fa).unwrap_or(false)
    }

    pub fn all(&self) -> impl Iterator<Item = &RoleDef> {
        self.roles.values()
    }
}

impl Default for RoleRegistry {
    fn default() -> Self {
        match RoleRegistry::new(&[], &[]) {
            Ok(r) => r,
            // The built-ins are constants that always validate.
            Err(_) => RoleRegistry {
                roles: BTreeMap::new(),
            },
        }
    }
}

/// A permission a service can demand as a type.
pub trait Need: Send + Sync + 'static {
    const PERMISSION: &'static str;
}

macro_rules! need {
    ($($ty:ident => $perm:expr),* $(,)?) => {$(
        #[doc = concat!("The `", stringify!($ty), "` permission as a type.")]
        #[derive(Debug, Clone, Copy)]
        pub struct $ty;
        impl Need for $ty {
            const PERMISSION: &'static str = $perm;
        }
    )*};
}

need! {
    ChatSend => CHAT_SEND,
    UsersManage => USERS_MANAGE,
    TenantsManage => TENANTS_MANAGE,
    RolesRead => ROLES_READ,
    AuditRead => AUDIT_READ,
    ApiKeysManage => API_KEYS_MANAGE,
    LlmGenerate => LLM_GENERATE,
    ModelsManage => MODELS_MANAGE,
    GuardManage => GUARD_MANAGE,
    LimitsManage => LIMITS_MANAGE,
    JobsManage => JOBS_MANAGE,
    RetentionManage => RETENTION_MANAGE,
}

/// Proof that `principal` holds permission `P`. It can only be made by [`Grant::check`], so a
/// service method that takes `&Grant<UsersManage>` cannot be reached without the check.
#[derive(Debug, Clone)]
pub struct Grant<P: Need> {
    principal: Arc<Principal>,
    _need: PhantomData<P>,
}

impl<P: Need> Grant<P> {
    pub fn check(principal: &Principal) -> CoreResult<Grant<P>> {
        if principal.permissions.allows(P::PERMISSION) {
            Ok(Grant {
                principal: Arc::new(principal.clone()),
                _need: PhantomData,
            })
        } else {
            Err(CoreError::Forbidden)
        }
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_and_custom_roles() {
        let reg = RoleRegistry::new(
            &[CustomRole {
                name: "analyst".into(),
                permissions: vec![CHAT_SEND.into(), "model:smollm2-135m:use".into()],
                require_2fa: true,
                description: String::new(),
            }],
            &["admin".into()],
        )
        .unwrap_or_default();
        let analyst = reg.permissions(&RoleName("analyst".into()));
        assert!(analyst.allows(CHAT_SEND));
        assert!(analyst.allows_model("smollm2-135m"));
        assert!(!analyst.allows_model("gpt-4o"));
        assert!(!analyst.allows(USERS_MANAGE));
        assert!(reg.requires_2fa(&RoleName::admin()));
        assert!(reg.permissions(&RoleName::admin()).allows(TENANTS_MANAGE));
        let auditor = reg.permissions(&RoleName(ROLE_AUDITOR.into()));
        assert!(auditor.allows(AUDIT_READ) && !auditor.allows(CHAT_SEND));
        let user = reg.permissions(&RoleName::user());
        assert!(user.allows_model("anything") && !user.allows(USERS_MANAGE));
        assert!(reg.resolve("nobody").is_err());
    }

    #[test]
    fn bad_custom_roles_are_refused() {
        let bad_perm = CustomRole {
            name: "x".into(),
            permissions: vec!["root:everything".into()],
            ..Default::default()
        };
        assert!(RoleRegistry::new(&[bad_perm], &[]).is_err());
        let shadow = CustomRole {
            name: "admin".into(),
            ..Default::default()
        };
        assert!(RoleRegistry::new(&[shadow], &[]).is_err());
        assert!(RoleName::new("Admin").is_err());
        assert!(RoleName::new("").is_err());
        assert!(RoleRegistry::new(&[], &["ghost".into()]).is_err());
    }

    #[test]
    fn scopes_narrow_roles() {
        let role = PermissionSet::of([CHAT_SEND, API_KEYS_MANAGE, "model:*:use"]);
        let scoped = role.intersect(&PermissionSet::of([CHAT_SEND, "model:a:use"]));
        assert!(scoped.allows(CHAT_SEND));
        assert!(scoped.allows_model("a"));
        assert!(!scoped.allows_model("b"));
        assert!(!scoped.allows(API_KEYS_MANAGE));
        // A scope cannot add what the role lacks.
        let narrow = PermissionSet::of([CHAT_SEND]);
        assert!(!narrow
            .intersect(&PermissionSet::of([USERS_MANAGE]))
            .allows(USERS_MANAGE));
    }
}
