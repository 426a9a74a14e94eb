//! Wire types of the identity API: second factor, password and e-mail changes, sessions, API
//! keys, scoped tokens and administration. Request bodies refuse unknown fields, so a client
//! cannot slip in `role`, `tenant_id` or `owner` (mass assignment).

use serde::{Deserialize, Serialize};

/// Answer of a password login when the account has 2FA: finish at `POST /api/auth/login/2fa`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MfaChallengeResponse {
    pub mfa_required: bool,
    pub mfa_token: String,
    pub expires_in: u64,
}

/// `POST /api/auth/login/2fa`: a 6-digit TOTP code or a recovery code.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaLoginRequest {
    pub mfa_token: String,
    pub code: String,
}

/// `POST /api/auth/password`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
    /// Required when 2FA is on.
    #[serde(default)]
    pub totp_code: Option<String>,
}

/// `PATCH /api/auth/me`: only the e-mail, and only with the current password.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    pub current_password: String,
    pub email: Option<String>,
}

/// `POST /api/auth/2fa/setup`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpSetupRequest {
    pub current_password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TotpSetupResponse {
    /// Base32 secret for manual entry.
    pub secret: String,
    /// `otpauth://totp/...` for a QR code.
    pub otpauth_uri: String,
}

/// `POST /api/auth/2fa/enable`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpEnableRequest {
    pub code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecoveryCodesResponse {
    /// Shown once; each works once instead of a TOTP code.
    pub recovery_codes: Vec<String>,
}

/// `POST /api/auth/2fa/disable`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TotpDisableRequest {
    pub current_password: String,
    pub code: String,
}

/// A login session (one device).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuthSessionResponse {
    pub id: String,
    pub created_at: String,
    pub last_used_at: String,
    pub expires_at: String,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// True for the session of the token making this request.
    #[serde(default)]
    pub current: bool,
}

/// `POST /api/auth/api-keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    pub name: String,
    /// Permissions (default `chat:send` and `model:*:use`); never more than the owner's role.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Models the key may use; all the owner may use when absent.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub expires_in_days: Option<u32>,
    /// Keep conversations made through `/v1` with this key in the owner's history
    /// (default: not stored, like a stateless API).
    #[serde(default)]
    pub store_conversations: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ApiKeyResponse {
    pub id: String,
    pub name: String,
    /// The key's first characters, for recognising it.
    pub prefix: String,
    pub scopes: Vec<String>,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub created_at: String,
    pub revoked: bool,
    #[serde(default)]
    pub store_conversations: bool,
}

/// The answer of key creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedApiKeyResponse {
    #[serde(flatten)]
    pub key: ApiKeyResponse,
    pub api_key: String,
}

/// `POST /api/auth/scoped-token` (spec 004).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopedTokenRequest {
    pub model: String,
    pub max_tokens: i64,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScopedTokenResponse {
    pub token: String,
    /// The same token under spec 004's name.
    pub llm_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub model: String,
    pub max_tokens: u32,
}

/// `POST /api/v1/llm/generate` with `X-LLM-Token` (spec 004).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub prompt: String,
    pub model: String,
    #[serde(default)]
    pub max_tokens: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GenerateResponse {
    pub content: String,
    pub model: String,
    pub tokens_used: u32,
    pub latency_ms: u64,
}

/// Spec 000's `POST /chat`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompatChatRequest {
    pub prompt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompatChatResponse {
    pub response: String,
    pub model: String,
    pub session_id: String,
    pub tokens_used: u32,
}

/// `POST /api/admin/users`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminCreateUserRequest {
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    /// Generated and returned once when absent.
    #[serde(default)]
    pub password: Option<String>,
    pub role: String,
    /// Platform administrators only.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminCreatedUserResponse {
    pub user: crate::UserResponse,
    /// The generated one-time password, when none was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporary_password: Option<String>,
}

/// `PATCH /api/admin/users/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUpdateUserRequest {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub is_active: Option<bool>,
    /// `null` clears it; absent leaves it.
    #[serde(default, with = "double_option")]
    pub email: Option<Option<String>>,
    /// Clears the failed-login lock.
    #[serde(default)]
    pub unlock: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserList {
    pub users: Vec<crate::UserResponse>,
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemporaryPasswordResponse {
    pub temporary_password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TenantResponse {
    pub id: String,
    pub name: String,
    pub is_active: bool,
    pub created_at: String,
}

/// `POST /api/admin/tenants`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    pub name: String,
}

/// `PATCH /api/admin/tenants/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenantRequest {
    pub is_active: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoleResponse {
    pub name: String,
    pub permissions: Vec<String>,
    pub require_2fa: bool,
    pub builtin: bool,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecurityEventResponse {
    pub kind: String,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub actor_id: Option<String>,
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub detail: serde_json::Value,
    pub created_at: String,
    /// Its place in its tenant's audit chain and its HMAC (absent for events written before
    /// the trail was chained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Its position in the whole trail: pass the last one as `before` (newest-first pages) or
    /// `after` (oldest-first, for followers) to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
}

mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// `POST /api/admin/invites`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInviteRequest {
    #[serde(default = "default_invite_role")]
    pub role: String,
    #[serde(default)]
    pub expires_in_days: Option<u32>,
    #[serde(default)]
    pub tenant_id: Option<String>,
}

fn default_invite_role() -> String {
    "user".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InviteResponse {
    /// Shown once; give it to the person who will register.
    pub code: String,
    pub role: String,
    pub expires_at: String,
}
