//! Wire types of Palisade's REST API: request and response bodies, shared by the server, the
//! client and the tests. Plain serde structs; no runtime dependencies.

use serde::{Deserialize, Serialize};

/// The one error shape every endpoint answers with: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_credentials`, `not_found`.
    pub code: String,
    /// Human-readable explanation; never contains internals.
    pub message: String,
    /// OpenAI's error class (`invalid_request_error`, `authentication_error`, ...), so that
    /// OpenAI clients understand every error Palisade answers with.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The request field at fault, when there is one (OpenAI's `param`).
    #[serde(default)]
    pub param: Option<String>,
    /// For `guard_blocked`: the finding categories that caused the refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
}

pub mod guard;
pub mod identity;
pub mod models;
pub mod openai;

/// `POST /api/auth/register`. Unknown fields (e.g. `role`, `tenant_id`) are refused.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    pub password: String,
    /// The invitation code, when registration is by invitation.
    #[serde(default)]
    pub invite: Option<String>,
}

/// `POST /api/auth/login` (also spec 000's `POST /login` and spec 004's `POST /auth/login`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// The tenant's name; the default tenant when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// `POST /api/auth/refresh` and `POST /api/auth/logout` (the token may instead come as
/// `Authorization: Bearer <refresh_token>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefreshRequest {
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// Answer of login and refresh.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Absent in the browser flow, where it travels in an HttpOnly cookie instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// A user as the API shows it (`GET /api/auth/me`, register).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct UserResponse {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub role: String,
    pub tenant_id: String,
    pub is_active: bool,
    pub created_at: String,
    /// True until the user sets a new password (admin reset, first login).
    #[serde(default)]
    pub must_change_password: bool,
    #[serde(default)]
    pub totp_enabled: bool,
    /// `local`, `ldap` or `oidc`.
    #[serde(default)]
    pub auth_source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_login_at: Option<String>,
    /// Shown to administrators: the account is locked after failed logins.
    #[serde(default)]
    pub locked: bool,
}

/// `POST /api/chat/message`. Numbers are taken wide so that out-of-range values get a clear
/// validation error instead of a parse failure.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatMessageRequest {
    pub message: String,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub stop: Option<Vec<String>>,
    /// The system prompt of a new conversation (needs `chat:system_prompt`); an existing
    /// conversation's is changed with `PATCH /api/chat/sessions/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

/// Facts recorded with an assistant message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MessageMetadata {
    pub model: String,
    pub tokens_used: u32,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub response_time_ms: u64,
    /// `stop`, `length`, `cancelled` (client went away) or `error`.
    pub finish_reason: String,
    /// True when the answer was cut short (client disconnected or the model failed).
    pub partial: bool,
    /// Oldest turns left out of the prompt to fit the context window.
    #[serde(default)]
    pub truncated_turns: u32,
    /// The model the request asked for, when a fallback model answered instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_from: Option<String>,
    /// True when the answer came from the response cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// What the content guard found in the request and the answer, and what it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guard: Vec<GuardFinding>,
}

/// One finding of the content guard (never the matched text).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct GuardFinding {
    /// `injection`, `pii`, `secret`, `toxicity`, `leak`, `unsafe_markup`.
    pub category: String,
    /// The detector, e.g. `email`, `instruction_override`.
    pub kind: String,
    pub score: f32,
    /// `log`, `redact`, `pseudonymise` or `block`.
    pub action: String,
    /// `input` or `output`.
    pub stage: String,
}

/// A stored message as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MessageResponse {
    pub id: String,
    pub session_id: String,
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub metadata: Option<MessageMetadata>,
    pub created_at: String,
}

/// One event of the `stream: true` answer, sent as `data: <json>` Server-Sent Events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatStreamEvent {
    Start {
        session_id: String,
        user_message_id: String,
    },
    Token {
        content: String,
    },
    End {
        message_id: String,
        metadata: MessageMetadata,
    },
    Error {
        code: String,
        message: String,
        /// For `guard_blocked`: the finding categories that cut the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        categories: Option<Vec<String>>,
    },
}

/// One row of `GET /api/chat/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SessionSummary {
    pub id: String,
    pub title: String,
    pub message_count: u64,
    pub created_at: String,
    pub updated_at: String,
    pub last_message_preview: Option<String>,
    /// The conversation's own system prompt, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionSummary>,
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}

/// `GET /api/chat/sessions/{id}/messages`: oldest first, `has_more` when older ones exist.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MessagePage {
    pub session_id: String,
    pub messages: Vec<MessageResponse>,
    pub has_more: bool,
}

/// `PATCH /api/chat/sessions/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateSessionRequest {
    #[serde(default)]
    pub title: Option<String>,
    /// The conversation's system prompt (needs `chat:system_prompt`); `""` removes it.
    #[serde(default)]
    pub system_prompt: Option<String>,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct HealthResponse {
    pub status: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<HealthCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    /// Why an answering dependency is degraded (`/readyz` then says `"degraded"`), e.g. the
    /// database is a stand-in kept in memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
