//! The identity service: registration, password login with throttling and the TOTP step,
//! refresh-token rotation, logout, bearer authentication (access tokens, API keys) and scoped
//! LLM tokens, over the core's repository ports. Self-service lives in `account.rs`,
//! administration in `admin.rs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use palisade_core::access::{PermissionSet, RoleRegistry, CHAT_SEND, LLM_GENERATE};
use palisade_core::auth_api::{
    ClientInfo, IdentityService, IssuedTokens, LoginOutcome, Registration, ScopedGrant, ScopedToken,
};
use palisade_core::entities::{now_millis, Credential, NewUser, Principal, User};
use palisade_core::identity::{AuthSession, LoginState, SecurityEvent, SecurityEventKind as K};
use palisade_core::ids::{TenantId, TokenFamilyId, UserId, DEFAULT_TENANT};
use palisade_core::ports::{
    ApiKeyRepository, ConsumeOutcome, ExternalIdentityRepository, RefreshTokenRecord,
    RefreshTokenRepository, SecurityEventSink, TenantRepository, UserRepository,
};
use palisade_core::shared::{LocalShared, SharedState};
use palisade_core::{CoreError, CoreResult};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::jwt::{AccessClaims, KeyRing, MfaClaims, ScopedClaims, TokenKind};
use crate::password::{
    check_username, hash_password, needs_rehash, verify_password, PasswordPolicy,
};
use crate::throttle::{refusal, GhostAccounts, Refusal, ThrottlePolicy};

/// Who may create an account through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationMode {
    Open,
    /// Only with an invitation code from an administrator.
    Invite,
    /// Accounts are created by administrators (`palisade user create`, admin API).
    Closed,
}

/// Lifetimes, rules and names used by the service.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub access_ttl_secs: i64,
    pub refresh_sliding_secs: i64,
    pub refresh_absolute_secs: i64,
    pub registration: RegistrationMode,
    pub password: PasswordPolicy,
    pub throttle: ThrottlePolicy,
    /// Lifetime of scoped LLM tokens (spec 004: 60 s).
    pub scoped_ttl_secs: i64,
    /// Largest `max_tokens` a scoped token may carry.
    pub scoped_max_tokens_cap: u32,
    /// Issuer shown in authenticator apps.
    pub totp_issuer: String,
    /// Service accounts by TLS client certificate: subject common name -> username of the
    /// default tenant (`tls.client_accounts`).
    pub certificate_accounts: std::collections::BTreeMap<String, String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            access_ttl_secs: 15 * 60,
            refresh_sliding_secs: 7 * 24 * 3600,
            refresh_absolute_secs: 30 * 24 * 3600,
            registration: RegistrationMode::Closed,
            password: PasswordPolicy::default(),
            throttle: ThrottlePolicy::default(),
            scoped_ttl_secs: 60,
            scoped_max_tokens_cap: 2048,
            totp_issuer: "Palisade".into(),
            certificate_accounts: std::collections::BTreeMap::new(),
        }
    }
}

/// The repositories the service works on (usually one store implementing them all).
#[derive(Clone)]
pub struct AuthRepos {
    pub users: Arc<dyn UserRepository>,
    pub tenants: Arc<dyn TenantRepository>,
    pub tokens: Arc<dyn RefreshTokenRepository>,
    pub api_keys: Arc<dyn ApiKeyRepository>,
    pub links: Arc<dyn ExternalIdentityRepository>,
    pub events: Arc<dyn SecurityEventSink>,
    pub invites: Arc<dyn palisade_core::ports::InviteRepository>,
}

/// SHA-256 of a secret (refresh token, API key, recovery code), hex; only this is stored.
pub fn hash_secret(token: &str) -> String {
    palisade_core::hex_lower(&Sha256::digest(token.as_bytes()))
}

/// Kept for callers of the first version.
pub fn hash_refresh_token(token: &str) -> String {
    hash_secret(token)
}

/// 256 random bits, base64url.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Constant-time equality of two strings.
pub(crate) fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> CoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Internal(format!("blocking task: {e}")))
}

/// The identity service over the repositories.
pub struct AuthService {
    pub(crate) repos: AuthRepos,
    pub(crate) keys: Arc<KeyRing>,
    pub(crate) roles: Arc<RoleRegistry>,
    pub(crate) settings: AuthSettings,
    /// A hash checked for unknown users so that they take as long as known ones.
    dummy_hash: String,
    ghosts: GhostAccounts,
    /// `jti`s of logged-out access tokens until they expire, and other state every replica
    /// sees (memory in one process, Redis with `redis.url`).
    shared: Arc<dyn SharedState>,
    pub(crate) oidc: Option<Arc<crate::oidc::Oidc>>,
    pub(crate) ldap: Option<Arc<crate::ldap::Ldap>>,
}

