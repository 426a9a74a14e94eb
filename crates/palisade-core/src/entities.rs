//! Domain entities: tenants, users, principals, chat sessions and messages.

use serde::{Deserialize, Serialize};

use crate::ids::{MessageId, SessionId, TenantId, UserId};
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

/// A built-in role. Custom roles arrive with the identity issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    Admin,
    User,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Admin => "admin",
            UserRole::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<UserRole> {
        match s {
            "admin" => Some(UserRole::Admin),
            "user" => Some(UserRole::User),
            _ => None,
        }
    }
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
    pub role: UserRole,
    pub is_active: bool,
    /// Access tokens issued before this instant (seconds) are refused.
    pub tokens_valid_after: i64,
    pub created_at: Millis,
}

/// Fields needed to create a user.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub tenant_id: TenantId,
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub role: UserRole,
}

/// The authenticated caller of a request, put in the request by the auth middleware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub tenant_id: TenantId,
    pub username: String,
    pub role: UserRole,
    /// The access token's `jti`, for revocation on logout.
    pub token_id: String,
}

/// A conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSession {
    pub id: SessionId,
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub title: String,
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GenerationMeta {
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub latency_ms: u64,
    /// `stop`, `length`, `cancelled` or `error`.
    pub finish_reason: String,
    pub partial: bool,
    pub truncated_turns: u32,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
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
