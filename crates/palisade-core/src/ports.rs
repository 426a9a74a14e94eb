//! Ports: the traits storage and identity adapters implement. Every repository call takes the
//! tenant scope explicitly; an adapter must never return another tenant's rows.

use async_trait::async_trait;

use crate::entities::{
    ChatSession, Millis, NewUser, Principal, SessionOverview, SessionSort, StoredMessage, User,
};
use crate::error::CoreResult;
use crate::ids::{MessageId, SessionId, TenantId, TokenFamilyId, UserId};

/// Users and tenants.
#[async_trait]
pub trait UserRepository: Send + Sync + 'static {
    async fn create_user(&self, user: NewUser) -> CoreResult<User>;
    async fn find_by_username(&self, tenant: TenantId, username: &str) -> CoreResult<Option<User>>;
    async fn find_by_id(&self, tenant: TenantId, id: UserId) -> CoreResult<Option<User>>;
    async fn count_users(&self) -> CoreResult<u64>;
    /// Ends every access token of the user issued before `at_secs`.
    async fn set_tokens_valid_after(
        &self,
        tenant: TenantId,
        id: UserId,
        at_secs: i64,
    ) -> CoreResult<()>;
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

/// Refresh tokens with rotation and family revocation.
#[async_trait]
pub trait RefreshTokenRepository: Send + Sync + 'static {
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
}

/// Issued credentials of a login or refresh.
#[derive(Debug, Clone)]
pub struct IssuedTokens {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: String,
}

/// Registration input after the HTTP layer parsed it.
#[derive(Debug, Clone)]
pub struct Registration {
    pub username: String,
    pub email: Option<String>,
    pub password: String,
}

/// The identity service: everything the HTTP layer needs to authenticate callers.
#[async_trait]
pub trait IdentityService: Send + Sync + 'static {
    async fn register(&self, reg: Registration) -> CoreResult<User>;
    async fn login(&self, username: &str, password: &str) -> CoreResult<IssuedTokens>;
    async fn refresh(&self, refresh_token: &str) -> CoreResult<IssuedTokens>;
    /// Revokes the refresh token's family; with a principal also the current access token.
    async fn logout(
        &self,
        refresh_token: Option<&str>,
        principal: Option<&Principal>,
    ) -> CoreResult<()>;
    /// Verifies an access token and loads the principal (checks the user is still active).
    async fn authenticate(&self, access_token: &str) -> CoreResult<Principal>;
    async fn current_user(&self, principal: &Principal) -> CoreResult<User>;
}
