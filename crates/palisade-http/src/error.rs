//! `ApiError`: the one mapping from domain errors to HTTP responses, and JSON/query/path
//! extractors whose rejections use the same `{"error":{"code","message"}}` shape.
//!
//! The user sees a stable code and a safe message; details of internal failures go to the log
//! with the request id, never to the client.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use palisade_core::provider::ProviderError;
use palisade_core::CoreError;
use palisade_types::{ErrorBody, ErrorDetail};
use serde::de::DeserializeOwned;

/// The code of an error response, kept in its extensions for the audit middleware.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// An error answer: status, stable code, user-facing message, optional Retry-After.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u32>,
    /// For `guard_blocked`: the finding categories that caused it.
    pub categories: Option<Vec<String>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            categories: None,
        }
    }

    /// 422 `guard_blocked` with the categories and a plain-words reason.
    pub fn guard_blocked(categories: Vec<String>) -> Self {
        let reasons: Vec<&str> = categories.iter().map(|c| guard_reason(c)).collect();
        Self {
            categories: Some(categories),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "guard_blocked",
                format!("blocked by the content guard: {}", reasons.join("; ")),
            )
        }
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    /// OpenAI's error class for this status, so OpenAI clients classify every error.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message.clone(),
                kind: Some(self.kind().into()),
                param: None,
                categories: self.categories.clone(),
            },
        }
    }
}

/// What a guard category means, in words a user understands.
pub fn guard_reason(category: &str) -> &'static str {
    match category {
        "injection" => "the message looks like an attempt to override the assistant's instructions",
        "secret" => "the message contains a credential or secret (an API key, token, password or private key)",
        "pii" => "the message contains personal data that may not be sent to this model",
        "toxicity" => "the message contains abusive, threatening or harmful language",
        "leak" => "the answer started to reveal the assistant's confidential instructions",
        "unsafe_markup" => "the answer contained unsafe links or images",
        _ => "the content guard's policy does not allow it",
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let msg = e.to_string();
        match e {
            ProviderError::Overloaded { retry_after_secs } => ApiError {
                retry_after: Some(retry_after_secs.max(1)),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", msg)
            },
            ProviderError::ContextOverflow { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "context_overflow", msg)
            }
            ProviderError::UnknownModel => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_model", msg)
            }
            ProviderError::InvalidRequest(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", msg)
            }
            ProviderError::Unavailable(detail) => {
                tracing::warn!(%detail, "model unavailable");
                ApiError {
                    retry_after: Some(5),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "model_unavailable", msg)
                }
            }
            ProviderError::Timeout(detail) => {
                tracing::warn!(%detail, "model timeout");
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "model_timeout", msg)
            }
            ProviderError::Internal(detail) => {
                tracing::error!(%detail, "model failure");
                ApiError::new(StatusCode::BAD_GATEWAY, "model_error", msg)
            }
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Validation { code, message } => {
                let status = if code == "invalid_id" {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                ApiError::new(status, code, message)
            }
            CoreError::Unauthenticated { code } => {
                let msg = match code {
                    "invalid_credentials" => "wrong username or password",
                    "invalid_token" => "the token is invalid or expired",
                    "mfa_failed" => "the second-factor code is wrong or was already used",
                    _ => "authentication required",
                };
                ApiError::new(StatusCode::UNAUTHORIZED, code, msg)
            }
            CoreError::Forbidden => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", "you may not do this")
            }
            CoreError::Denied { code, message } => {
                ApiError::new(StatusCode::FORBIDDEN, code, message)
            }
            CoreError::TooManyRequests {
                code,
                message,
                retry_after_secs,
            } => ApiError {
                retry_after: Some(retry_after_secs),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
            },
            CoreError::NotFound(what) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} not found"),
            ),
            CoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            CoreError::Disabled(m) => ApiError::new(StatusCode::FORBIDDEN, "disabled", m),
            CoreError::Provider(p) => p.into(),
            CoreError::GuardBlocked { categories } => ApiError::guard_blocked(categories),
            CoreError::DataDestroyed => ApiError::new(
                StatusCode::GONE,
                "data_destroyed",
                "this data can no longer be read: its encryption key was destroyed",
            ),
            CoreError::AuditUnavailable(detail) => {
                tracing::error!(%detail, "audit trail unavailable: request refused");
                ApiError {
                    retry_after: Some(5),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "audit_unavailable",
                        "the audit trail cannot record requests right now, so none are sent \
                         to a model; try again later or ask an administrator",
                    )
                }
            }
            CoreError::SharedUnavailable(detail) => {
                tracing::error!(%detail, "shared state unavailable: request refused");
                ApiError {
                    retry_after: Some(2),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "shared_state_unavailable",
                        "the state replicas share cannot be reached right now; try again shortly",
                    )
                }
            }
            CoreError::StorageUnavailable(detail) => {
                tracing::error!(%detail, "database unavailable: request refused");
                ApiError {
                    retry_after: Some(2),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "storage_unavailable",
                        "the database cannot be reached right now; try again shortly",
                    )
                }
            }
            CoreError::Storage(detail) | CoreError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "an internal error occurred; the request id identifies it in the logs",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body())).into_response();
        // For the middleware that records refusals in the audit trail.
        res.extensions_mut().insert(ErrorCode(self.code));
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let (code, msg) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is too large".to_string(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "expected `Content-Type: application/json`".to_string(),
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_body", r.body_text()),
        _ => (
            "invalid_json",
            "the request body is not valid JSON".to_string(),
        ),
    };
    ApiError::new(status, code, msg)
}

/// `Json<T>` whose rejections answer in our error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| ApiJson(v))
            .map_err(json_rejection)
    }
}

/// `Query<T>` with our error shape.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text())
            })
    }
}

/// `Path<T>` with our error shape.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|r: PathRejection| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
            })
    }
}