impl AuthService {
    pub fn new(
        repos: AuthRepos,
        keys: Arc<KeyRing>,
        roles: Arc<RoleRegistry>,
        settings: AuthSettings,
    ) -> CoreResult<AuthService> {
        Ok(AuthService {
            repos,
            keys,
            roles,
            ghosts: GhostAccounts::new(settings.throttle, 100_000),
            settings,
            dummy_hash: hash_password("palisade-timing-equaliser")?,
            shared: Arc::new(LocalShared::new()),
            oidc: None,
            ldap: None,
        })
    }

    /// Keeps revoked token ids where every replica sees them.
    pub fn with_shared(mut self, shared: Arc<dyn SharedState>) -> Self {
        self.shared = shared;
        self
    }

    /// Accepts the OpenID provider's logins and bearer tokens.
    pub fn with_oidc(mut self, oidc: crate::oidc::Oidc) -> Self {
        self.oidc = Some(Arc::new(oidc));
        self
    }

    /// Authenticates unknown or LDAP-backed users against the directory.
    pub fn with_ldap(mut self, ldap: crate::ldap::Ldap) -> Self {
        self.ldap = Some(Arc::new(ldap));
        self
    }

    /// True when single sign-on is configured.
    pub fn sso_enabled(&self) -> bool {
        self.oidc.is_some()
    }

    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    pub fn roles(&self) -> &Arc<RoleRegistry> {
        &self.roles
    }

    pub fn password_policy(&self) -> &PasswordPolicy {
        &self.settings.password
    }

    /// Records a security event; a failing sink is logged, never fatal to the request.
    pub(crate) async fn emit(&self, event: SecurityEvent) {
        let kind = event.kind.as_str();
        if let Err(e) = self.repos.events.record(event).await {
            tracing::error!(kind, error = %e, "could not record a security event");
        }
    }

    /// Creates a user directly (admin CLI, bootstrap, import); checks the rules and hashes.
    /// `password_hash` may be given instead of a password (bcrypt import).
    pub async fn create_user(&self, req: CreateUser) -> CoreResult<User> {
        check_username(&req.username)?;
        let role = self.roles.resolve(&req.role)?;
        if let Some(e) = &req.email {
            check_email(e)?;
        }
        let hash = match (req.password, req.password_hash) {
            (Some(pw), _) => {
                if !req.skip_policy {
                    self.settings.password.check(
                        &req.username,
                        req.email.as_deref(),
                        &pw,
                        false,
                    )?;
                }
                blocking(move || hash_password(&pw)).await??
            }
            (None, Some(h)) => h,
            (None, None) => {
                return Err(CoreError::validation(
                    "invalid_password",
                    "a password is required",
                ))
            }
        };
        self.repos
            .users
            .create_user(NewUser {
                tenant_id: req.tenant,
                username: req.username,
                email: req.email,
                password_hash: hash,
                role,
                must_change_password: req.must_change_password,
                auth_source: req.auth_source,
            })
            .await
    }

    /// The principal of a user authenticated by `credential`, its permissions narrowed by
    /// `scopes` when the credential has them.
    pub(crate) fn principal_for(
        &self,
        user: &User,
        credential: Credential,
        token_id: String,
        scopes: Option<&PermissionSet>,
    ) -> Principal {
        let role_perms = self.roles.permissions(&user.role);
        let permissions = match scopes {
            Some(s) => role_perms.intersect(s),
            None => role_perms,
        };
        Principal {
            user_id: user.id,
            tenant_id: user.tenant_id,
            username: user.username.clone(),
            role: user.role.clone(),
            permissions,
            credential,
            token_id,
            must_change_password: user.must_change_password,
            needs_2fa_enrolment: self.roles.requires_2fa(&user.role) && !user.totp_enabled,
            client: ClientInfo::default(),
        }
    }

