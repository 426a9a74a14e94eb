//! External identities (OIDC, LDAP): mapping groups to roles, just-in-time accounts linked to the
//! provider's subject, and keeping the role in step with the provider at every login.

use std::collections::BTreeMap;

use palisade_core::access::RoleName;
use palisade_core::auth_api::{ClientInfo, IssuedTokens, LoginOutcome};
use palisade_core::entities::{Credential, NewUser, Principal, User};
use palisade_core::identity::{SecurityEvent, SecurityEventKind as K, UserUpdate};
use palisade_core::ids::{TenantId, DEFAULT_TENANT};
use palisade_core::{CoreError, CoreResult};

use crate::password::check_username;
use crate::service::AuthService;

/// A hash no password matches: external accounts never log in with a local password.
const NO_LOCAL_PASSWORD: &str = "!external";

/// Who the provider says the user is.
#[derive(Debug, Clone)]
pub struct ExternalIdentity {
    /// `oidc:<issuer>` or `ldap`.
    pub provider: String,
    /// Stable id at the provider (`sub`, or the DN).
    pub subject: String,
    pub username: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// `oidc` or `ldap`.
    pub source: &'static str,
}

impl AuthService {
    /// The most powerful role any of the groups maps to, else the default role.
    pub(crate) fn map_role(
        &self,
        groups: &[String],
        map: &BTreeMap<String, String>,
        default_role: Option<&str>,
    ) -> CoreResult<RoleName> {
        let mut best: Option<(usize, RoleName)> = None;
        for g in groups {
            if let Some(r) = map.get(g) {
                let role = self.roles.resolve(r)?;
                let weight = self.roles.permissions(&role).iter().count()
                    + if self.roles.permissions(&role).allows("*") {
                        1000
                    } else {
                        0
                    };
                if best.as_ref().is_none_or(|(w, _)| weight > *w) {
                    best = Some((weight, role));
                }
            }
        }
        match (best, default_role) {
            (Some((_, r)), _) => Ok(r),
            (None, Some(d)) => self.roles.resolve(d),
            (None, None) => Err(CoreError::denied(
                "no_role",
                "your account at the identity provider is not in any group that may use Palisade",
            )),
        }
    }

    /// Finds or creates the local account of an external identity and syncs its role.
    pub(crate) async fn provision(
        &self,
        id: &ExternalIdentity,
        role: RoleName,
    ) -> CoreResult<User> {
        let tenant: TenantId = DEFAULT_TENANT;
        if let Some((t, uid)) = self
            .repos
            .links
            .find_link(&id.provider, &id.subject)
            .await?
        {
            let user = self
                .repos
                .users
                .find_by_id(t, uid)
                .await?
                .ok_or_else(CoreError::invalid_credentials)?;
            if !user.is_active {
                return Err(CoreError::invalid_credentials());
            }
            if user.role != role {
                let updated = self
                    .repos
                    .users
                    .update_user(
                        t,
                        uid,
                        &UserUpdate {
                            role: Some(role.clone()),
                            ..Default::default()
                        },
                    )
                    .await?
                    .ok_or_else(CoreError::invalid_credentials)?;
                self.emit(SecurityEvent::new(K::UserUpdated).user(t, uid).detail(
                    serde_json::json!({
                        "role": {"before": user.role.as_str(), "after": role.as_str()},
                        "by": id.provider,
                    }),
                ))
                .await;
                return Ok(updated);
            }
            return Ok(user);
        }
        check_username(&id.username).map_err(|_| {
            CoreError::denied(
                "invalid_external_username",
                "the identity provider's username cannot be used here",
            )
        })?;
        // Never take over a local account that happens to have the same name.
        if self
            .repos
            .users
            .find_by_username(tenant, &id.username)
            .await?
            .is_some()
        {
            return Err(CoreError::denied(
                "account_exists",
                "a local account with this name exists; ask an administrator to link it",
            ));
        }
        let user = self
            .repos
            .users
            .create_user(NewUser {
                tenant_id: tenant,
                username: id.username.clone(),
                email: id.email.clone(),
                password_hash: NO_LOCAL_PASSWORD.into(),
                role,
                must_change_password: false,
                auth_source: id.source.into(),
            })
            .await?;
        self.repos
            .links
            .link(&id.provider, &id.subject, tenant, user.id)
            .await?;
        self.emit(
            SecurityEvent::new(K::UserCreated)
                .user(tenant, user.id)
                .detail(serde_json::json!({ "via": id.provider, "role": user.role.as_str() })),
        )
        .await;
        Ok(user)
    }

