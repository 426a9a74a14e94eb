//! Ports: the traits storage and identity adapters implement. Every repository call takes the
//! tenant scope explicitly; an adapter must never return another tenant's rows.

use async_trait::async_trait;

use crate::entities::{
    ChatSession, Millis, NewUser, SessionOverview, SessionSort, StoredMessage, User,
};
use crate::error::CoreResult;
use crate::identity::{
    ApiKey, AuthSession, Invite, LoginState, SecurityEvent, Tenant, UserQuery, UserUpdate,
};
use crate::ids::{ApiKeyId, MessageId, SessionId, TenantId, TokenFamilyId, UserId};

/// Users.
#[async_trait]
pub trait UserRepository: Send + Sync + 'static {
    async fn create_user(&self, user: NewUser) -> CoreResult<User>;
    async fn find_by_username(&self, tenant: TenantId, username: &str) -> CoreResult<Option<User>>;
    async fn find_by_id(&self, tenant: TenantId, id: UserId) -> CoreResult<Option<User>>;
    async fn count_users(&self) -> CoreResult<u64>;
    /// Users of one tenant (or of every tenant with `None`), newest first, and the total.
    async fn list_users(
        &self,
        tenant: Option<TenantId>,
        query: &UserQuery,
    ) -> CoreResult<(Vec<User>, u64)>;
    /// Applies the changes; the updated user, or `None` when no such user in this tenant.
    async fn update_user(
        &self,
        tenant: TenantId,
        id: UserId,
        update: &UserUpdate,
    ) -> CoreResult<Option<User>>;
    /// Deletes the user and everything they own; false when no such user.
    async fn delete_user(&self, tenant: TenantId, id: UserId) -> CoreResult<bool>;
    /// Ends every access token of the user issued before `at_secs`.
    async fn set_tokens_valid_after(
        &self,
        tenant: TenantId,
        id: UserId,
        at_secs: i64,
    ) -> CoreResult<()>;
    async fn set_login_state(
        &self,
        tenant: TenantId,
        id: UserId,
        state: LoginState,
    ) -> CoreResult<()>;
    /// Stores (or clears) the TOTP secret and whether it is active.
    async fn set_totp(
        &self,
        tenant: TenantId,
        id: UserId,
        secret: Option<&str>,
        enabled: bool,
    ) -> CoreResult<()>;
    /// Records `step` as used when it is newer than the last one; false means a replay.
    async fn claim_totp_step(&self, tenant: TenantId, id: UserId, step: i64) -> CoreResult<bool>;
    /// Replaces the user's recovery codes (hashes).
    async fn set_recovery_codes(
        &self,
        tenant: TenantId,
        id: UserId,
        hashes: &[String],
    ) -> CoreResult<()>;
    /// Marks an unused recovery code used; false when unknown or already used.
    async fn use_recovery_code(&self, tenant: TenantId, id: UserId, hash: &str)
        -> CoreResult<bool>;
}

/// Tenants.
#[async_trait]
pub trait TenantRepository: Send + Sync + 'static {
    async fn create_tenant(&self, name: &str) -> CoreResult<Tenant>;
    async fn get_tenant(&self, id: TenantId) -> CoreResult<Option<Tenant>>;
    async fn find_tenant_by_name(&self, name: &str) -> CoreResult<Option<Tenant>>;
    async fn list_tenants(&self) -> CoreResult<Vec<Tenant>>;
    async fn set_tenant_active(&self, id: TenantId, active: bool) -> CoreResult<bool>;
}

/// Invitations.
#[async_trait]
pub trait InviteRepository: Send + Sync + 'static {
    async fn create_invite(&self, invite: &Invite) -> CoreResult<()>;
    /// Marks an unused, unexpired invitation used and returns it; `None` otherwise.
    async fn consume_invite(&self, code_hash: &str, now: Millis) -> CoreResult<Option<Invite>>;
    /// Makes a consumed invitation usable again (the registration failed).
    async fn release_invite(&self, code_hash: &str) -> CoreResult<()>;
}

/// API keys.
#[async_trait]
pub trait ApiKeyRepository: Send + Sync + 'static {
    async fn insert_key(&self, key: &ApiKey) -> CoreResult<()>;
    /// The key with this prefix, whatever its tenant (the key names its tenant).
    async fn find_key_by_prefix(&self, prefix: &str) -> CoreResult<Option<ApiKey>>;
    /// The key with this id, whatever its tenant.
    async fn find_key_by_id(&self, id: ApiKeyId) -> CoreResult<Option<ApiKey>>;
    async fn list_keys(&self, tenant: TenantId, user: UserId) -> CoreResult<Vec<ApiKey>>;
    /// Revokes the user's key; false when the user has no such key.
    async fn revoke_key(&self, tenant: TenantId, user: UserId, id: ApiKeyId) -> CoreResult<bool>;
    async fn touch_key(&self, id: ApiKeyId, now: Millis) -> CoreResult<()>;
}

/// Links between identities at an external provider and local users.
#[async_trait]
pub trait ExternalIdentityRepository: Send + Sync + 'static {
    async fn find_link(
        &self,
        provider: &str,
        subject: &str,
    ) -> CoreResult<Option<(TenantId, UserId)>>;
    async fn link(
        &self,
        provider: &str,
        subject: &str,
        tenant: TenantId,
        user: UserId,
    ) -> CoreResult<()>;
}

