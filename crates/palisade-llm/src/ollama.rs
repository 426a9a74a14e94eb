//! Ollama's native chat API, outbound: `POST {base}/api/chat` with `stream: true` answers with
//! newline-delimited JSON, one object per line: `{"message":{"role":"assistant","content":…},
//! "done":false}` while generating, then `{"done":true,"done_reason":"stop",
//! "prompt_eval_count":…,"eval_count":…}`; failures are `{"error":"…"}` (as the body of an
//! error status, or as a line of the stream).

use std::time::Duration;

use futures::StreamExt;
use palisade_core::provider::{
    FinishReason, GenerationEvent, GenerationStream, ProviderError, Usage,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;

use crate::upstream::{http_client, post_json, Endpoint, Upstream, UpstreamRequest};

/// The longest NDJSON line accepted from Ollama.
const MAX_LINE: usize = 1 << 20;

pub struct OllamaUpstream {
    http: reqwest::Client,
    /// `…/api/chat`.
    url: Endpoint,
    api_key: Option<String>,
}

impl OllamaUpstream {
    /// `base_url` is the server root, e.g. `http://127.0.0.1:11434`.
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        connect_timeout: Duration,
    ) -> Result<Self, ProviderError> {
        Ok(Self::with_client(
            base_url,
            api_key,
            http_client(connect_timeout)?,
        ))
    }

    /// As `new`, over a client built elsewhere (a private CA, a client certificate).
    pub fn with_client(base_url: &str, api_key: Option<String>, http: reqwest::Client) -> Self {
        Self {
            http,
            url: Endpoint::new(format!("{}/api/chat", base_url.trim_end_matches('/'))),
            api_key,
        }
    }

    fn body(req: &UpstreamRequest) -> Value {
        let p = &req.params;
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let mut options = json!({
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "num_predict": p.max_tokens,
        });
        if let Some(seed) = p.seed {
            options["seed"] = json!(seed);
        }
        if !p.stop.is_empty() {
            options["stop"] = json!(p.stop);
        }
        json!({"model": req.model, "messages": messages, "stream": true, "options": options})
    }
}

#[derive(Debug, Deserialize)]
struct Line {
    #[serde(default)]
    message: Option<LineMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u32>,
    #[serde(default)]
    eval_count: Option<u32>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct LineMessage {
    #[serde(default)]
    content: String,
}

#[async_trait::async_trait]
impl Upstream for OllamaUpstream {
    async fn start(&self, req: &UpstreamRequest) -> Result<GenerationStream, ProviderError> {
        let res = post_json(
            &self.http,
            "ollama",
            &self.url,
            self.api_key.as_deref(),
            &req.request_id,
            &Self::body(req),
        )
        .await?;
        Ok(decode_stream(res.bytes_stream()))
    }
}

/// Decodes an Ollama `/api/chat` NDJSON answer body into generation events. Any byte sequence,
/// cut anywhere, gives events or one typed error and then ends: never a panic, and no line
/// longer than the limit is buffered (fuzzed by `fuzz/fuzz_targets/upstream_streams.rs`).
pub fn decode_stream<S, B, E>(body: S) -> GenerationStream
where
    S: futures::Stream<Item = Result<B, E>> + Send + Unpin + 'static,
    B: bytes::Buf + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let bytes = body.map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
    let mut lines = FramedRead::new(
        StreamReader::new(bytes),
        LinesCodec::new_with_max_length(MAX_LINE),
    );
    Box::pin(async_stream::stream! {
        loop {
            let Some(next) = lines.next().await else {
                yield Err(ProviderError::Unavailable("ollama: the upstream closed the stream early".into()));
                break;
            };
            let line = match next {
                Ok(l) => l,
                Err(e) => {
                    yield Err(ProviderError::Unavailable(format!("ollama: stream broken ({e})")));
                    break;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Line = match serde_json::from_str(&line) {
                Ok(l) => l,
                Err(_) => {
                    yield Err(ProviderError::Internal("ollama: the upstream sent an invalid line".into()));
                    break;
                }
            };
            if parsed.error.is_some() {
                yield Err(ProviderError::Unavailable("ollama: the upstream reported an error mid-stream".into()));
                break;
            }
            if let Some(m) = parsed.message {
                if !m.content.is_empty() {
                    yield Ok(GenerationEvent::Text(m.content));
                }
            }
            if parsed.done {
                let finish_reason = match parsed.done_reason.as_deref() {
                    Some("length") => FinishReason::Length,
                    _ => FinishReason::Stop,
                };
                yield Ok(GenerationEvent::Done {
                    finish_reason,
                    usage: Usage {
                        prompt_tokens: parsed.prompt_eval_count.unwrap_or(0),
                        completion_tokens: parsed.eval_count.unwrap_or(0),
                    },
                    truncated_turns: 0,
                });
                break;
            }
        }
    })
}
