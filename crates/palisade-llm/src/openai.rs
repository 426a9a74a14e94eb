//! The OpenAI chat-completions protocol, outbound: OpenAI itself, vLLM, llama.cpp's
//! llama-server, LM Studio and every other compatible server.
//!
//! Streams are Server-Sent Events: `data: {chunk}` lines, `data: [DONE]` at the end; with
//! `stream_options.include_usage` the last chunk carries `usage` (servers that ignore the
//! option get their usage estimated by the router).

use std::time::Duration;

use futures::StreamExt;
use palisade_core::provider::{
    FinishReason, GenerationEvent, GenerationStream, ProviderError, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::upstream::{
    http_client, post_json, transport_error, Endpoint, Upstream, UpstreamRequest,
};

/// A client for one OpenAI-compatible server.
pub struct OpenAiUpstream {
    http: reqwest::Client,
    /// `…/v1/chat/completions`.
    url: Endpoint,
    api_key: Option<String>,
    /// Ask for a streamed answer (the router always does; plain answers are for clients that
    /// want one JSON document).
    stream: bool,
}

impl OpenAiUpstream {
    /// `base_url` is the API root, e.g. `https://api.openai.com/v1`.
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
            url: Endpoint::new(format!(
                "{}/chat/completions",
                base_url.trim_end_matches('/')
            )),
            api_key,
            stream: true,
        }
    }

    /// Asks for one JSON answer instead of a stream.
    pub fn non_streaming(mut self) -> Self {
        self.stream = false;
        self
    }

    /// The request body, borrowing the request's text (nothing is copied before it is
    /// serialised).
    fn body<'a>(&self, req: &'a UpstreamRequest) -> WireRequest<'a> {
        let p = &req.params;
        WireRequest {
            model: &req.model,
            messages: req
                .messages
                .iter()
                .map(|m| WireTurn {
                    role: m.role.as_str(),
                    content: &m.content,
                })
                .collect(),
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            stream: self.stream,
            stream_options: self.stream.then_some(StreamOptions {
                include_usage: true,
            }),
            seed: p.seed,
            stop: &p.stop,
        }
    }
}

/// A chat-completions request as it goes upstream.
#[derive(Debug, Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireTurn<'a>>,
    max_tokens: u32,
    temperature: f32,
    top_p: f32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

#[derive(Debug, Serialize)]
struct WireTurn<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Debug, Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Debug, Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
        }
    }
}

#[derive(Debug, Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireChunkChoice {
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireCompletion {
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

fn finish(reason: Option<&str>) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

#[async_trait::async_trait]
impl Upstream for OpenAiUpstream {
    async fn start(&self, req: &UpstreamRequest) -> Result<GenerationStream, ProviderError> {
        let res = post_json(
            &self.http,
            "openai",
            &self.url,
            self.api_key.as_deref(),
            &req.request_id,
            &self.body(req),
        )
        .await?;
        if !self.stream {
            let bytes = res
                .bytes()
                .await
                .map_err(|e| transport_error("openai", &e))?;
            let parsed: WireCompletion = serde_json::from_slice(&bytes).map_err(|_| {
                ProviderError::Internal("openai: the upstream sent an invalid answer".into())
            })?;
            let choice = parsed.choices.into_iter().next().ok_or_else(|| {
                ProviderError::Internal("openai: the upstream answer has no choices".into())
            })?;
            let text = choice.message.and_then(|m| m.content).unwrap_or_default();
            let done = GenerationEvent::Done {
                finish_reason: finish(choice.finish_reason.as_deref()),
                usage: parsed.usage.map(Usage::from).unwrap_or_default(),
                truncated_turns: 0,
            };
            let mut events = Vec::new();
            if !text.is_empty() {
                events.push(Ok(GenerationEvent::Text(text)));
            }
            events.push(Ok(done));
            return Ok(Box::pin(futures::stream::iter(events)));
        }
        Ok(decode_stream(res.bytes_stream()))
    }
}

/// Decodes an OpenAI-compatible SSE answer body (`data:` chunks, usage, `[DONE]`) into
/// generation events. Any byte sequence, cut anywhere, gives events or one typed error and
/// then ends: never a panic (fuzzed by `fuzz/fuzz_targets/upstream_streams.rs`).
pub fn decode_stream<S, B, E>(body: S) -> GenerationStream
where
    S: futures::Stream<Item = Result<B, E>> + Send + Unpin + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let mut events = eventsource_stream::Eventsource::eventsource(body);
    Box::pin(async_stream::stream! {
        let mut reason: Option<String> = None;
        let mut usage = Usage::default();
        loop {
            let Some(next) = events.next().await else {
                // Some servers close without `[DONE]` after the final chunk.
                if reason.is_some() {
                    yield Ok(GenerationEvent::Done { finish_reason: finish(reason.as_deref()), usage, truncated_turns: 0 });
                } else {
                    yield Err(ProviderError::Unavailable("openai: the upstream closed the stream early".into()));
                }
                break;
            };
            let ev = match next {
                Ok(ev) => ev,
                Err(e) => {
                    yield Err(ProviderError::Unavailable(format!("openai: stream broken ({e})")));
                    break;
                }
            };
            let data = ev.data.trim();
            if data.is_empty() {
                continue;
            }
            if data == "[DONE]" {
                yield Ok(GenerationEvent::Done { finish_reason: finish(reason.as_deref()), usage, truncated_turns: 0 });
                break;
            }
            let chunk: WireChunk = match serde_json::from_str(data) {
                Ok(c) => c,
                Err(_) => {
                    yield Err(ProviderError::Internal("openai: the upstream sent an invalid event".into()));
                    break;
                }
            };
            if chunk.error.is_some() {
                yield Err(ProviderError::Unavailable("openai: the upstream reported an error mid-stream".into()));
                break;
            }
            if let Some(u) = chunk.usage {
                usage = u.into();
            }
            for c in chunk.choices {
                if let Some(text) = c.delta.and_then(|d| d.content) {
                    if !text.is_empty() {
                        yield Ok(GenerationEvent::Text(text));
                    }
                }
                if c.finish_reason.is_some() {
                    reason = c.finish_reason;
                }
            }
        }
    })
}