    /// Starts a login session and issues its first tokens.
    pub(crate) async fn start_session(
        &self,
        user: &User,
        client: &ClientInfo,
    ) -> CoreResult<IssuedTokens> {
        let now = now_millis();
        let family_expires = now + self.settings.refresh_absolute_secs * 1000;
        let session = AuthSession {
            id: TokenFamilyId::new(),
            tenant_id: user.tenant_id,
            user_id: user.id,
            created_at: now,
            last_used_at: now,
            expires_at: family_expires,
            user_agent: client
                .user_agent
                .as_ref()
                .map(|s| s.chars().take(256).collect()),
            ip: client.ip.clone(),
            revoked: false,
        };
        self.repos.tokens.create_auth_session(&session).await?;
        self.issue(user, session.id, family_expires).await
    }

    async fn issue(
        &self,
        user: &User,
        family: TokenFamilyId,
        family_expires_at: i64,
    ) -> CoreResult<IssuedTokens> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.keys.issuer().to_string(),
            aud: self.keys.audience(TokenKind::Access),
            sub: user.id.to_string(),
            tid: user.tenant_id.to_string(),
            role: user.role.as_str().into(),
            jti: uuid::Uuid::now_v7().to_string(),
            sid: Some(family.to_string()),
            iat: now,
            nbf: now,
            exp: now + self.settings.access_ttl_secs,
        };
        let access_token = self.keys.sign(TokenKind::Access, &claims)?;
        let refresh = random_token();
        let now_ms = now_millis();
        self.repos
            .tokens
            .insert(RefreshTokenRecord {
                token_hash: hash_secret(&refresh),
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
            refresh_expires_in: ((family_expires_at - now_ms).max(0) / 1000) as u64,
        })
    }

    /// Whether the access token `jti` was revoked. When the shared state cannot answer, the
    /// token is refused (fail closed).
    async fn is_denied(&self, jti: &str) -> CoreResult<bool> {
        self.shared.is_denied(jti).await
    }

    /// Revokes the access token `jti` on every replica until it would have expired anyway.
    pub(crate) async fn deny_jti(&self, jti: &str) -> CoreResult<()> {
        let ttl = Duration::from_secs(self.settings.access_ttl_secs.max(0) as u64 + 60);
        self.shared.deny(jti, ttl).await
    }

    /// Ends every session and access token of a user (logout everywhere, password or role
    /// change, disable).
    pub(crate) async fn end_all_sessions(&self, tenant: TenantId, user: UserId) -> CoreResult<()> {
        self.repos
            .users
            .set_tokens_valid_after(tenant, user, chrono::Utc::now().timestamp())
            .await?;
        self.repos.tokens.revoke_user(tenant, user).await
    }

    /// Records a failed attempt against a real account and returns the error to answer with.
    pub(crate) async fn count_failure(
        &self,
        user: &User,
        client: &ClientInfo,
        kind: K,
    ) -> CoreError {
        let now = now_millis();
        let (n, until, hard) = self
            .settings
            .throttle
            .after_failure(user.failed_logins, now);
        let state = LoginState {
            failed_logins: n,
            locked_until: until,
            hard_locked: hard,
            last_login_at: None,
        };
        if let Err(e) = self
            .repos
            .users
            .set_login_state(user.tenant_id, user.id, state)
            .await
        {
            return e;
        }
        self.emit(
            SecurityEvent::new(kind)
                .user(user.tenant_id, user.id)
                .client(client)
                .detail(serde_json::json!({ "consecutive_failures": n, "hard_locked": hard })),
        )
        .await;
        if hard && !user.hard_locked {
            self.emit(
                SecurityEvent::new(K::LoginLocked)
                    .user(user.tenant_id, user.id)
                    .client(client),
            )
            .await;
        }
        if kind == K::TotpFailure {
            CoreError::Unauthenticated { code: "mfa_failed" }
        } else {
            CoreError::invalid_credentials()
        }
    }

    pub(crate) fn refusal_error(r: Refusal) -> CoreError {
        match r {
            Refusal::Wait(secs) => CoreError::too_many(
                "login_throttled",
                format!("too many failed attempts; try again in {secs} s"),
                secs,
            ),
            Refusal::Locked => CoreError::too_many(
                "account_locked",
                "too many failed attempts; an administrator must unlock this account",
                3600,
            ),
        }
    }

    async fn load_active_user(&self, tenant: TenantId, id: UserId) -> CoreResult<User> {
        let user = self
            .repos
            .users
            .find_by_id(tenant, id)
            .await?
            .filter(|u| u.is_active)
            .ok_or_else(CoreError::invalid_token)?;
        if tenant != DEFAULT_TENANT {
            let active = self
                .repos
                .tenants
                .get_tenant(tenant)
                .await?
                .is_some_and(|t| t.is_active);
            if !active {
                return Err(CoreError::invalid_token());
            }
        }
        Ok(user)
    }

    async fn authenticate_access(&self, token: &str) -> CoreResult<Principal> {
        let claims: AccessClaims = self.keys.verify(TokenKind::Access, token)?;
        let user_id: UserId = claims.sub.parse().map_err(|_| CoreError::invalid_token())?;
        let tenant_id: TenantId = claims.tid.parse().map_err(|_| CoreError::invalid_token())?;
        if self.is_denied(&claims.jti).await? {
            return Err(CoreError::invalid_token());
        }
        let user = self.load_active_user(tenant_id, user_id).await?;
        if claims.iat < user.tokens_valid_after {
            return Err(CoreError::invalid_token());
        }
        let session = match &claims.sid {
            Some(sid) => {
                let sid: TokenFamilyId = sid.parse().map_err(|_| CoreError::invalid_token())?;
                let live = self
                    .repos
                    .tokens
                    .get_auth_session(sid)
                    .await?
                    .is_some_and(|s| !s.revoked && s.user_id == user.id);
                if !live {
                    return Err(CoreError::invalid_token());
                }
                Some(sid)
            }
            None => None,
        };
        Ok(self.principal_for(&user, Credential::Session { session }, claims.jti, None))
    }

    async fn authenticate_api_key(&self, key: &str) -> CoreResult<Principal> {
        if key.len() > 128 || key.len() < crate::account::API_KEY_PREFIX_LEN {
            return Err(CoreError::invalid_token());
        }
        let prefix: String = key
            .chars()
            .take(crate::account::API_KEY_PREFIX_LEN)
            .collect();
        let stored = self
            .repos
            .api_keys
            .find_key_by_prefix(&prefix)
            .await?
            .ok_or_else(CoreError::invalid_token)?;
        let now = now_millis();
        if !ct_eq(&hash_secret(key), &stored.key_hash)
            || stored.revoked
            || stored.expires_at.is_some_and(|e| e <= now)
        {
            return Err(CoreError::invalid_token());
        }
        let user = self
            .load_active_user(stored.tenant_id, stored.user_id)
            .await?;
        // Scopes narrow the role; a model allow-list replaces blanket model grants.
        let mut scopes: Vec<String> = stored.scopes.clone();
        if let Some(models) = &stored.models {
            scopes.retain(|s| !s.starts_with("model:"));
            scopes.extend(models.iter().map(|m| format!("model:{m}:use")));
        }
        if stored.last_used_at.is_none_or(|t| now - t > 60_000) {
            self.repos.api_keys.touch_key(stored.id, now).await?;
        }
        let mut p = self.principal_for(
            &user,
            Credential::ApiKey {
                key_id: stored.id,
                store_conversations: stored.store_conversations,
            },
            stored.id.to_string(),
            Some(&PermissionSet::of(scopes)),
        );
        // Keys are for programs: a pending password change or enrolment does not apply to them,
        // but a key of an account that must change its password is refused outright.
        if p.must_change_password {
            return Err(CoreError::denied(
                "password_change_required",
                "the key's owner must change their password first",
            ));
        }
        p.needs_2fa_enrolment = false;
        Ok(p)
    }

    pub(crate) fn mfa_challenge(&self, user: &User) -> CoreResult<LoginOutcome> {
        let now = chrono::Utc::now().timestamp();
        let ttl = 300;
        let claims = MfaClaims {
            iss: self.keys.issuer().to_string(),
            aud: self.keys.audience(TokenKind::MfaChallenge),
            sub: user.id.to_string(),
            tid: user.tenant_id.to_string(),
            jti: uuid::Uuid::now_v7().to_string(),
            iat: now,
            nbf: now,
            exp: now + ttl,
        };
        Ok(LoginOutcome::MfaRequired {
            mfa_token: self.keys.sign(TokenKind::MfaChallenge, &claims)?,
            expires_in: ttl as u64,
        })
    }

    /// Password login in a tenant (the default tenant for single-tenant installs).
    pub async fn login_in(
        &self,
        tenant: TenantId,
        username: &str,
        password: &str,
        client: &ClientInfo,
    ) -> CoreResult<LoginOutcome> {
        let now = now_millis();
        let plausible = !username.is_empty()
            && username.len() <= 254
            && !password.is_empty()
            && password.len() <= 4096;
        let user = if plausible {
            self.repos.users.find_by_username(tenant, username).await?
        } else {
            None
        };
        // Directory users (known as LDAP-backed, or unknown here) bind against the directory.
        let ldap_candidate = self.ldap.is_some()
            && tenant == DEFAULT_TENANT
            && user.as_ref().is_none_or(|u| u.auth_source == "ldap");
        // Throttling answers the same for real and unknown names.
        let refused = match &user {
            Some(u) => refusal(u.locked_until, u.hard_locked, now),
            None => self.ghosts.refusal(username, now),
        };
        if let Some(r) = refused {
            if let Some(u) = &user {
                self.emit(
                    SecurityEvent::new(K::LoginFailure)
                        .user(u.tenant_id, u.id)
                        .client(client)
                        .detail(serde_json::json!({ "reason": "throttled" })),
                )
                .await;
            }
            return Err(Self::refusal_error(r));
        }
        if ldap_candidate && plausible {
            if let Some(outcome) = self.ldap_login(username, password, client).await? {
                return Ok(outcome);
            }
            return Err(match &user {
                Some(u) => self.count_failure(u, client, K::LoginFailure).await,
                None => {
                    self.ghosts.fail(username, now);
                    CoreError::invalid_credentials()
                }
            });
        }
        // Always one Argon2 verification, so unknown users answer in the same time.
        let stored = user
            .as_ref()
            .filter(|u| u.auth_source == "local")
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let pw = password.to_string();
        let ok = blocking(move || verify_password(&stored, &pw)).await?;
        let user = match user {
            Some(u) if ok && u.auth_source == "local" => u,
            Some(u) => return Err(self.count_failure(&u, client, K::LoginFailure).await),
            None => {
                self.ghosts.fail(username, now);
                self.emit(
                    SecurityEvent::new(K::LoginFailure)
                        .client(client)
                        .detail(serde_json::json!({ "reason": "unknown_user" })),
                )
                .await;
                return Err(CoreError::invalid_credentials());
            }
        };
        if !user.is_active {
            return Err(CoreError::invalid_credentials());
        }
        if tenant != DEFAULT_TENANT
            && !self
                .repos
                .tenants
                .get_tenant(tenant)
                .await?
                .is_some_and(|t| t.is_active)
        {
            return Err(CoreError::invalid_credentials());
        }
        // Imported (bcrypt) or weaker hashes are upgraded now that we know the password.
        if needs_rehash(&user.password_hash) {
            let pw = password.to_string();
            let new_hash = blocking(move || hash_password(&pw)).await??;
            self.repos
                .users
                .update_user(
                    user.tenant_id,
                    user.id,
                    &palisade_core::identity::UserUpdate {
                        password_hash: Some(new_hash),
                        ..Default::default()
                    },
                )
                .await?;
        }
        if user.totp_enabled {
            // Failures are counted across both steps; the count resets after the second.
            return self.mfa_challenge(&user);
        }
        self.finish_login(&user, client).await
    }

    pub(crate) async fn finish_login(
        &self,
        user: &User,
        client: &ClientInfo,
    ) -> CoreResult<LoginOutcome> {
        let now = now_millis();
        self.repos
            .users
            .set_login_state(
                user.tenant_id,
                user.id,
                LoginState {
                    failed_logins: 0,
                    locked_until: 0,
                    hard_locked: false,
                    last_login_at: Some(now),
                },
            )
            .await?;
        let tokens = self.start_session(user, client).await?;
        self.emit(
            SecurityEvent::new(K::LoginSuccess)
                .user(user.tenant_id, user.id)
                .client(client)
                .detail(serde_json::json!({ "method": user.auth_source })),
        )
        .await;
        Ok(LoginOutcome::Tokens(tokens))
    }

    /// Finds the tenant for a login: by name when given, else the default tenant.
    pub async fn tenant_by_name(&self, name: Option<&str>) -> CoreResult<TenantId> {
        match name {
            None => Ok(DEFAULT_TENANT),
            Some(n) => Ok(self
                .repos
                .tenants
                .find_tenant_by_name(n)
                .await?
                .map(|t| t.id)
                // An unknown tenant behaves like an unknown user.
                .unwrap_or_else(TenantId::new)),
        }
    }
}

