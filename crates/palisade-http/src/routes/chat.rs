//! `/api/chat/*`: send a message (JSON or Server-Sent Events) and manage conversations.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use palisade_core::chat::{ChatEvent, ChatInput, ChatRun, SamplingInput};
use palisade_core::entities::{millis_to_rfc3339, SessionSort, StoredMessage};
use palisade_core::ids::{MessageId, SessionId};
use palisade_types::{
    ChatMessageRequest, ChatStreamEvent, MessageMetadata, MessagePage, MessageResponse,
    SessionList, SessionSummary, UpdateSessionRequest,
};
use serde::Deserialize;

use crate::auth::Auth;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::AppState;

pub(crate) fn message_json(m: StoredMessage) -> MessageResponse {
    MessageResponse {
        id: m.id.to_string(),
        session_id: m.session_id.to_string(),
        role: m.role.as_str().into(),
        content: m.content,
        metadata: m.meta.map(|g| MessageMetadata {
            model: g.model,
            tokens_used: g.prompt_tokens + g.completion_tokens,
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            response_time_ms: g.latency_ms,
            finish_reason: g.finish_reason,
            partial: g.partial,
            truncated_turns: g.truncated_turns,
            fallback_from: g.fallback_from,
            cached: g.cached,
            guard: g
                .guard
                .into_iter()
                .map(|f| palisade_types::GuardFinding {
                    category: f.category,
                    kind: f.kind,
                    score: f.score,
                    action: f.action.as_str().into(),
                    stage: if f.turn.is_some() { "input" } else { "output" }.into(),
                })
                .collect(),
        }),
        created_at: millis_to_rfc3339(m.created_at),
    }
}

pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// `POST /api/chat/message`.
#[utoipa::path(
    post,
    path = "/api/chat/message",
    tag = "chat",
    request_body = palisade_types::ChatMessageRequest,
    responses((status = 200, description = "The stored answer, or with `stream: true` server-sent `ChatStreamEvent`s", content((palisade_types::MessageResponse = "application/json"), (String = "text/event-stream"))))
)]
pub async fn send_message(
    State(s): State<AppState>,
    Auth(who): Auth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatMessageRequest>,
) -> Result<Response, ApiError> {
    let stream = req.stream.unwrap_or(false);
    let input = ChatInput {
        message: req.message,
        session_id: req.session_id,
        model: req.model,
        sampling: SamplingInput {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            seed: req.seed,
            max_tokens: req.max_tokens,
            stop: req.stop,
        },
        request_id: request_id(&headers),
        system_prompt: req.system_prompt,
    };
    let run = s.chat.start(&who, input).await?;
    if stream {
        Ok(Sse::new(sse_events(run))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response())
    } else {
        collect(run)
            .await
            .map(|m| Json(message_json(m)).into_response())
    }
}

/// Waits for the whole answer. If the client goes away, dropping `run` cancels generation and
/// the partial answer is stored by the pipeline.
pub(crate) async fn collect(mut run: ChatRun) -> Result<StoredMessage, ApiError> {
    while let Some(ev) = run.events.recv().await {
        match ev {
            ChatEvent::Token(_) => {}
            ChatEvent::Finished(m) => return Ok(*m),
            ChatEvent::Failed { error, .. } => return Err(error.into()),
            ChatEvent::Blocked { categories, .. } => {
                return Err(ApiError::guard_blocked(categories))
            }
        }
    }
    Err(ApiError::from(palisade_core::CoreError::Internal(
        "chat ended without result".into(),
    )))
}

fn sse(ev: &ChatStreamEvent) -> Result<Event, Infallible> {
    Ok(Event::default().data(serde_json::to_string(ev).unwrap_or_else(|_| "{}".into())))
}

fn sse_events(mut run: ChatRun) -> impl Stream<Item = Result<Event, Infallible>> {
    // The events are produced inside the response body (no task of its own, no channel):
    // when the client goes away the body is dropped, and with it the stream and the `ChatRun`.
    async_stream::stream! {
        let _open = crate::telemetry::Open::stream("sse");
        let start = ChatStreamEvent::Start {
            session_id: run.session_id.to_string(),
            user_message_id: run.user_message_id.to_string(),
        };
        yield sse(&start);
        while let Some(ev) = run.events.recv().await {
            let (out, last) = match ev {
                ChatEvent::Token(t) => (ChatStreamEvent::Token { content: t }, false),
                ChatEvent::Finished(m) => {
                    let id = m.id.to_string();
                    let meta = message_json(*m).metadata;
                    match meta {
                        Some(metadata) => (
                            ChatStreamEvent::End {
                                message_id: id,
                                metadata,
                            },
                            true,
                        ),
                        None => continue,
                    }
                }
                ChatEvent::Failed { error, .. } => {
                    let e = ApiError::from(error);
                    (
                        ChatStreamEvent::Error {
                            code: e.code.into(),
                            message: e.message,
                            categories: None,
                        },
                        true,
                    )
                }
                ChatEvent::Blocked { categories, .. } => {
                    let e = ApiError::guard_blocked(categories);
                    (
                        ChatStreamEvent::Error {
                            code: e.code.into(),
                            message: e.message,
                            categories: e.categories,
                        },
                        true,
                    )
                }
            };
            yield sse(&out);
            if last {
                break;
            }
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionsQuery {
    limit: Option<u32>,
    offset: Option<u32>,
    sort: Option<String>,
}

/// `GET /api/chat/sessions`.
#[utoipa::path(
    get,
    path = "/api/chat/sessions",
    tag = "chat",
    params(SessionsQuery),
    responses((status = 200, description = "One page of the caller's conversations", body = palisade_types::SessionList))
)]
pub async fn list_sessions(
    State(s): State<AppState>,
    Auth(who): Auth,
    ApiQuery(q): ApiQuery<SessionsQuery>,
) -> Result<Json<SessionList>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
            "limit must be between 1 and 100",
        ));
    }
    let offset = q.offset.unwrap_or(0);
    let sort = match q.sort.as_deref() {
        None => SessionSort::UpdatedDesc,
        Some(v) => SessionSort::parse(v).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_sort",
                "sort must be created_at_desc, created_at_asc or updated_at_desc",
            )
        })?,
    };
    let (rows, total) = s.chat.list_sessions(&who, sort, limit, offset).await?;
    Ok(Json(SessionList {
        sessions: rows
            .into_iter()
            .map(|o| SessionSummary {
                id: o.session.id.to_string(),
                title: o.session.title,
                message_count: o.message_count,
                created_at: millis_to_rfc3339(o.session.created_at),
                updated_at: millis_to_rfc3339(o.session.updated_at),
                last_message_preview: o.last_message_preview,
                system_prompt: o.session.system_prompt,
            })
            .collect(),
        total,
        limit,
        offset,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    limit: Option<u32>,
    before_id: Option<String>,
}

/// `GET /api/chat/sessions/{id}/messages`.
#[utoipa::path(
    get,
    path = "/api/chat/sessions/{id}/messages",
    tag = "chat",
    params(("id" = String, Path, description = "Conversation id"), MessagesQuery),
    responses((status = 200, description = "One page of messages, newest last", body = palisade_types::MessagePage))
)]
pub async fn list_messages(
    State(s): State<AppState>,
    Auth(who): Auth,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let session: SessionId = id.parse()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limit",
            "limit must be between 1 and 200",
        ));
    }
    let before = q
        .before_id
        .as_deref()
        .map(str::parse::<MessageId>)
        .transpose()?;
    let (msgs, has_more) = s.chat.messages(&who, session, before, limit).await?;
    Ok(Json(MessagePage {
        session_id: session.to_string(),
        messages: msgs.into_iter().map(message_json).collect(),
        has_more,
    }))
}

