//! Self-service: password and e-mail changes (re-authentication first), TOTP enrolment with
//! recovery codes, one's own login sessions and API keys.

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use palisade_core::access::{validate_permission, ApiKeysManage, Grant, PermissionSet};
use palisade_core::auth_api::{AccountService, ClientInfo, IssuedTokens, NewApiKey, TotpSetup};
use palisade_core::entities::{now_millis, Credential, Principal, User};
use palisade_core::identity::{
    ApiKey, AuthSession, SecurityEvent, SecurityEventKind as K, UserUpdate,
};
use palisade_core::ids::{ApiKeyId, TokenFamilyId};
use palisade_core::{CoreError, CoreResult};
use rand::RngCore;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::password::{hash_password, verify_password};
use crate::service::{blocking, check_email, ct_eq, hash_secret, AuthService};

/// Every API key starts with this.
pub const API_KEY_PREFIX: &str = "pk_";
/// Characters of the key stored in clear for lookup and display (`pk_` + 8).
pub const API_KEY_PREFIX_LEN: usize = 11;
const RECOVERY_CODES: usize = 10;

fn totp_for(secret_b32: &str, issuer: &str, account: &str) -> CoreResult<TOTP> {
    let bytes = Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .map_err(|_| CoreError::Internal("stored TOTP secret is corrupt".into()))?;
    TOTP::new(
        Algorithm::SHA1,
        6,
        1,
        30,
        bytes,
        Some(issuer.to_string()),
        account.replace(':', "_"),
    )
    .map_err(|e| CoreError::Internal(format!("totp: {e}")))
}

/// The time step a code belongs to (current, previous or next), if it matches.
fn matching_step(totp: &TOTP, code: &str, now_secs: u64) -> Option<i64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut found = None;
    for t in [now_secs.saturating_sub(30), now_secs, now_secs + 30] {
        // Compare every candidate so timing does not tell which one matched.
        if ct_eq(&totp.generate(t), code) {
            found = Some(i64::try_from(t / 30).unwrap_or(i64::MAX));
        }
    }
    found
}

/// A recovery code: 10 random characters in two groups, e.g. `k3f9q-x7m2p`.
fn recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 10];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let chars: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

fn normalise_recovery(code: &str) -> String {
    let c: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if c.len() == 10 {
        format!("{}-{}", &c[..5], &c[5..])
    } else {
        c
    }
}

impl AuthService {
    /// Checks a TOTP code (once per time step) or a recovery code (once).
    pub(crate) async fn check_second_factor(
        &self,
        user: &User,
        code: &str,
        client: &ClientInfo,
    ) -> CoreResult<bool> {
        let code = code.trim();
        let Some(secret) = user.totp_secret.as_deref().filter(|_| user.totp_enabled) else {
            return Ok(false);
        };
        if code.len() == 6 {
            let totp = totp_for(secret, &self.settings.totp_issuer, &user.username)?;
            let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
            return match matching_step(&totp, code, now) {
                Some(step) => {
                    self.repos
                        .users
                        .claim_totp_step(user.tenant_id, user.id, step)
                        .await
                }
                None => Ok(false),
            };
        }
        let used = self
            .repos
            .users
            .use_recovery_code(
                user.tenant_id,
                user.id,
                &hash_secret(&normalise_recovery(code)),
            )
            .await?;
        if used {
            self.emit(
                SecurityEvent::new(K::RecoveryCodeUsed)
                    .user(user.tenant_id, user.id)
                    .client(client),
            )
            .await;
        }
        Ok(used)
    }

    /// Re-authentication: the current password (and the TOTP code when 2FA is on).
    async fn reauthenticate(
        &self,
        user: &User,
        password: &str,
        totp: Option<&str>,
        client: &ClientInfo,
    ) -> CoreResult<()> {
        if let Some(r) = crate::throttle::refusal(user.locked_until, user.hard_locked, now_millis())
        {
            return Err(Self::refusal_error(r));
        }
        let stored = user.password_hash.clone();
        let pw = password.to_string();
        let ok = user.auth_source == "local"
            && password.len() <= 4096
            && blocking(move || verify_password(&stored, &pw)).await?;
        if !ok {
            return Err(self.count_failure(user, client, K::LoginFailure).await);
        }
        if user.totp_enabled {
            let code = totp.unwrap_or_default();
            if !self.check_second_factor(user, code, client).await? {
                return Err(self.count_failure(user, client, K::TotpFailure).await);
            }
        }
        Ok(())
    }