/// Creating a user from the CLI, the admin API or an import.
#[derive(Debug, Clone)]
pub struct CreateUser {
    pub tenant: TenantId,
    pub username: String,
    pub email: Option<String>,
    pub password: Option<String>,
    /// An existing hash (bcrypt import) used instead of a password.
    pub password_hash: Option<String>,
    pub role: String,
    pub must_change_password: bool,
    pub auth_source: String,
    /// Generated passwords and imports skip the strength check.
    pub skip_policy: bool,
}

impl CreateUser {
    pub fn local(tenant: TenantId, username: &str, password: &str, role: &str) -> CreateUser {
        CreateUser {
            tenant,
            username: username.into(),
            email: None,
            password: Some(password.into()),
            password_hash: None,
            role: role.into(),
            must_change_password: false,
            auth_source: "local".into(),
            skip_policy: false,
        }
    }
}

pub(crate) fn check_email(e: &str) -> CoreResult<()> {
    let ok = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(CoreError::validation("invalid_email", "email is not valid"))
    }
}

#[async_trait]
impl IdentityService for AuthService {
    async fn register(&self, reg: Registration, client: &ClientInfo) -> CoreResult<User> {
        let invite = match self.settings.registration {
            RegistrationMode::Closed => {
                return Err(CoreError::Disabled(
                    "registration is closed; ask an administrator for an account".into(),
                ))
            }
            RegistrationMode::Open => None,
            RegistrationMode::Invite => {
                let code = reg
                    .invite
                    .as_deref()
                    .filter(|c| !c.is_empty() && c.len() <= 200);
                let found = match code {
                    Some(c) => {
                        self.repos
                            .invites
                            .consume_invite(&hash_secret(c), now_millis())
                            .await?
                    }
                    None => None,
                };
                Some(found.ok_or_else(|| {
                    CoreError::denied(
                        "invalid_invite",
                        "registration needs a valid, unused invitation code",
                    )
                })?)
            }
        };
        let (tenant, role) = match &invite {
            Some(i) => (i.tenant_id, i.role.as_str().to_string()),
            None => (DEFAULT_TENANT, "user".to_string()),
        };
        let created = self
            .create_user(CreateUser {
                email: reg.email,
                ..CreateUser::local(tenant, &reg.username, &reg.password, &role)
            })
            .await;
        let user = match created {
            Ok(u) => u,
            Err(e) => {
                // A failed registration does not spend the invitation.
                if let Some(i) = &invite {
                    self.repos.invites.release_invite(&i.code_hash).await?;
                }
                return Err(e);
            }
        };
        self.emit(
            SecurityEvent::new(K::UserCreated)
                .user(user.tenant_id, user.id)
                .client(client)
                .detail(serde_json::json!({ "via": "register", "role": user.role.as_str() })),
        )
        .await;
        Ok(user)
    }

