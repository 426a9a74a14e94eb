//! The identity service: registration, login, refresh-token rotation, logout and access-token
//! authentication, over the core's repository ports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use palisade_core::entities::{now_millis, NewUser, Principal, User, UserRole};
use palisade_core::ids::{TenantId, TokenFamilyId, UserId, DEFAULT_TENANT};
use palisade_core::ports::{
    ConsumeOutcome, IdentityService, IssuedTokens, RefreshTokenRecord, RefreshTokenRepository,
    Registration, UserRepository,
};
use palisade_core::{CoreError, CoreResult};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::jwt::{AccessClaims, KeyRing};
use crate::password::{check_password, check_username, hash_password, verify_password};

/// Who may create an account through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationMode {
    Open,
    /// Accounts are created by administrators (`palisade user create`).
    Closed,
}

/// Lifetimes and names used when issuing tokens.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub access_ttl_secs: i64,
    pub refresh_sliding_secs: i64,
    pub refresh_absolute_secs: i64,
    pub registration: RegistrationMode,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            access_ttl_secs: 15 * 60,
            refresh_sliding_secs: 7 * 24 * 3600,
            refresh_absolute_secs: 30 * 24 * 3600,
            registration: RegistrationMode::Closed,
        }
    }
}

/// SHA-256 of a refresh token, hex; only this is stored.
pub fn hash_refresh_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> CoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Internal(format!("blocking task: {e}")))
}

/// The identity service over the user and refresh-token repositories.
pub struct AuthService {
    users: Arc<dyn UserRepository>,
    tokens: Arc<dyn RefreshTokenRepository>,
    keys: KeyRing,
    settings: AuthSettings,
    /// A hash checked for unknown users so that they take as long as known ones.
    dummy_hash: String,
    /// `jti`s of logged-out access tokens, with their expiry (seconds).
    denied: Mutex<HashMap<String, i64>>,
}

impl AuthService {
    pub fn new(
        users: Arc<dyn UserRepository>,
        tokens: Arc<dyn RefreshTokenRepository>,
        keys: KeyRing,
        settings: AuthSettings,
    ) -> CoreResult<AuthService> {
        Ok(AuthService {
            users,
            tokens,
            keys,
            settings,
            dummy_hash: hash_password("palisade-timing-equaliser")?,
            denied: Mutex::new(HashMap::new()),
        })
    }

    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// Creates a user directly (admin CLI, bootstrap); checks the rules and hashes.
    pub async fn create_user(
        &self,
        tenant: TenantId,
        username: &str,
        email: Option<String>,
        password: &str,
        role: UserRole,
    ) -> CoreResult<User> {
        check_username(username)?;
        check_password(username, password)?;
        let pw = password.to_string();
        let hash = blocking(move || hash_password(&pw)).await??;
        self.users
            .create_user(NewUser {
                tenant_id: tenant,
                username: username.to_string(),
                email,
                password_hash: hash,
                role,
            })
            .await
    }

    async fn issue(
        &self,
        user: &User,
        family: TokenFamilyId,
        family_expires_at: i64,
    ) -> CoreResult<IssuedTokens> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            iss: "palisade".into(),
            aud: "palisade".into(),
            sub: user.id.to_string(),
            tid: user.tenant_id.to_string(),
            role: user.role.as_str().into(),
            jti: uuid::Uuid::now_v7().to_string(),
            iat: now,
            nbf: now,
            exp: now + self.settings.access_ttl_secs,
        };
        let access_token = self.keys.sign(&claims)?;
        let refresh = random_token();
        let now_ms = now_millis();
        self.tokens
            .insert(RefreshTokenRecord {
                token_hash: hash_refresh_token(&refresh),
                family_id: family,
                tenant_id: user.tenant_id,
                user_id: user.id,
                created_at: now_ms,
                expires_at: (now_ms + self.settings.refresh_sliding_secs * 1000)
                    .min(family_expires_at),
                family_expires_at,
                used_at: None,
                revoked: false,
            })
            .await?;
        Ok(IssuedTokens {
            access_token,
            expires_in: self.settings.access_ttl_secs.max(0) as u64,
            refresh_token: refresh,
        })
    }

    fn is_denied(&self, jti: &str, now: i64) -> bool {
        match self.denied.lock() {
            Ok(mut d) => {
                d.retain(|_, exp| *exp > now);
                d.contains_key(jti)
            }
            // A poisoned lock fails closed.
            Err(_) => true,
        }
    }
}

