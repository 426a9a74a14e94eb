//! The OpenAI-compatible API: `POST /v1/chat/completions`, `GET /v1/models`,
//! `GET /v1/models/{id}`. Any OpenAI client can use Palisade as its server, with an API key or
//! an access token as the bearer, under the same permissions and pipeline as the chat API.
//! Errors use OpenAI's shape (`{"error":{"message","type","param","code"}}`).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use palisade_core::chat::{ChatEvent, ChatRun, CompletionInput, SamplingInput};
use palisade_core::entities::{now_millis, Credential};
use palisade_core::provider::{PromptMessage, Role};
use palisade_core::CoreError;
use palisade_types::openai::{
    AssistantMessage, ChatCompletion, ChatCompletionChoice, ChatCompletionChunk,
    ChatCompletionMessage, ChatCompletionRequest, ChunkChoice, ChunkDelta, CompletionUsage,
    OpenAiModel, OpenAiModelList, ResponseMeta,
};
use serde_json::Value;

use crate::auth::Auth;
use crate::error::{ApiError, ApiPath};
use crate::routes::chat::request_id;
use crate::AppState;

/// Fields OpenAI defines that Palisade accepts: ignored when they ask for nothing special.
const TOLERATED: &[&str] = &[
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "parallel_tool_calls",
    "store",
    "metadata",
    "service_tier",
    "response_format",
];

/// Fields Palisade does not support yet: a clear 400 instead of a silently wrong answer.
const UNSUPPORTED: &[&str] = &[
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
];

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// A core error in OpenAI's terms: invalid requests are 400, an unknown model 404. A guard
/// block stays 422 `guard_blocked` (the same answer on every route; OpenAI SDKs raise it as
/// `UnprocessableEntityError`).
fn openai_error(e: CoreError) -> ApiError {
    let mut api = ApiError::from(e);
    if api.code == "unknown_model" {
        api.status = StatusCode::NOT_FOUND;
        api.code = "model_not_found";
    } else if api.code == "message_too_long" || api.code == "context_overflow" {
        api.status = StatusCode::BAD_REQUEST;
        api.code = "context_length_exceeded";
    } else if api.status == StatusCode::UNPROCESSABLE_ENTITY && api.code != "guard_blocked" {
        api.status = StatusCode::BAD_REQUEST;
    }
    api
}

fn is_nonzero_number(v: &Value) -> bool {
    v.as_f64().is_some_and(|f| f != 0.0)
}

/// Checks the fields outside the typed ones.
fn check_extra(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    for (k, v) in &req.extra {
        if UNSUPPORTED.contains(&k.as_str()) {
            if v.is_null() || v.as_array().is_some_and(|a| a.is_empty()) {
                continue;
            }
            return Err(bad(
                "unsupported_parameter",
                format!("`{k}` is not supported by this server yet"),
            ));
        }
        if !TOLERATED.contains(&k.as_str()) {
            return Err(bad(
                "unknown_parameter",
                format!("unrecognised request argument `{k}`"),
            ));
        }
        let asks_for_something = match k.as_str() {
            "frequency_penalty" | "presence_penalty" => is_nonzero_number(v),
            "logprobs" => v.as_bool().unwrap_or(false),
            "top_logprobs" => is_nonzero_number(v),
            "logit_bias" => v.as_object().is_some_and(|o| !o.is_empty()),
            "response_format" => v
                .get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t != "text"),
            _ => false,
        };
        if asks_for_something {
            return Err(bad(
                "unsupported_parameter",
                format!("`{k}` is not supported by this server yet"),
            ));
        }
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(bad("unsupported_parameter", "only `n: 1` is supported"));
    }
    if req.stream_options.is_some() && !req.stream.unwrap_or(false) {
        return Err(bad(
            "invalid_parameter",
            "`stream_options` is only allowed with `stream: true`",
        ));
    }
    if req.user.as_ref().is_some_and(|u| u.chars().count() > 256) {
        return Err(bad(
            "invalid_parameter",
            "`user` has at most 256 characters",
        ));
    }
    Ok(())
}