    async fn login(
        &self,
        tenant: Option<&str>,
        username: &str,
        password: &str,
        client: &ClientInfo,
    ) -> CoreResult<LoginOutcome> {
        let tenant = self.tenant_by_name(tenant).await?;
        self.login_in(tenant, username, password, client).await
    }

    async fn login_second_factor(
        &self,
        mfa_token: &str,
        code: &str,
        client: &ClientInfo,
    ) -> CoreResult<IssuedTokens> {
        let claims: MfaClaims = self.keys.verify(TokenKind::MfaChallenge, mfa_token)?;
        let uid: UserId = claims.sub.parse().map_err(|_| CoreError::invalid_token())?;
        let tid: TenantId = claims.tid.parse().map_err(|_| CoreError::invalid_token())?;
        let user = self.load_active_user(tid, uid).await?;
        if let Some(r) = refusal(user.locked_until, user.hard_locked, now_millis()) {
            return Err(Self::refusal_error(r));
        }
        if !self.check_second_factor(&user, code, client).await? {
            return Err(self.count_failure(&user, client, K::TotpFailure).await);
        }
        match self.finish_login(&user, client).await? {
            LoginOutcome::Tokens(t) => Ok(t),
            LoginOutcome::MfaRequired { .. } => {
                Err(CoreError::Internal("second factor asked twice".into()))
            }
        }
    }

