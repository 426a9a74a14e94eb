//! Domain entities: tenants, users, principals, chat sessions and messages.

use crate::access::{PermissionSet, RoleName};
use crate::ids::{ApiKeyId, MessageId, SessionId, TenantId, TokenFamilyId, UserId};
use crate::provider::Role;

/// Milliseconds since the Unix epoch (UTC); the storage-neutral timestamp.
pub type Millis = i64;

/// Current time in epoch milliseconds.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// Epoch milliseconds as an RFC 3339 string for the wire.
pub fn millis_to_rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `YYYY-MM-DD` (UTC midnight) or an RFC 3339 instant, as epoch milliseconds.
pub fn parse_instant(s: &str) -> Option<Millis> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A stored user account.
#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub username: String,
    pub email: Option<String>,
    /// PHC string (Argon2id); never leaves the auth layer.
    pub password_hash: String,
    pub role: RoleName,
    pub is_active: bool,
    /// Access tokens issued before this instant (seconds) are refused.
    pub tokens_valid_after: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// The next login must set a new password (admin reset, generated bootstrap password).
    pub must_change_password: bool,
    /// Consecutive failed logins.
    pub failed_logins: u32,
    /// Logins are refused until this instant (back-off).
    pub locked_until: Millis,
    /// Locked until an administrator unlocks the account.
    pub hard_locked: bool,
    /// `local`, `ldap` or `oidc`.
    pub auth_source: String,
    /// Base32 TOTP secret (set during enrolment, active once `totp_enabled`).
    pub totp_secret: Option<String>,
    pub totp_enabled: bool,
    /// The last accepted TOTP time step (replay protection).
    pub totp_last_step: i64,
    pub last_login_at: Option<Millis>,
}

/// Fields needed to create a user.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub tenant_id: TenantId,
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub role: RoleName,
    pub must_change_password: bool,
    pub auth_source: String,
}

/// The authenticated caller of a request, put in the request by the auth middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub tenant_id: TenantId,
    pub username: String,
    pub role: RoleName,
    /// What this request may do: the role's permissions narrowed by the credential's scopes.
    pub permissions: PermissionSet,
    pub credential: Credential,
    /// The access token's `jti` (or the API key's id), for revocation on logout.
    pub token_id: String,
    /// Only password change is allowed until the password is changed.
    pub must_change_password: bool,
    /// The role requires 2FA and the user has not enrolled: only enrolment is allowed.
    pub needs_2fa_enrolment: bool,
    /// Where the request came from (address, user agent, request id), for the audit trail.
    pub client: crate::auth_api::ClientInfo,
}

impl Principal {
    pub fn can(&self, permission: &str) -> bool {
        self.permissions.allows(permission)
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        self.permissions.allows_model(model)
    }

    /// True when the caller manages tenants (the platform administrator).
    pub fn is_platform_admin(&self) -> bool {
        self.can(crate::access::TENANTS_MANAGE)
    }
}

/// The `issuer` of a [`Credential::External`] from a TLS client certificate.
pub const CLIENT_CERTIFICATE: &str = "tls-client-certificate";

/// How the caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A Palisade access token from a login; `session` is its refresh-token family.
    Session { session: Option<TokenFamilyId> },
    /// A `pk_` API key; `store_conversations` is its `/v1` storage policy.
    ApiKey {
        key_id: ApiKeyId,
        store_conversations: bool,
    },
    /// An identity vouched for outside Palisade: a bearer JWT of the configured OpenID
    /// provider (`issuer` is its issuer), or a verified TLS client certificate mapped to a
    /// service account (`issuer` is [`CLIENT_CERTIFICATE`]).
    External { issuer: String },
}

/// A conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSession {
    pub id: SessionId,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub title: String,
    /// The conversation's own system prompt, sent after the server's (needs
    /// `chat:system_prompt` to set).
    pub system_prompt: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A conversation with its list-view facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOverview {
    pub session: ChatSession,
    pub message_count: u64,
    pub last_message_preview: Option<String>,
}

/// Model facts stored with an assistant message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerationMeta {
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub latency_ms: u64,
    /// `stop`, `length`, `cancelled` or `error`.
    pub finish_reason: String,
    pub partial: bool,
    pub truncated_turns: u32,
    /// The model the request named, when a fallback answered.
    pub fallback_from: Option<String>,
    /// Replayed from the response cache.
    pub cached: bool,
    /// What the guard found in the request and the answer (no matched text).
    pub guard: Vec<crate::guard::FindingSummary>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub session_id: SessionId,
    pub role: Role,
    pub content: String,
    /// Present on assistant messages.
    pub meta: Option<GenerationMeta>,
    pub created_at: Millis,
}

/// Sort orders of the session list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionSort {
    CreatedDesc,
    CreatedAsc,
    UpdatedDesc,
}

impl SessionSort {
    pub fn parse(s: &str) -> Option<SessionSort> {
        match s {
            "created_at_desc" => Some(SessionSort::CreatedDesc),
            "created_at_asc" => Some(SessionSort::CreatedAsc),
            "updated_at_desc" => Some(SessionSort::UpdatedDesc),
            _ => None,
        }
    }
}
