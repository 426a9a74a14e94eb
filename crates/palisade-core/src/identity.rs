//! Identity records beyond the user: tenants, login sessions (refresh-token families), API keys,
//! external identities and the security event stream that the audit trail is built from.

use serde::{Deserialize, Serialize};

use crate::access::RoleName;
use crate::entities::Millis;
use crate::ids::{ApiKeyId, TenantId, TokenFamilyId, UserId};

/// An organisation; every row belongs to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub is_active: bool,
    pub created_at: Millis,
}

/// One login session on one device: a refresh-token family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSession {
    pub id: TokenFamilyId,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub created_at: Millis,
    pub last_used_at: Millis,
    /// The family may not be refreshed past this instant (absolute lifetime).
    pub expires_at: Millis,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub revoked: bool,
}

/// A stored API key (the secret itself is never stored, only its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub name: String,
    /// The first characters of the key, shown in lists and used for lookup.
    pub prefix: String,
    pub key_hash: String,
    /// Permissions the key may use (never more than its owner's role).
    pub scopes: Vec<String>,
    /// Models the key may use; `None` means every model the owner may use.
    pub models: Option<Vec<String>>,
    pub expires_at: Option<Millis>,
    pub last_used_at: Option<Millis>,
    pub created_at: Millis,
    pub revoked: bool,
    /// Keep conversations made through `/v1` with this key in the owner's history.
    pub store_conversations: bool,
}

/// An invitation to register (invite-only registration). Only the code's hash is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    pub code_hash: String,
    pub tenant_id: TenantId,
    pub role: RoleName,
    pub created_by: Option<UserId>,
    pub created_at: Millis,
    pub expires_at: Millis,
}

/// Changes an administrator (or the user) makes to an account. `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    pub email: Option<Option<String>>,
    pub role: Option<RoleName>,
    pub is_active: Option<bool>,
    pub password_hash: Option<String>,
    pub must_change_password: Option<bool>,
    /// Clears the back-off and the hard lock.
    pub unlock: bool,
}

/// Login throttling state written after each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginState {
    pub failed_logins: u32,
    pub locked_until: Millis,
    pub hard_locked: bool,
    pub last_login_at: Option<Millis>,
}

/// Filters and page of the admin user list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserQuery {
    /// Case-insensitive substring of username or email.
    pub search: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// What happened, for the security event stream (the audit trail's source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityEventKind {
    LoginSuccess,
    LoginFailure,
    LoginLocked,
    TokenRefresh,
    RefreshReuse,
    Logout,
    LogoutAll,
    PasswordChange,
    TotpEnabled,
    TotpDisabled,
    TotpFailure,
    RecoveryCodeUsed,
    ApiKeyCreated,
    ApiKeyRevoked,
    ScopedTokenIssued,
    UserCreated,
    UserUpdated,
    UserDeleted,
    SessionRevoked,
    TenantCreated,
    TenantUpdated,
    PermissionDenied,
    SigningKeyRotated,
    /// A request to a model, written before the model sees it (prompt hash, model, route).
    LlmRequest,
    /// How a model request ended (outcome, tokens, latency, answer hash, guard findings).
    LlmResult,
    /// The content guard refused a prompt or a system prompt (categories and scores).
    GuardBlocked,
    /// A request refused by a rate limit or budget.
    RateLimited,
    /// The model registry changed (an entry added, changed or removed).
    ModelChanged,
    /// A tenant's guard policy changed.
    GuardPolicyChanged,
    /// A limit override changed.
    LimitPolicyChanged,
    /// An invitation was created.
    InviteCreated,
    /// A conversation's system prompt changed.
    SystemPromptChanged,
    /// The master key of encryption at rest was replaced.
    MasterKeyRotated,
    /// A tenant's data keys were destroyed (crypto-shredding).
    TenantKeyShredded,
    /// A tenant's retention or legal hold changed.
    RetentionChanged,
    /// A user was put under legal hold or released.
    LegalHoldChanged,
    /// Expired conversations were purged.
    RetentionPurge,
    /// A user exported their conversations.
    ConversationsExported,
    /// A background job failed its last attempt (dead letter), or was retried or discarded.
    JobDeadLettered,
    JobRetried,
    JobDiscarded,
}