    async fn refresh(&self, refresh_token: &str, client: &ClientInfo) -> CoreResult<IssuedTokens> {
        if refresh_token.is_empty() || refresh_token.len() > 200 {
            return Err(CoreError::invalid_token());
        }
        match self
            .repos
            .tokens
            .consume(&hash_secret(refresh_token), now_millis())
            .await?
        {
            ConsumeOutcome::Consumed(rec) => {
                let user = self.load_active_user(rec.tenant_id, rec.user_id).await?;
                let tokens = self
                    .issue(&user, rec.family_id, rec.family_expires_at)
                    .await?;
                self.emit(
                    SecurityEvent::new(K::TokenRefresh)
                        .user(user.tenant_id, user.id)
                        .client(client),
                )
                .await;
                Ok(tokens)
            }
            ConsumeOutcome::Reused { family_id, user_id } => {
                tracing::warn!(%family_id, %user_id, "refresh token reuse detected; family revoked");
                let tenant = self
                    .repos
                    .tokens
                    .get_auth_session(family_id)
                    .await?
                    .map(|s| s.tenant_id);
                let mut ev = SecurityEvent::new(K::RefreshReuse)
                    .client(client)
                    .detail(serde_json::json!({ "session_id": family_id.to_string() }));
                if let Some(t) = tenant {
                    ev = ev.user(t, user_id);
                }
                self.emit(ev).await;
                Err(CoreError::invalid_token())
            }
            ConsumeOutcome::Invalid => Err(CoreError::invalid_token()),
        }
    }