    async fn me(&self, p: &Principal) -> CoreResult<User> {
        self.repos
            .users
            .find_by_id(p.tenant_id, p.user_id)
            .await?
            .filter(|u| u.is_active)
            .ok_or_else(CoreError::invalid_token)
    }

    fn interactive_only(p: &Principal) -> CoreResult<()> {
        match p.credential {
            Credential::Session { .. } => Ok(()),
            _ => Err(CoreError::denied(
                "interactive_login_required",
                "this needs a login session, not an API key",
            )),
        }
    }
}

#[async_trait]
impl AccountService for AuthService {
    async fn change_password(
        &self,
        p: &Principal,
        current: &str,
        new: &str,
        totp: Option<&str>,
        client: &ClientInfo,
    ) -> CoreResult<IssuedTokens> {
        Self::interactive_only(p)?;
        let user = self.me(p).await?;
        self.reauthenticate(&user, current, totp, client).await?;
        if current == new {
            return Err(CoreError::validation(
                "weak_password",
                "the new password must differ from the current one",
            ));
        }
        self.settings.password.check(
            &user.username,
            user.email.as_deref(),
            new,
            user.totp_enabled,
        )?;
        let pw = new.to_string();
        let hash = blocking(move || hash_password(&pw)).await??;
        let updated = self
            .repos
            .users
            .update_user(
                user.tenant_id,
                user.id,
                &UserUpdate {
                    password_hash: Some(hash),
                    must_change_password: Some(false),
                    ..Default::default()
                },
            )
            .await?
            .ok_or(CoreError::NotFound("user"))?;
        // Every other session ends; this device gets a fresh one.
        self.end_all_sessions(user.tenant_id, user.id).await?;
        self.deny_jti(&p.token_id).await?;
        self.emit(
            SecurityEvent::new(K::PasswordChange)
                .user(user.tenant_id, user.id)
                .client(client),
        )
        .await;
        // Issued one second later than tokens_valid_after would allow at worst the same second.
        self.start_session(&updated, client).await
    }

    async fn change_email(
        &self,
        p: &Principal,
        current_password: &str,
        email: Option<String>,
    ) -> CoreResult<User> {
        Self::interactive_only(p)?;
        let user = self.me(p).await?;
        let client = p.client.clone();
        self.reauthenticate(&user, current_password, None, &client)
            .await?;
        if let Some(e) = &email {
            check_email(e)?;
        }
        let updated = self
            .repos
            .users
            .update_user(
                user.tenant_id,
                user.id,
                &UserUpdate {
                    email: Some(email),
                    ..Default::default()
                },
            )
            .await?
            .ok_or(CoreError::NotFound("user"))?;
        self.emit(
            SecurityEvent::new(K::UserUpdated)
                .user(user.tenant_id, user.id)
                .client(&p.client)
                .detail(serde_json::json!({ "changed": ["email"], "by": "self" })),
        )
        .await;
        Ok(updated)
    }

    async fn totp_setup(&self, p: &Principal, current_password: &str) -> CoreResult<TotpSetup> {
        Self::interactive_only(p)?;
        let user = self.me(p).await?;
        if user.totp_enabled {
            return Err(CoreError::Conflict(
                "two-factor authentication is already on; turn it off first".into(),
            ));
        }
        self.reauthenticate(&user, current_password, None, &ClientInfo::default())
            .await?;
        let mut raw = [0u8; 20];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = Secret::Raw(raw.to_vec()).to_encoded().to_string();
        let totp = totp_for(&secret, &self.settings.totp_issuer, &user.username)?;
        self.repos
            .users
            .set_totp(user.tenant_id, user.id, Some(&secret), false)
            .await?;
        Ok(TotpSetup {
            otpauth_uri: totp.get_url(),
            secret,
        })
    }