impl SecurityEventKind {
    /// Every kind, in declaration order (the audit viewer's filter offers these).
    pub const ALL: &'static [SecurityEventKind] = &[
        Self::LoginSuccess,
        Self::LoginFailure,
        Self::LoginLocked,
        Self::TokenRefresh,
        Self::RefreshReuse,
        Self::Logout,
        Self::LogoutAll,
        Self::PasswordChange,
        Self::TotpEnabled,
        Self::TotpDisabled,
        Self::TotpFailure,
        Self::RecoveryCodeUsed,
        Self::ApiKeyCreated,
        Self::ApiKeyRevoked,
        Self::ScopedTokenIssued,
        Self::UserCreated,
        Self::UserUpdated,
        Self::UserDeleted,
        Self::SessionRevoked,
        Self::TenantCreated,
        Self::TenantUpdated,
        Self::PermissionDenied,
        Self::SigningKeyRotated,
        Self::LlmRequest,
        Self::LlmResult,
        Self::GuardBlocked,
        Self::RateLimited,
        Self::ModelChanged,
        Self::GuardPolicyChanged,
        Self::LimitPolicyChanged,
        Self::InviteCreated,
        Self::SystemPromptChanged,
        Self::MasterKeyRotated,
        Self::TenantKeyShredded,
        Self::RetentionChanged,
        Self::LegalHoldChanged,
        Self::RetentionPurge,
        Self::ConversationsExported,
        Self::JobDeadLettered,
        Self::JobRetried,
        Self::JobDiscarded,
    ];

    /// The kind named by its wire name (`login_failure`, ...).
    pub fn parse(name: &str) -> Option<SecurityEventKind> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LoginSuccess => "login_success",
            Self::LoginFailure => "login_failure",
            Self::LoginLocked => "login_locked",
            Self::TokenRefresh => "token_refresh",
            Self::RefreshReuse => "refresh_reuse",
            Self::Logout => "logout",
            Self::LogoutAll => "logout_all",
            Self::PasswordChange => "password_change",
            Self::TotpEnabled => "totp_enabled",
            Self::TotpDisabled => "totp_disabled",
            Self::TotpFailure => "totp_failure",
            Self::RecoveryCodeUsed => "recovery_code_used",
            Self::ApiKeyCreated => "api_key_created",
            Self::ApiKeyRevoked => "api_key_revoked",
            Self::ScopedTokenIssued => "scoped_token_issued",
            Self::UserCreated => "user_created",
            Self::UserUpdated => "user_updated",
            Self::UserDeleted => "user_deleted",
            Self::SessionRevoked => "session_revoked",
            Self::TenantCreated => "tenant_created",
            Self::TenantUpdated => "tenant_updated",
            Self::PermissionDenied => "permission_denied",
            Self::SigningKeyRotated => "signing_key_rotated",
            Self::LlmRequest => "llm_request",
            Self::LlmResult => "llm_result",
            Self::GuardBlocked => "guard_blocked",
            Self::RateLimited => "rate_limited",
            Self::ModelChanged => "model_changed",
            Self::GuardPolicyChanged => "guard_policy_changed",
            Self::LimitPolicyChanged => "limit_policy_changed",
            Self::InviteCreated => "invite_created",
            Self::SystemPromptChanged => "system_prompt_changed",
            Self::MasterKeyRotated => "master_key_rotated",
            Self::TenantKeyShredded => "tenant_key_shredded",
            Self::RetentionChanged => "retention_changed",
            Self::LegalHoldChanged => "legal_hold_changed",
            Self::RetentionPurge => "retention_purge",
            Self::ConversationsExported => "conversations_exported",
            Self::JobDeadLettered => "job_dead_lettered",
            Self::JobRetried => "job_retried",
            Self::JobDiscarded => "job_discarded",
        }
    }
}

/// One security-relevant act. Never holds a secret or message content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityEvent {
    pub kind: SecurityEventKind,
    pub tenant_id: Option<TenantId>,
    /// The account acted on (or attempted).
    pub user_id: Option<UserId>,
    /// Who acted, when not the user themself (an administrator).
    pub actor_id: Option<UserId>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The `X-Request-Id` of the request that caused it.
    pub request_id: Option<String>,
    /// Structured facts (changed fields, reasons); no secrets.
    pub detail: serde_json::Value,
    pub created_at: Millis,
    /// Its place in its tenant's audit chain and its hash (set when read back).
    pub chain_seq: Option<i64>,
    pub hash: Option<String>,
    /// Its position in the whole trail (set when read back): the paging cursor of searches.
    pub seq: Option<i64>,
}

/// A search of the audit trail: every filter given must hold; newest first, or oldest first
/// when `after` is given (a follower pages forward without missing events).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this tenant's events (`None`: every tenant; only platform admins may ask that).
    pub tenant: Option<TenantId>,
    /// Any of these kinds (empty: every kind).
    pub kinds: Vec<SecurityEventKind>,
    /// Events about this user or done by them (`user_id` or `actor_id`).
    pub user: Option<UserId>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    /// `created_at >= since` and `created_at < until` (Unix ms).
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// Only events with `seq < before` (the next page of a newest-first search).
    pub before: Option<i64>,
    /// Only events with `seq > after`; the answer is then oldest first.
    pub after: Option<i64>,
    /// At most this many events (1..=1000).
    pub limit: u32,
}

impl EventQuery {
    /// The newest `limit` events of `tenant` (all tenants with `None`).
    pub fn recent(tenant: Option<TenantId>, limit: u32) -> EventQuery {
        EventQuery {
            tenant,
            limit,
            ..EventQuery::default()
        }
    }

    /// Whether the answer is oldest first.
    pub fn ascending(&self) -> bool {
        self.after.is_some()
    }
}

impl SecurityEvent {
    pub fn new(kind: SecurityEventKind) -> SecurityEvent {
        SecurityEvent {
            kind,
            tenant_id: None,
            user_id: None,
            actor_id: None,
            ip: None,
            user_agent: None,
            request_id: None,
            detail: serde_json::Value::Null,
            created_at: crate::entities::now_millis(),
            chain_seq: None,
            hash: None,
            seq: None,
        }
    }

    pub fn user(mut self, tenant: TenantId, user: UserId) -> Self {
        self.tenant_id = Some(tenant);
        self.user_id = Some(user);
        self
    }

    pub fn actor(mut self, actor: UserId) -> Self {
        self.actor_id = Some(actor);
        self
    }

    pub fn ip(mut self, ip: Option<String>) -> Self {
        self.ip = ip;
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The client it came from: address, user agent and request id.
    pub fn client(mut self, c: &crate::auth_api::ClientInfo) -> Self {
        self.ip = c.ip.clone();
        self.user_agent = c.user_agent.clone();
        self.request_id = c.request_id.clone();
        self
    }

    /// Tenant and user of a caller (the actor is the caller too).
    pub fn caller(mut self, who: &crate::entities::Principal) -> Self {
        self.tenant_id = Some(who.tenant_id);
        self.user_id = Some(who.user_id);
        self.client(&who.client)
    }

    /// The request it came from: its id and the client's user agent.
    pub fn request(mut self, request_id: Option<String>, user_agent: Option<String>) -> Self {
        self.request_id = request_id;
        self.user_agent = user_agent;
        self
    }
}
