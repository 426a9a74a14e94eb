//! Compatibility routes for teams migrating from the systems in the specs: spec 000's
//! `POST /login` and `POST /chat {prompt}`, spec 004's `POST /auth/login` and
//! `POST /auth/scoped-token`. Thin adapters over the same services with the same checks;
//! mounted only when `auth.compat_routes` is on (the default).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use palisade_core::chat::ChatInput;
use palisade_types::identity::{CompatChatRequest, CompatChatResponse};

use crate::auth::Auth;
use crate::error::{ApiError, ApiJson};
use crate::routes::chat::{collect, request_id};
use crate::AppState;

/// Spec 000: one prompt with a bearer token, one answer (stored as a new conversation).
#[utoipa::path(
    post,
    path = "/chat",
    tag = "compat",
    request_body = palisade_types::identity::CompatChatRequest,
    responses((status = 200, description = "Spec 000 chat (only with `compat_routes` on)", body = palisade_types::identity::CompatChatResponse))
)]
pub async fn chat(
    State(s): State<AppState>,
    Auth(who): Auth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CompatChatRequest>,
) -> Result<Json<CompatChatResponse>, ApiError> {
    let run = s
        .chat
        .start(
            &who,
            ChatInput {
                message: req.prompt,
                request_id: request_id(&headers),
                ..ChatInput::default()
            },
        )
        .await?;
    let model = run.model.clone();
    let session_id = run.session_id.to_string();
    let m = collect(run).await?;
    Ok(Json(CompatChatResponse {
        tokens_used: m.meta.as_ref().map(|x| x.completion_tokens).unwrap_or(0),
        response: m.content,
        model,
        session_id,
    }))
}