    async fn totp_enable(&self, p: &Principal, code: &str) -> CoreResult<Vec<String>> {
        Self::interactive_only(p)?;
        let user = self.me(p).await?;
        if user.totp_enabled {
            return Err(CoreError::Conflict(
                "two-factor authentication is already on".into(),
            ));
        }
        let secret = user.totp_secret.clone().ok_or_else(|| {
            CoreError::validation("totp_not_started", "start the enrolment first")
        })?;
        let totp = totp_for(&secret, &self.settings.totp_issuer, &user.username)?;
        let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
        let step = matching_step(&totp, code.trim(), now);
        let fresh = match step {
            Some(s) => {
                self.repos
                    .users
                    .claim_totp_step(user.tenant_id, user.id, s)
                    .await?
            }
            None => false,
        };
        if !fresh {
            return Err(CoreError::Unauthenticated { code: "mfa_failed" });
        }
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
        let hashes: Vec<String> = codes.iter().map(|c| hash_secret(c)).collect();
        self.repos
            .users
            .set_recovery_codes(user.tenant_id, user.id, &hashes)
            .await?;
        self.repos
            .users
            .set_totp(user.tenant_id, user.id, Some(&secret), true)
            .await?;
        self.emit(
            SecurityEvent::new(K::TotpEnabled)
                .user(user.tenant_id, user.id)
                .client(&p.client),
        )
        .await;
        Ok(codes)
    }

    async fn totp_disable(
        &self,
        p: &Principal,
        current_password: &str,
        code: &str,
    ) -> CoreResult<()> {
        Self::interactive_only(p)?;
        let user = self.me(p).await?;
        if !user.totp_enabled {
            return Err(CoreError::Conflict(
                "two-factor authentication is off".into(),
            ));
        }
        if self.roles.requires_2fa(&user.role) {
            return Err(CoreError::denied(
                "mfa_required_by_policy",
                "your role requires two-factor authentication",
            ));
        }
        self.reauthenticate(&user, current_password, Some(code), &ClientInfo::default())
            .await?;
        self.repos
            .users
            .set_totp(user.tenant_id, user.id, None, false)
            .await?;
        self.repos
            .users
            .set_recovery_codes(user.tenant_id, user.id, &[])
            .await?;
        self.emit(
            SecurityEvent::new(K::TotpDisabled)
                .user(user.tenant_id, user.id)
                .client(&p.client),
        )
        .await;
        Ok(())
    }

    async fn my_sessions(&self, p: &Principal) -> CoreResult<Vec<AuthSession>> {
        self.repos
            .tokens
            .list_auth_sessions(p.tenant_id, p.user_id, now_millis())
            .await
    }

    async fn revoke_my_session(&self, p: &Principal, id: TokenFamilyId) -> CoreResult<()> {
        if self
            .repos
            .tokens
            .revoke_auth_session(p.tenant_id, p.user_id, id)
            .await?
        {
            self.emit(
                SecurityEvent::new(K::SessionRevoked)
                    .user(p.tenant_id, p.user_id)
                    .client(&p.client)
                    .detail(serde_json::json!({ "session_id": id.to_string() })),
            )
            .await;
            Ok(())
        } else {
            Err(CoreError::NotFound("session"))
        }
    }