#[async_trait]
impl IdentityService for AuthService {
    async fn register(&self, reg: Registration) -> CoreResult<User> {
        if self.settings.registration != RegistrationMode::Open {
            return Err(CoreError::Disabled(
                "registration is closed; ask an administrator for an account".into(),
            ));
        }
        if let Some(e) = &reg.email {
            if e.len() > 254 || !e.contains('@') || e.starts_with('@') || e.ends_with('@') {
                return Err(CoreError::validation("invalid_email", "email is not valid"));
            }
        }
        self.create_user(
            DEFAULT_TENANT,
            &reg.username,
            reg.email,
            &reg.password,
            UserRole::User,
        )
        .await
    }

    async fn login(&self, username: &str, password: &str) -> CoreResult<IssuedTokens> {
        let user = if username.len() <= 50 && password.len() <= 1024 {
            self.users
                .find_by_username(DEFAULT_TENANT, username)
                .await?
        } else {
            None
        };
        // Always run one Argon2 verification so unknown users answer in the same time.
        let phc = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let pw = password.to_string();
        let ok = blocking(move || verify_password(&phc, &pw)).await?;
        match user {
            Some(u) if ok && u.is_active => {
                let family_expires = now_millis() + self.settings.refresh_absolute_secs * 1000;
                self.issue(&u, TokenFamilyId::new(), family_expires).await
            }
            _ => Err(CoreError::invalid_credentials()),
        }
    }

    async fn refresh(&self, refresh_token: &str) -> CoreResult<IssuedTokens> {
        if refresh_token.is_empty() || refresh_token.len() > 200 {
            return Err(CoreError::invalid_token());
        }
        match self
            .tokens
            .consume(&hash_refresh_token(refresh_token), now_millis())
            .await?
        {
            ConsumeOutcome::Consumed(rec) => {
                let user = self
                    .users
                    .find_by_id(rec.tenant_id, rec.user_id)
                    .await?
                    .filter(|u| u.is_active)
                    .ok_or_else(CoreError::invalid_token)?;
                self.issue(&user, rec.family_id, rec.family_expires_at)
                    .await
            }
            ConsumeOutcome::Reused { family_id, user_id } => {
                tracing::warn!(%family_id, %user_id, "refresh token reuse detected; family revoked");
                Err(CoreError::invalid_token())
            }
            ConsumeOutcome::Invalid => Err(CoreError::invalid_token()),
        }
    }

    async fn logout(&self, refresh_token: Option<&str>, who: Option<&Principal>) -> CoreResult<()> {
        if let Some(t) = refresh_token.filter(|t| !t.is_empty() && t.len() <= 200) {
            self.tokens.revoke_family_of(&hash_refresh_token(t)).await?;
        }
        if let Some(p) = who {
            let exp = chrono::Utc::now().timestamp() + self.settings.access_ttl_secs + 60;
            if let Ok(mut d) = self.denied.lock() {
                d.insert(p.token_id.clone(), exp);
            }
        }
        Ok(())
    }

    async fn authenticate(&self, access_token: &str) -> CoreResult<Principal> {
        let claims = self.keys.verify(access_token)?;
        let user_id: UserId = claims.sub.parse().map_err(|_| CoreError::invalid_token())?;
        let tenant_id: TenantId = claims.tid.parse().map_err(|_| CoreError::invalid_token())?;
        if self.is_denied(&claims.jti, chrono::Utc::now().timestamp()) {
            return Err(CoreError::invalid_token());
        }
        let user = self
            .users
            .find_by_id(tenant_id, user_id)
            .await?
            .filter(|u| u.is_active && claims.iat >= u.tokens_valid_after)
            .ok_or_else(CoreError::invalid_token)?;
        Ok(Principal {
            user_id: user.id,
            tenant_id: user.tenant_id,
            username: user.username,
            role: user.role,
            token_id: claims.jti,
        })
    }

    async fn current_user(&self, who: &Principal) -> CoreResult<User> {
        self.users
            .find_by_id(who.tenant_id, who.user_id)
            .await?
            .ok_or_else(CoreError::invalid_token)
    }
}