/// `PATCH /api/chat/sessions/{id}`.
#[utoipa::path(
    patch,
    path = "/api/chat/sessions/{id}",
    tag = "chat",
    params(("id" = String, Path, description = "Conversation id")), request_body = palisade_types::UpdateSessionRequest,
    responses((status = 204, description = "Updated"))
)]
pub async fn rename_session(
    State(s): State<AppState>,
    Auth(who): Auth,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateSessionRequest>,
) -> Result<StatusCode, ApiError> {
    let session: SessionId = id.parse()?;
    if req.title.is_none() && req.system_prompt.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "nothing_to_change",
            "give a title, a system_prompt, or both",
        ));
    }
    if let Some(text) = &req.system_prompt {
        s.chat.set_system_prompt(&who, session, text).await?;
    }
    if let Some(title) = &req.title {
        s.chat.rename(&who, session, title).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/chat/sessions/{id}`.
#[utoipa::path(
    delete,
    path = "/api/chat/sessions/{id}",
    tag = "chat",
    params(("id" = String, Path, description = "Conversation id")),
    responses((status = 204, description = "Deleted"))
)]
pub async fn delete_session(
    State(s): State<AppState>,
    Auth(who): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let session: SessionId = id.parse()?;
    s.chat.delete(&who, session).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `json` (default) or `markdown`.
    format: Option<String>,
}

/// `GET /api/chat/export[?format=json|markdown]`: every conversation of the caller, as a
/// download.
#[utoipa::path(
    get,
    path = "/api/chat/export",
    tag = "chat",
    params(ExportQuery),
    responses((status = 200, description = "Every conversation of the caller, as a download", content((Object = "application/json"), (String = "text/markdown"))))
)]
pub async fn export(
    State(s): State<AppState>,
    Auth(who): Auth,
    ApiQuery(q): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let format = q.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "markdown") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_format",
            "format is json or markdown",
        ));
    }
    let conversations = s.chat.export(&who, format).await?;
    let now = millis_to_rfc3339(palisade_core::entities::now_millis());
    let (body, content_type, ext) = if format == "json" {
        let convs: Vec<serde_json::Value> = conversations
            .into_iter()
            .map(|(c, msgs)| {
                serde_json::json!({
                    "id": c.id.to_string(),
                    "title": c.title,
                    "system_prompt": c.system_prompt,
                    "created_at": millis_to_rfc3339(c.created_at),
                    "updated_at": millis_to_rfc3339(c.updated_at),
                    "messages": msgs.into_iter().map(message_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "exported_at": now,
            "user": who.username,
            "conversations": convs,
        });
        (doc.to_string(), "application/json", "json")
    } else {
        let mut md = format!("# Conversations of {}\n\nExported {now}.\n", who.username);
        for (c, msgs) in conversations {
            md.push_str(&format!(
                "\n## {}\n\n_Started {}_\n",
                c.title.replace('\n', " "),
                millis_to_rfc3339(c.created_at)
            ));
            if let Some(sp) = &c.system_prompt {
                md.push_str(&format!(
                    "\n> System prompt: {}\n",
                    sp.replace('\n', "\n> ")
                ));
            }
            for m in msgs {
                let who = match (m.role.as_str(), &m.meta) {
                    ("user", _) => "You".to_string(),
                    (_, Some(meta)) => format!("Assistant ({})", meta.model),
                    (role, None) => role.to_string(),
                };
                md.push_str(&format!(
                    "\n**{who}** · {}\n\n{}\n",
                    millis_to_rfc3339(m.created_at),
                    m.content
                ));
            }
        }
        (md, "text/markdown; charset=utf-8", "md")
    };
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, content_type.to_string()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"palisade-conversations.{ext}\""),
            ),
        ],
        body,
    )
        .into_response())
}