/// The security event stream (login, token and admin events); the audit trail reads it.
#[async_trait]
pub trait SecurityEventSink: Send + Sync + 'static {
    async fn record(&self, event: SecurityEvent) -> CoreResult<()>;
    /// The events matching `q`: newest first, or oldest first when `q.after` is set.
    async fn search_events(
        &self,
        q: &crate::identity::EventQuery,
    ) -> CoreResult<Vec<SecurityEvent>>;
    /// The newest events of a tenant (all tenants with `None`), newest first.
    async fn recent_events(
        &self,
        tenant: Option<TenantId>,
        limit: u32,
    ) -> CoreResult<Vec<SecurityEvent>> {
        self.search_events(&crate::identity::EventQuery::recent(tenant, limit))
            .await
    }
}

/// A stored refresh token (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenRecord {
    pub token_hash: String,
    pub family_id: TokenFamilyId,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub created_at: Millis,
    /// Sliding expiry of this token.
    pub expires_at: Millis,
    /// The family may not live past this instant, however often it is rotated.
    pub family_expires_at: Millis,
    /// Set when rotated or revoked; using it again is reuse.
    pub used_at: Option<Millis>,
    pub revoked: bool,
}

/// Outcome of consuming a refresh token atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeOutcome {
    /// The token was valid and is now marked used; the caller issues the successor.
    Consumed(RefreshTokenRecord),
    /// The token had already been used or revoked: possible theft; the family is now revoked.
    Reused {
        family_id: TokenFamilyId,
        user_id: UserId,
    },
    /// Unknown or expired.
    Invalid,
}

/// Refresh tokens with rotation and family revocation; a family is one login session.
#[async_trait]
pub trait RefreshTokenRepository: Send + Sync + 'static {
    /// Starts a login session (a new family).
    async fn create_auth_session(&self, session: &AuthSession) -> CoreResult<()>;
    /// The session if it exists, whatever its state.
    async fn get_auth_session(&self, id: TokenFamilyId) -> CoreResult<Option<AuthSession>>;
    /// Live (not revoked, not expired) sessions of a user, newest first.
    async fn list_auth_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        now: Millis,
    ) -> CoreResult<Vec<AuthSession>>;
    /// Revokes one session of the user; false when the user has no such session.
    async fn revoke_auth_session(
        &self,
        tenant: TenantId,
        user: UserId,
        id: TokenFamilyId,
    ) -> CoreResult<bool>;
    async fn insert(&self, rec: RefreshTokenRecord) -> CoreResult<()>;
    /// Marks the token used if it is live, in one transaction; detects reuse.
    async fn consume(&self, token_hash: &str, now: Millis) -> CoreResult<ConsumeOutcome>;
    /// Revokes one family (logout of one device).
    async fn revoke_family(&self, family: TokenFamilyId) -> CoreResult<()>;
    /// Revokes the family the token belongs to; false when the token is unknown.
    async fn revoke_family_of(&self, token_hash: &str) -> CoreResult<bool>;
    /// Revokes every family of a user (logout everywhere).
    async fn revoke_user(&self, tenant: TenantId, user: UserId) -> CoreResult<()>;
}

/// Conversations and messages.
#[async_trait]
pub trait ChatRepository: Send + Sync + 'static {
    async fn create_session(&self, session: &ChatSession) -> CoreResult<()>;
    /// The session if it exists and belongs to this user of this tenant.
    async fn get_session(
        &self,
        tenant: TenantId,
        user: UserId,
        id: SessionId,
    ) -> CoreResult<Option<ChatSession>>;
    async fn list_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        sort: SessionSort,
        limit: u32,
        offset: u32,
    ) -> CoreResult<(Vec<SessionOverview>, u64)>;
    /// Renames; false when no such session for this user.
    async fn rename_session(
        &self,
        tenant: TenantId,
        user: UserId,
        id: SessionId,
        title: &str,
        now: Millis,
    ) -> CoreResult<bool>;
    /// Sets (`Some`) or removes (`None`) the conversation's system prompt; false when no such
    /// session for this user.
    async fn set_session_system_prompt(
        &self,
        tenant: TenantId,
        user: UserId,
        id: SessionId,
        system_prompt: Option<&str>,
        now: Millis,
    ) -> CoreResult<bool>;
    /// Deletes the session and its messages; false when no such session for this user.
    async fn delete_session(
        &self,
        tenant: TenantId,
        user: UserId,
        id: SessionId,
    ) -> CoreResult<bool>;
    /// Appends a message and bumps the session's `updated_at`.
    async fn append_message(&self, msg: &StoredMessage) -> CoreResult<()>;
    /// Up to `limit` messages older than `before` (or the newest), returned oldest first,
    /// plus whether older ones exist.
    async fn list_messages(
        &self,
        tenant: TenantId,
        session: SessionId,
        before: Option<MessageId>,
        limit: u32,
    ) -> CoreResult<(Vec<StoredMessage>, bool)>;
    /// The guard's pseudonym vault of a session (placeholders and the values they stand for).
    async fn load_vault(
        &self,
        tenant: TenantId,
        session: SessionId,
    ) -> CoreResult<Option<crate::guard::Pseudonyms>>;
    /// Stores the vault; nothing happens when the session does not exist (any more).
    async fn save_vault(
        &self,
        tenant: TenantId,
        session: SessionId,
        vault: &crate::guard::Pseudonyms,
        now: Millis,
    ) -> CoreResult<()>;
}