/// A message's text: a string, or a list of `{type: "text", text}` parts.
fn text_of(i: usize, m: &ChatCompletionMessage) -> Result<String, ApiError> {
    match &m.content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(|t| t.as_str()),
                    p.get("text").and_then(|t| t.as_str()),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(bad(
                            "unsupported_content",
                            format!("messages[{i}]: only text content parts are supported"),
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(bad(
            "invalid_content",
            format!("messages[{i}].content must be a string or a list of text parts"),
        )),
    }
}

fn messages(req: &ChatCompletionRequest) -> Result<Vec<PromptMessage>, ApiError> {
    let mut out = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" | "function" => {
                return Err(bad(
                    "unsupported_parameter",
                    format!("messages[{i}]: tool messages are not supported yet"),
                ))
            }
            other => {
                return Err(bad(
                    "invalid_role",
                    format!(
                        "messages[{i}].role `{}` is not one of system, user, assistant",
                        other.chars().take(32).collect::<String>()
                    ),
                ))
            }
        };
        if m.extra.get("tool_calls").is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "unsupported_parameter",
                format!("messages[{i}]: tool calls are not supported yet"),
            ));
        }
        out.push(PromptMessage {
            role,
            content: text_of(i, m)?,
        });
    }
    Ok(out)
}

fn stop_list(v: &Option<Value>) -> Result<Option<Vec<String>>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| bad("invalid_stop", "`stop` must be a string or strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err(bad("invalid_stop", "`stop` must be a string or strings")),
    }
}

fn unix_now() -> i64 {
    now_millis() / 1000
}

fn meta(run_fallback: &Option<String>, truncated: u32, cached: bool) -> Option<ResponseMeta> {
    (run_fallback.is_some() || truncated > 0 || cached).then(|| ResponseMeta {
        fallback_from: run_fallback.clone(),
        truncated_turns: truncated,
        cached,
        guard_blocked: None,
    })
}

/// `POST /v1/chat/completions`.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = palisade_types::openai::ChatCompletionRequest,
    responses((status = 200, description = "The completion, or with `stream: true` server-sent `chat.completion.chunk` events", content((palisade_types::openai::ChatCompletion = "application/json"), (String = "text/event-stream"))))
)]
pub async fn chat_completions(
    State(s): State<AppState>,
    Auth(who): Auth,
    headers: HeaderMap,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|r| {
        let status = r.status();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(status, "payload_too_large", "the request body is too large")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                status,
                "unsupported_media_type",
                "expected `Content-Type: application/json`",
            ),
            _ => bad("invalid_request", r.body_text()),
        }
    })?;
    check_extra(&req)?;
    let msgs = messages(&req)?;
    let store = match &who.credential {
        Credential::ApiKey {
            store_conversations,
            ..
        } => *store_conversations,
        _ => false,
    };
    let stream = req.stream.unwrap_or(false);
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let input = CompletionInput {
        model: req.model.clone(),
        messages: msgs,
        sampling: SamplingInput {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: None,
            seed: req.seed,
            max_tokens: req.max_completion_tokens.or(req.max_tokens),
            stop: stop_list(&req.stop)?,
        },
        store,
        request_id: request_id(&headers),
    };
    let run = s.chat.complete(&who, input).await.map_err(openai_error)?;
    if stream {
        Ok(Sse::new(chunks(run, include_usage))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response())
    } else {
        whole(run).await.map(|c| Json(c).into_response())
    }
}

fn completion_id(run: &ChatRun) -> String {
    format!(
        "chatcmpl-{}",
        run.user_message_id.to_string().replace('-', "")
    )
}

/// Waits for the whole answer.
async fn whole(mut run: ChatRun) -> Result<ChatCompletion, ApiError> {
    let id = completion_id(&run);
    while let Some(ev) = run.events.recv().await {
        match ev {
            ChatEvent::Token(_) => {}
            ChatEvent::Finished(m) => {
                let g = m.meta.unwrap_or_default();
                return Ok(ChatCompletion {
                    id,
                    object: "chat.completion".into(),
                    created: unix_now(),
                    model: run.model.clone(),
                    choices: vec![ChatCompletionChoice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant".into(),
                            content: Some(m.content),
                        },
                        finish_reason: Some(g.finish_reason.clone()),
                        logprobs: None,
                    }],
                    usage: Some(CompletionUsage {
                        prompt_tokens: g.prompt_tokens,
                        completion_tokens: g.completion_tokens,
                        total_tokens: g.prompt_tokens + g.completion_tokens,
                    }),
                    system_fingerprint: None,
                    palisade: meta(&run.fallback_from, g.truncated_turns, run.cached),
                });
            }
            ChatEvent::Failed { error, .. } => return Err(error.into()),
            ChatEvent::Blocked { categories, .. } => {
                return Err(ApiError::guard_blocked(categories))
            }
        }
    }
    Err(ApiError::from(CoreError::Internal(
        "completion ended without result".into(),
    )))
}