    async fn logout(&self, refresh_token: Option<&str>, who: Option<&Principal>) -> CoreResult<()> {
        if let Some(t) = refresh_token.filter(|t| !t.is_empty() && t.len() <= 200) {
            self.repos.tokens.revoke_family_of(&hash_secret(t)).await?;
        }
        if let Some(p) = who {
            // The session first (the database every replica reads), then the token id.
            if let Credential::Session { session: Some(sid) } = &p.credential {
                self.repos.tokens.revoke_family(*sid).await?;
            }
            self.deny_jti(&p.token_id).await?;
            self.emit(
                SecurityEvent::new(K::Logout)
                    .user(p.tenant_id, p.user_id)
                    .client(&p.client),
            )
            .await;
        }
        Ok(())
    }

    async fn logout_all(&self, p: &Principal) -> CoreResult<()> {
        self.end_all_sessions(p.tenant_id, p.user_id).await?;
        self.deny_jti(&p.token_id).await?;
        self.emit(
            SecurityEvent::new(K::LogoutAll)
                .user(p.tenant_id, p.user_id)
                .client(&p.client),
        )
        .await;
        Ok(())
    }

    async fn authenticate(&self, bearer: &str, client: &ClientInfo) -> CoreResult<Principal> {
        let mut who = if bearer.starts_with(crate::account::API_KEY_PREFIX) {
            self.authenticate_api_key(bearer).await?
        } else {
            match &self.oidc {
                // Routing only: the token is then fully verified against the provider's keys.
                Some(oidc) if oidc.is_ours(bearer) => self.authenticate_external(bearer).await?,
                _ => self.authenticate_access(bearer).await?,
            }
        };
        who.client = client.clone();
        Ok(who)
    }

    async fn authenticate_certificate(
        &self,
        common_name: &str,
        client: &ClientInfo,
    ) -> CoreResult<Principal> {
        let Some(username) = self.settings.certificate_accounts.get(common_name) else {
            return Err(CoreError::unauthenticated());
        };
        let user = self
            .repos
            .users
            .find_by_username(DEFAULT_TENANT, username)
            .await?
            .filter(|u| u.is_active)
            .ok_or_else(CoreError::invalid_token)?;
        let mut p = self.principal_for(
            &user,
            Credential::External {
                issuer: palisade_core::entities::CLIENT_CERTIFICATE.to_string(),
            },
            format!("cert:{common_name}"),
            None,
        );
        // As for API keys: an account that must change its password is refused, and a 2FA
        // enrolment (an interactive step) does not apply to a program.
        if p.must_change_password {
            return Err(CoreError::denied(
                "password_change_required",
                "the certificate's account must change its password first",
            ));
        }
        p.needs_2fa_enrolment = false;
        p.client = client.clone();
        Ok(p)
    }

    fn sso_enabled(&self) -> bool {
        AuthService::sso_enabled(self)
    }

