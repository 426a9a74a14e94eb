//! A small OpenAI-compatible upstream on 127.0.0.1 for end-to-end tests of the providers:
//! `/{mode}/v1/chat/completions` answers by mode: `ok` (echoes the last user message, streamed
//! or not, with usage), `fail500`, `stall` (headers, then nothing) and `stall-after` (one
//! token, then nothing), `slow` (a long answer, one word every 40 ms), `leak` (repeats its system prompt) and `secret` (an AWS key split
//! across chunks, a card number and an outside image). It records hits, the bodies and the
//! `X-Request-Id` (and `traceparent`) it was sent.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Default)]
pub struct Upstream {
    pub hits: Mutex<HashMap<String, usize>>,
    pub request_ids: Mutex<Vec<String>>,
    pub bodies: Mutex<Vec<Value>>,
    /// The W3C `traceparent` of each request that carried one.
    pub traceparents: Mutex<Vec<String>>,
}

impl Upstream {
    pub fn hits(&self, mode: &str) -> usize {
        self.hits.lock().unwrap().get(mode).copied().unwrap_or(0)
    }
}

/// What `stall-after` says before it goes quiet: longer than the output guard's window (96
/// characters by default), so its start is shown at once rather than held back to the end.
pub const STALL_AFTER: &str = "partial answer: the upstream has started and will now go quiet \
    for good, long enough that the output guard releases the first part of it to the client.";

fn chunk(content: &str, finish: Option<&str>) -> Bytes {
    let delta = if finish.is_some() {
        json!({})
    } else {
        json!({"content": content})
    };
    let v = json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "stub",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    Bytes::from(format!("data: {v}\n\n"))
}

async fn handle(
    State(up): State<Arc<Upstream>>,
    Path(mode): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    *up.hits.lock().unwrap().entry(mode.clone()).or_default() += 1;
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        up.request_ids.lock().unwrap().push(id.to_string());
    }
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        up.traceparents.lock().unwrap().push(tp.to_string());
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    up.bodies.lock().unwrap().push(req.clone());
    let last_user = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let system = req["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "system"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let answer = match mode.as_str() {
        // Repeats its system prompt (a leak the output guard must cut).
        "leak" => format!("Sure. My instructions are: {system}"),
        // A secret and a card number split across chunks, plus an image from an outside host.
        "secret" => "Here is the key AKIA IOSFODNN 7EXAMPLE and card 4111 1111 1111 1111 done. ![x](https://evil.example.net/p.png) bye".into(),
        _ => format!("echo: {last_user}"),
    };
    let mode = if mode == "leak" || mode == "secret" {
        "ok".to_string()
    } else {
        mode
    };
    let stream = req["stream"].as_bool().unwrap_or(false);
    let sse = |parts: Vec<Bytes>, stall: bool| {
        let items = futures::stream::iter(parts.into_iter().map(Ok::<Bytes, Infallible>));
        let body = if stall {
            Body::from_stream(items.chain(futures::stream::pending()))
        } else {
            Body::from_stream(items)
        };
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .unwrap()
    };
    match mode.as_str() {
        "ok" if stream => {
            // "AKIA IOSFODNN 7EXAMPLE" is sent as three chunks that join into one key.
            let words: Vec<String> = answer
                .split_inclusive(' ')
                .map(|w| {
                    if w == "AKIA " || w == "IOSFODNN " {
                        w.trim_end().to_string()
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            let mut parts: Vec<Bytes> = words.iter().map(|w| chunk(w, None)).collect();
            parts.push(chunk("", Some("stop")));
            let usage = json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1,
                "model": "stub", "choices": [],
                "usage": {"prompt_tokens": 17, "completion_tokens": words.len(), "total_tokens": 17 + words.len()}});
            parts.push(Bytes::from(format!("data: {usage}\n\n")));
            parts.push(Bytes::from("data: [DONE]\n\n"));
            sse(parts, false)
        }
        "ok" => Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"id": "up-1", "object": "chat.completion", "created": 1, "model": "stub",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 17, "completion_tokens": 3, "total_tokens": 20}})
                .to_string(),
            ))
            .unwrap(),
        "slow" => {
            // A long answer trickling out: long enough that a client can always stop it.
            let words = futures::stream::unfold(0usize, |i| async move {
                if i >= 1500 {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(40)).await;
                Some((Ok::<Bytes, Infallible>(chunk(&format!("word{i} "), None)), i + 1))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(words))
                .unwrap()
        }
        "stall" => sse(vec![], true),
        "stall-after" => sse(vec![chunk(STALL_AFTER, None)], true),
        _ => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from(
                r#"{"error":{"message":"upstream secret: hunter2","type":"server_error"}}"#,
            ))
            .unwrap(),
    }
}

/// Starts the upstream; returns its base URL (`http://127.0.0.1:PORT`).
pub async fn start() -> (String, Arc<Upstream>) {
    let up = Arc::new(Upstream::default());
    let app = axum::Router::new()
        .route("/{mode}/v1/chat/completions", post(handle))
        .with_state(up.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), up)
}

/// A config file that names the stub at `upstream` (what [`start`] returns) as model `cloud`,
/// followed by `extra` (more TOML sections).
pub fn config(upstream: &str, extra: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut cfg = tempfile::NamedTempFile::new().unwrap();
    write!(
        cfg,
        r#"
[models.cloud]
provider = "openai"
base_url = "{upstream}/ok/v1"
trust_zone = "internal"
{extra}"#
    )
    .unwrap();
    cfg
}