fn data<T: serde::Serialize>(v: &T) -> Result<Event, Infallible> {
    Ok(Event::default().data(serde_json::to_string(v).unwrap_or_else(|_| "{}".into())))
}

/// The answer as `chat.completion.chunk` events, then `[DONE]`. A failure after the first
/// token arrives as an `{"error":…}` event (OpenAI clients raise it as an `APIError`).
fn chunks(mut run: ChatRun, include_usage: bool) -> impl Stream<Item = Result<Event, Infallible>> {
    // Produced inside the response body: no task, no channel (see `chat::sse_events`).
    async_stream::stream! {
        let _open = crate::telemetry::Open::stream("openai_sse");
        let id = completion_id(&run);
        let created = unix_now();
        let model = run.model.clone();
        let chunk = |delta: ChunkDelta, finish: Option<String>| ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk".into(),
            created,
            model: model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: finish,
                logprobs: None,
            }],
            usage: None,
            palisade: None,
        };
        let first = chunk(
            ChunkDelta {
                role: Some("assistant".into()),
                content: Some(String::new()),
            },
            None,
        );
        yield data(&first);
        while let Some(ev) = run.events.recv().await {
            match ev {
                ChatEvent::Token(t) => {
                    let c = chunk(
                        ChunkDelta {
                            role: None,
                            content: Some(t),
                        },
                        None,
                    );
                    yield data(&c);
                }
                ChatEvent::Finished(m) => {
                    let g = m.meta.unwrap_or_default();
                    let mut last = chunk(ChunkDelta::default(), Some(g.finish_reason.clone()));
                    last.palisade = meta(&run.fallback_from, g.truncated_turns, run.cached);
                    yield data(&last);
                    if include_usage {
                        let mut u = chunk(ChunkDelta::default(), None);
                        u.choices.clear();
                        u.usage = Some(CompletionUsage {
                            prompt_tokens: g.prompt_tokens,
                            completion_tokens: g.completion_tokens,
                            total_tokens: g.prompt_tokens + g.completion_tokens,
                        });
                        yield data(&u);
                    }
                    yield Ok(Event::default().data("[DONE]"));
                    return;
                }
                ChatEvent::Failed { error, .. } => {
                    let e = ApiError::from(error);
                    yield data(&e.body());
                    return;
                }
                ChatEvent::Blocked { categories, .. } => {
                    // OpenAI's own way to say an answer was cut by a filter; the categories
                    // travel in Palisade's extension field.
                    let mut last = chunk(ChunkDelta::default(), Some("content_filter".into()));
                    last.palisade = Some(ResponseMeta {
                        fallback_from: run.fallback_from.clone(),
                        truncated_turns: 0,
                        cached: run.cached,
                        guard_blocked: Some(categories),
                    });
                    yield data(&last);
                    yield Ok(Event::default().data("[DONE]"));
                    return;
                }
            }
        }
    }
}

/// `GET /v1/models`: the models the caller may use.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    responses((status = 200, description = "The models the caller may use", body = palisade_types::openai::OpenAiModelList))
)]
pub async fn list_models(State(s): State<AppState>, Auth(who): Auth) -> Json<OpenAiModelList> {
    let data = s
        .chat
        .models_for(&who)
        .into_iter()
        .map(|(spec, _, _)| OpenAiModel {
            id: spec.name.clone(),
            object: "model".into(),
            created: 0,
            owned_by: spec.provider.as_str().into(),
        })
        .collect();
    Json(OpenAiModelList {
        object: "list".into(),
        data,
    })
}

/// `GET /v1/models/{id}`.
#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    tag = "openai",
    params(("id" = String, Path, description = "Model id")),
    responses((status = 200, description = "The model", body = palisade_types::openai::OpenAiModel))
)]
pub async fn get_model(
    State(s): State<AppState>,
    Auth(who): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OpenAiModel>, ApiError> {
    s.chat
        .models_for(&who)
        .into_iter()
        .find(|(spec, _, _)| spec.name == id)
        .map(|(spec, _, _)| {
            Json(OpenAiModel {
                id: spec.name.clone(),
                object: "model".into(),
                created: 0,
                owned_by: spec.provider.as_str().into(),
            })
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                "the model does not exist or you may not use it",
            )
        })
}