    async fn create_api_key(
        &self,
        grant: &Grant<ApiKeysManage>,
        req: NewApiKey,
    ) -> CoreResult<(ApiKey, String)> {
        let p = grant.principal();
        Self::interactive_only(p)?;
        let name = req.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(CoreError::validation(
                "invalid_name",
                "a key needs a name of 1 to 100 characters",
            ));
        }
        let scopes = if req.scopes.is_empty() {
            vec!["chat:send".to_string(), "model:*:use".to_string()]
        } else {
            req.scopes
        };
        if scopes.len() > 32 {
            return Err(CoreError::validation("invalid_scope", "too many scopes"));
        }
        for s in &scopes {
            validate_permission(s)?;
            // A key can never hold more than its owner.
            if !p.permissions.allows(s) {
                return Err(CoreError::denied(
                    "scope_not_allowed",
                    format!("your role does not grant `{s}`"),
                ));
            }
        }
        if let Some(models) = &req.models {
            if models.is_empty() || models.len() > 64 {
                return Err(CoreError::validation(
                    "invalid_models",
                    "give 1 to 64 model names, or leave the list out",
                ));
            }
            for m in models {
                validate_permission(&format!("model:{m}:use"))?;
            }
        }
        let expires_at = match req.expires_in_days {
            Some(0) | Some(3651..) => {
                return Err(CoreError::validation(
                    "invalid_expiry",
                    "expires_in_days must be between 1 and 3650",
                ))
            }
            Some(d) => Some(now_millis() + i64::from(d) * 86_400_000),
            None => None,
        };
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let secret = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        let key = ApiKey {
            id: ApiKeyId::new(),
            tenant_id: p.tenant_id,
            user_id: p.user_id,
            name,
            prefix: secret.chars().take(API_KEY_PREFIX_LEN).collect(),
            key_hash: hash_secret(&secret),
            scopes,
            models: req.models,
            expires_at,
            last_used_at: None,
            created_at: now_millis(),
            revoked: false,
            store_conversations: req.store_conversations,
        };
        self.repos.api_keys.insert_key(&key).await?;
        self.emit(
            SecurityEvent::new(K::ApiKeyCreated)
                .user(p.tenant_id, p.user_id)
                .client(&p.client)
                .detail(serde_json::json!({
                    "key_id": key.id.to_string(), "prefix": key.prefix, "scopes": key.scopes,
                })),
        )
        .await;
        Ok((key, secret))
    }

    async fn list_api_keys(&self, grant: &Grant<ApiKeysManage>) -> CoreResult<Vec<ApiKey>> {
        let p = grant.principal();
        self.repos.api_keys.list_keys(p.tenant_id, p.user_id).await
    }

    async fn revoke_api_key(&self, grant: &Grant<ApiKeysManage>, id: ApiKeyId) -> CoreResult<()> {
        let p = grant.principal();
        if self
            .repos
            .api_keys
            .revoke_key(p.tenant_id, p.user_id, id)
            .await?
        {
            self.emit(
                SecurityEvent::new(K::ApiKeyRevoked)
                    .user(p.tenant_id, p.user_id)
                    .client(&p.client)
                    .detail(serde_json::json!({ "key_id": id.to_string() })),
            )
            .await;
            Ok(())
        } else {
            Err(CoreError::NotFound("api key"))
        }
    }
}

/// The permissions a key would have, for display.
pub fn effective_scopes(owner: &PermissionSet, key: &ApiKey) -> Vec<String> {
    let scopes = PermissionSet::of(key.scopes.clone());
    owner.intersect(&scopes).iter().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_steps_and_codes() {
        let secret = Secret::Raw(b"12345678901234567890".to_vec())
            .to_encoded()
            .to_string();
        let totp = totp_for(&secret, "Palisade", "alice").ok();
        let Some(totp) = totp else { return };
        // RFC 6238 test vector (SHA-1, T = 59 s): 94287082 -> last 6 digits.
        assert_eq!(totp.generate(59), "287082");
        assert_eq!(matching_step(&totp, "287082", 59), Some(1));
        // One step of skew either way, no more.
        assert_eq!(matching_step(&totp, "287082", 85), Some(1));
        assert_eq!(matching_step(&totp, "287082", 150), None);
        assert_eq!(matching_step(&totp, "28708", 59), None);
        assert_eq!(matching_step(&totp, "abcdef", 59), None);
        assert!(totp.get_url().starts_with("otpauth://totp/Palisade:alice?"));
    }

    #[test]
    fn recovery_codes_normalise() {
        let c = recovery_code();
        assert_eq!(c.len(), 11);
        assert_eq!(normalise_recovery(&c.to_uppercase()), c);
        assert_eq!(normalise_recovery(&c.replace('-', " ")), c);
    }
}
