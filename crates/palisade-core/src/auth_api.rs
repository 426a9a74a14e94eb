//! The identity services the HTTP layer calls: authentication (`IdentityService`), self-service
//! account management (`AccountService`) and administration (`AdminService`). Administrative
//! methods take a `Grant<P>`, so a caller that never passed the permission check cannot call them.

use async_trait::async_trait;

use crate::access::{ApiKeysManage, Grant, RoleDef, RolesRead, TenantsManage, UsersManage};
use crate::entities::{Principal, User};
use crate::error::CoreResult;
use crate::identity::{ApiKey, AuthSession, SecurityEvent, Tenant, UserQuery};
use crate::ids::{ApiKeyId, TenantId, TokenFamilyId, UserId};

/// Where a request came from (for throttling and the event stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The request's `X-Request-Id` (the client's, when well-formed, or one made up).
    pub request_id: Option<String>,
}

/// Issued credentials of a login or refresh.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: String,
    /// The refresh token's absolute lifetime left, seconds (cookie `Max-Age`).
    pub refresh_expires_in: u64,
}

/// A password login either completes or asks for the second factor.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    Tokens(IssuedTokens),
    /// Send `mfa_token` and a TOTP or recovery code to the second-step endpoint.
    MfaRequired {
        mfa_token: String,
        expires_in: u64,
    },
}

/// Registration input after the HTTP layer parsed it.
#[derive(Debug, Clone)]
pub struct Registration {
    pub username: String,
    pub email: Option<String>,
    pub password: String,
    /// An invitation code, when registration is by invitation.
    pub invite: Option<String>,
}

/// A TOTP enrolment: the secret and the `otpauth://` URI for a QR code.
#[derive(Debug, Clone)]
pub struct TotpSetup {
    pub secret: String,
    pub otpauth_uri: String,
}

/// Asking for a new API key.
#[derive(Debug, Clone, Default)]
pub struct NewApiKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub models: Option<Vec<String>>,
    pub expires_in_days: Option<u32>,
    /// Keep `/v1` conversations made with the key in the owner's history.
    pub store_conversations: bool,
}

/// A scoped LLM token (spec 004): 60 seconds, one model, a `max_tokens` cap.
#[derive(Debug, Clone)]
pub struct ScopedToken {
    pub token: String,
    pub expires_in: u64,
}

/// What a verified scoped token allows.
#[derive(Debug, Clone)]
pub struct ScopedGrant {
    pub principal: Principal,
    pub model: String,
    pub max_tokens: u32,
}

/// Authentication: who is calling, and the token lifecycle.
#[async_trait]
pub trait IdentityService: Send + Sync + 'static {
    async fn register(&self, reg: Registration, client: &ClientInfo) -> CoreResult<User>;
    /// Password login; `tenant` is the tenant's name (the default tenant when absent).
    async fn login(
        &self,
        tenant: Option<&str>,
        username: &str,
        password: &str,
        client: &ClientInfo,
    ) -> CoreResult<LoginOutcome>;
    /// The second step of a login: a TOTP code or a recovery code.
    async fn login_second_factor(
        &self,
        mfa_token: &str,
        code: &str,
        client: &ClientInfo,
    ) -> CoreResult<IssuedTokens>;
    async fn refresh(&self, refresh_token: &str, client: &ClientInfo) -> CoreResult<IssuedTokens>;
    /// Ends the refresh token's session; with a principal also the current access token.
    async fn logout(
        &self,
        refresh_token: Option<&str>,
        principal: Option<&Principal>,
    ) -> CoreResult<()>;
    /// Ends every session of the caller.
    async fn logout_all(&self, principal: &Principal) -> CoreResult<()>;
    /// Verifies a bearer credential (access token, API key or IdP token) into a principal.
    async fn authenticate(&self, bearer: &str, client: &ClientInfo) -> CoreResult<Principal>;
    /// Authenticates a caller without a bearer by the subject common name of its TLS client
    /// certificate (already verified against the listener's CAs), when the configuration maps
    /// that name to a service account. Unmapped names are unauthenticated.
    async fn authenticate_certificate(
        &self,
        common_name: &str,
        client: &ClientInfo,
    ) -> CoreResult<Principal> {
        let _ = (common_name, client);
        Err(crate::error::CoreError::unauthenticated())
    }
    async fn current_user(&self, principal: &Principal) -> CoreResult<User>;
    /// Issues a 60-second token bound to one model and a `max_tokens` cap.
    async fn issue_scoped_token(
        &self,
        principal: &Principal,
        model: &str,
        max_tokens: u32,
        scopes: &[String],
    ) -> CoreResult<ScopedToken>;
    async fn verify_scoped_token(&self, token: &str) -> CoreResult<ScopedGrant>;
    /// The public JWKS document.
    fn jwks(&self) -> serde_json::Value;
    /// True when an OpenID provider is configured.
    fn sso_enabled(&self) -> bool;
    /// How accounts can register: `open`, `invite` or `closed` (for the login screen).
    fn registration_mode(&self) -> &'static str {
        "closed"
    }
    /// The provider URL a browser is sent to (authorization code + PKCE).
    async fn sso_begin(&self) -> CoreResult<String>;
    /// Redeems the provider's code: a Palisade session for the user.
    async fn sso_finish(
        &self,
        code: &str,
        state: &str,
        client: &ClientInfo,
    ) -> CoreResult<IssuedTokens>;
}