    /// LDAP login for `username` (called when the account is LDAP-backed or unknown locally).
    pub(crate) async fn ldap_login(
        &self,
        username: &str,
        password: &str,
        client: &ClientInfo,
    ) -> CoreResult<Option<LoginOutcome>> {
        let Some(ldap) = &self.ldap else {
            return Ok(None);
        };
        let Some(found) = ldap.authenticate(username, password).await? else {
            return Ok(None);
        };
        let role = self.map_role(
            &found.groups,
            &ldap.settings.role_map,
            ldap.settings.default_role.as_deref(),
        )?;
        let user = self
            .provision(
                &ExternalIdentity {
                    provider: "ldap".into(),
                    subject: found.dn.to_lowercase(),
                    username: username.to_string(),
                    email: found.email,
                    groups: found.groups,
                    source: "ldap",
                },
                role,
            )
            .await?;
        if user.totp_enabled {
            return Ok(Some(self.mfa_challenge(&user)?));
        }
        self.finish_login(&user, client).await.map(Some)
    }

    fn oidc_identity(
        &self,
        claims: &serde_json::Value,
    ) -> CoreResult<(ExternalIdentity, RoleName)> {
        let oidc = self.oidc.as_ref().ok_or_else(CoreError::invalid_token)?;
        let subject = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .ok_or_else(CoreError::invalid_token)?
            .to_string();
        let username = oidc.username(claims).ok_or_else(CoreError::invalid_token)?;
        let groups = oidc.groups(claims);
        let role = self.map_role(
            &groups,
            &oidc.settings.role_map,
            oidc.settings.default_role.as_deref(),
        )?;
        Ok((
            ExternalIdentity {
                provider: oidc.provider_id(),
                subject,
                username,
                email: claims
                    .get("email")
                    .and_then(|e| e.as_str())
                    .map(String::from),
                groups,
                source: "oidc",
            },
            role,
        ))
    }

    /// A bearer JWT from the OpenID provider, presented to the API.
    pub(crate) async fn authenticate_external(&self, token: &str) -> CoreResult<Principal> {
        let oidc = self.oidc.as_ref().ok_or_else(CoreError::invalid_token)?;
        let claims = oidc.verify(token, &oidc.settings.audience, None).await?;
        let (id, role) = self.oidc_identity(&claims)?;
        let user = self.provision(&id, role).await?;
        let jti = claims
            .get("jti")
            .and_then(|j| j.as_str())
            .unwrap_or_default()
            .to_string();
        let mut p = self.principal_for(
            &user,
            Credential::External {
                issuer: oidc.issuer().to_string(),
            },
            jti,
            None,
        );
        // The provider handles its own second factor and password rules.
        p.needs_2fa_enrolment = false;
        p.must_change_password = false;
        Ok(p)
    }

    /// Where to send the browser to log in with the OpenID provider.
    pub async fn sso_begin(&self) -> CoreResult<String> {
        match &self.oidc {
            Some(o) => o.begin().await,
            None => Err(CoreError::NotFound("single sign-on")),
        }
    }

    /// The provider sent the browser back: a Palisade session for the user.
    pub async fn sso_finish(
        &self,
        code: &str,
        state: &str,
        client: &ClientInfo,
    ) -> CoreResult<IssuedTokens> {
        let oidc = self
            .oidc
            .as_ref()
            .ok_or(CoreError::NotFound("single sign-on"))?;
        let claims = oidc.finish(code, state).await?;
        let (id, role) = self.oidc_identity(&claims)?;
        let user = self.provision(&id, role).await?;
        match self.finish_login(&user, client).await? {
            LoginOutcome::Tokens(t) => Ok(t),
            LoginOutcome::MfaRequired { .. } => {
                Err(CoreError::Internal("unexpected second factor".into()))
            }
        }
    }
}