    fn registration_mode(&self) -> &'static str {
        match self.settings.registration {
            RegistrationMode::Open => "open",
            RegistrationMode::Invite => "invite",
            RegistrationMode::Closed => "closed",
        }
    }

    async fn sso_begin(&self) -> CoreResult<String> {
        AuthService::sso_begin(self).await
    }

    async fn sso_finish(
        &self,
        code: &str,
        state: &str,
        client: &ClientInfo,
    ) -> CoreResult<IssuedTokens> {
        AuthService::sso_finish(self, code, state, client).await
    }

    async fn current_user(&self, who: &Principal) -> CoreResult<User> {
        self.repos
            .users
            .find_by_id(who.tenant_id, who.user_id)
            .await?
            .ok_or_else(CoreError::invalid_token)
    }

    async fn issue_scoped_token(
        &self,
        p: &Principal,
        model: &str,
        max_tokens: u32,
        scopes: &[String],
    ) -> CoreResult<ScopedToken> {
        if scopes.is_empty() || scopes.iter().any(|s| s != LLM_GENERATE) {
            return Err(CoreError::validation(
                "invalid_scope",
                "the only scope a scoped token can carry is `llm:generate`",
            ));
        }
        if max_tokens == 0 || max_tokens > self.settings.scoped_max_tokens_cap {
            return Err(CoreError::validation(
                "invalid_max_tokens",
                format!(
                    "max_tokens must be between 1 and {}",
                    self.settings.scoped_max_tokens_cap
                ),
            ));
        }
        if !p.can(CHAT_SEND) || !p.may_use_model(model) {
            return Err(CoreError::Forbidden);
        }
        let now = chrono::Utc::now().timestamp();
        let (sid, akid) = match &p.credential {
            Credential::Session { session } => (session.map(|s| s.to_string()), None),
            Credential::ApiKey { key_id, .. } => (None, Some(key_id.to_string())),
            Credential::External { .. } => (None, None),
        };
        let claims = ScopedClaims {
            iss: self.keys.issuer().to_string(),
            aud: self.keys.audience(TokenKind::Scoped),
            sub: p.user_id.to_string(),
            tid: p.tenant_id.to_string(),
            scope: vec![LLM_GENERATE.to_string()],
            model: model.to_string(),
            max_tokens,
            sid,
            akid,
            jti: uuid::Uuid::now_v7().to_string(),
            iat: now,
            nbf: now,
            exp: now + self.settings.scoped_ttl_secs,
        };
        let token = self.keys.sign(TokenKind::Scoped, &claims)?;
        self.emit(
            SecurityEvent::new(K::ScopedTokenIssued)
                .user(p.tenant_id, p.user_id)
                .client(&p.client)
                .detail(serde_json::json!({ "model": model, "max_tokens": max_tokens })),
        )
        .await;
        Ok(ScopedToken {
            token,
            expires_in: self.settings.scoped_ttl_secs.max(0) as u64,
        })
    }

    async fn verify_scoped_token(&self, token: &str) -> CoreResult<ScopedGrant> {
        let c: ScopedClaims = self.keys.verify(TokenKind::Scoped, token)?;
        if c.scope.iter().all(|s| s != LLM_GENERATE) {
            return Err(CoreError::Forbidden);
        }
        let uid: UserId = c.sub.parse().map_err(|_| CoreError::invalid_token())?;
        let tid: TenantId = c.tid.parse().map_err(|_| CoreError::invalid_token())?;
        let user = self.load_active_user(tid, uid).await?;
        if c.iat < user.tokens_valid_after {
            return Err(CoreError::invalid_token());
        }
        if let Some(sid) = &c.sid {
            let sid: TokenFamilyId = sid.parse().map_err(|_| CoreError::invalid_token())?;
            let live = self
                .repos
                .tokens
                .get_auth_session(sid)
                .await?
                .is_some_and(|s| !s.revoked && s.user_id == user.id);
            if !live {
                return Err(CoreError::invalid_token());
            }
        }
        if let Some(akid) = &c.akid {
            let live = self
                .repos
                .api_keys
                .list_keys(user.tenant_id, user.id)
                .await?
                .into_iter()
                .any(|k| k.id.to_string() == *akid && !k.revoked);
            if !live {
                return Err(CoreError::invalid_token());
            }
        }
        let scopes = PermissionSet::of([
            CHAT_SEND.to_string(),
            LLM_GENERATE.to_string(),
            format!("model:{}:use", c.model),
        ]);
        let mut principal = self.principal_for(
            &user,
            Credential::Session { session: None },
            c.jti,
            Some(&scopes),
        );
        // The role still governs: a token minted before a role change loses what the role lost.
        if !principal.may_use_model(&c.model) || !principal.can(CHAT_SEND) {
            return Err(CoreError::Forbidden);
        }
        principal.needs_2fa_enrolment = false;
        principal.must_change_password = false;
        Ok(ScopedGrant {
            principal,
            model: c.model,
            max_tokens: c.max_tokens,
        })
    }

    fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.jwks() })
    }
}