/// What users do to their own account.
#[async_trait]
pub trait AccountService: Send + Sync + 'static {
    /// Needs the current password (and a TOTP code when 2FA is on); ends every other session
    /// and returns fresh tokens for this one.
    async fn change_password(
        &self,
        principal: &Principal,
        current: &str,
        new: &str,
        totp: Option<&str>,
        client: &ClientInfo,
    ) -> CoreResult<IssuedTokens>;
    async fn change_email(
        &self,
        principal: &Principal,
        current_password: &str,
        email: Option<String>,
    ) -> CoreResult<User>;
    async fn totp_setup(
        &self,
        principal: &Principal,
        current_password: &str,
    ) -> CoreResult<TotpSetup>;
    /// Activates 2FA with a first valid code; returns the recovery codes (shown once).
    async fn totp_enable(&self, principal: &Principal, code: &str) -> CoreResult<Vec<String>>;
    async fn totp_disable(
        &self,
        principal: &Principal,
        current_password: &str,
        code: &str,
    ) -> CoreResult<()>;
    async fn my_sessions(&self, principal: &Principal) -> CoreResult<Vec<AuthSession>>;
    async fn revoke_my_session(&self, principal: &Principal, id: TokenFamilyId) -> CoreResult<()>;
    /// Returns the stored key and the secret (shown once).
    async fn create_api_key(
        &self,
        grant: &Grant<ApiKeysManage>,
        req: NewApiKey,
    ) -> CoreResult<(ApiKey, String)>;
    async fn list_api_keys(&self, grant: &Grant<ApiKeysManage>) -> CoreResult<Vec<ApiKey>>;
    async fn revoke_api_key(&self, grant: &Grant<ApiKeysManage>, id: ApiKeyId) -> CoreResult<()>;
}

/// An administrator creating an account.
#[derive(Debug, Clone)]
pub struct AdminNewUser {
    /// Platform admins may name another tenant; others create in their own.
    pub tenant_id: Option<TenantId>,
    pub username: String,
    pub email: Option<String>,
    /// Generated (and returned once) when absent; the user must change it at first login.
    pub password: Option<String>,
    pub role: String,
}

/// Changes an administrator may make to an account.
#[derive(Debug, Clone, Default)]
pub struct AdminUserPatch {
    pub role: Option<String>,
    pub is_active: Option<bool>,
    pub email: Option<Option<String>>,
    pub unlock: bool,
}

/// Administration of users, sessions, tenants and roles.
#[async_trait]
pub trait AdminService: Send + Sync + 'static {
    async fn list_users(
        &self,
        grant: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        query: UserQuery,
    ) -> CoreResult<(Vec<User>, u64)>;
    async fn get_user(
        &self,
        grant: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<User>;
    /// Returns the user and the generated password, if one was generated.
    async fn create_user(
        &self,
        grant: &Grant<UsersManage>,
        req: AdminNewUser,
    ) -> CoreResult<(User, Option<String>)>;
    async fn update_user(
        &self,
        grant: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
        patch: AdminUserPatch,
    ) -> CoreResult<User>;
    /// Sets a generated temporary password that must be changed at the next login.
    async fn reset_password(
        &self,
        grant: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<String>;
    async fn delete_user(
        &self,
        grant: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<()>;
    async fn user_sessions(
        &self,
        grant: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<Vec<AuthSession>>;
    async fn revoke_user_session(
        &self,
        grant: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
        session: TokenFamilyId,
    ) -> CoreResult<()>;
    async fn revoke_user_sessions(
        &self,
        grant: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        id: UserId,
    ) -> CoreResult<()>;
    /// An invitation code (shown once) for invite-only registration, and its expiry (ms).
    async fn create_invite(
        &self,
        grant: &Grant<UsersManage>,
        tenant: Option<TenantId>,
        role: &str,
        expires_in_days: u32,
    ) -> CoreResult<(String, i64)>;
    async fn list_tenants(&self, grant: &Grant<TenantsManage>) -> CoreResult<Vec<Tenant>>;
    async fn create_tenant(&self, grant: &Grant<TenantsManage>, name: &str) -> CoreResult<Tenant>;
    async fn set_tenant_active(
        &self,
        grant: &Grant<TenantsManage>,
        id: TenantId,
        active: bool,
    ) -> CoreResult<Tenant>;
    async fn list_roles(&self, grant: &Grant<RolesRead>) -> CoreResult<Vec<RoleDef>>;
    /// A search of the security event stream: a tenant's auditors see their tenant only
    /// (`query.tenant` is replaced by theirs); platform admins see every tenant or the one
    /// they name.
    async fn security_events(
        &self,
        grant: &Grant<crate::access::AuditRead>,
        query: crate::identity::EventQuery,
    ) -> CoreResult<Vec<SecurityEvent>>;
}
