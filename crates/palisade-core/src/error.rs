//! The domain error: every failure the pipeline can report, each with a stable code and a
//! user-facing message kept apart from the detail that only goes to the logs.

use crate::provider::ProviderError;

/// Errors of the domain layer. The HTTP layer maps each variant to one status code.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Bad input: a stable code (e.g. `message_too_long`) and a message for the user.
    #[error("{message}")]
    Validation { code: &'static str, message: String },
    /// Missing, expired or invalid credentials.
    #[error("authentication required")]
    Unauthenticated { code: &'static str },
    /// Authenticated but not allowed.
    #[error("not allowed")]
    Forbidden,
    /// Not allowed for a stated reason the caller can act on (e.g. `password_change_required`).
    #[error("{message}")]
    Denied { code: &'static str, message: String },
    /// Too many attempts or requests; try again after `retry_after_secs`.
    #[error("{message}")]
    TooManyRequests {
        code: &'static str,
        message: String,
        retry_after_secs: u32,
    },
    /// The resource does not exist for this caller (also used for other users' resources).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Unique constraint (e.g. username taken).
    #[error("{0}")]
    Conflict(String),
    /// The feature is turned off by configuration (e.g. registration closed).
    #[error("{0}")]
    Disabled(String),
    /// The guard refused the request: the finding categories that caused it.
    #[error("the request was blocked by the content guard ({})", categories.join(", "))]
    GuardBlocked { categories: Vec<String> },
    /// A provider refused or failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The data was encrypted with a key that has been destroyed (crypto-shredding).
    #[error("this data was destroyed")]
    DataDestroyed,
    /// The audit trail could not record a request, which was therefore refused (fail-closed);
    /// detail is logged, never shown.
    #[error("the audit trail is unavailable")]
    AuditUnavailable(String),
    /// The state replicas share (Redis) cannot be reached, so a check that must not be skipped
    /// (a revoked token, a single-use ticket) cannot be made; detail is logged, never shown.
    #[error("shared state unavailable")]
    SharedUnavailable(String),
    /// The database cannot be reached right now (connection lost or refused, pool exhausted,
    /// server shutting down): a transient outage the client may retry; detail is logged, never
    /// shown.
    #[error("storage unavailable")]
    StorageUnavailable(String),
    /// Storage failure; detail is logged, never shown.
    #[error("storage error")]
    Storage(String),
    /// Anything else unexpected; detail is logged, never shown.
    #[error("internal error")]
    Internal(String),
}

impl CoreError {
    pub fn validation(code: &'static str, message: impl Into<String>) -> Self {
        CoreError::Validation {
            code,
            message: message.into(),
        }
    }

    pub fn unauthenticated() -> Self {
        CoreError::Unauthenticated {
            code: "unauthenticated",
        }
    }

    pub fn invalid_credentials() -> Self {
        CoreError::Unauthenticated {
            code: "invalid_credentials",
        }
    }

    pub fn denied(code: &'static str, message: impl Into<String>) -> Self {
        CoreError::Denied {
            code,
            message: message.into(),
        }
    }

    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after_secs: u32) -> Self {
        CoreError::TooManyRequests {
            code,
            message: message.into(),
            retry_after_secs: retry_after_secs.max(1),
        }
    }

    pub fn invalid_token() -> Self {
        CoreError::Unauthenticated {
            code: "invalid_token",
        }
    }
}

pub type CoreResult<T> = Result<T, CoreError>;
