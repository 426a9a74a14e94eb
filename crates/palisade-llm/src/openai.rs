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

/// The most bytes one upstream event may hold. An OpenAI chunk is a token or a few; a stream
/// that sends a line longer than this is broken or hostile, and is ended with an error rather
/// than buffered without bound.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Decodes an OpenAI-compatible SSE answer body (`data:` chunks, usage, `[DONE]`) into
/// generation events. Any byte sequence, cut anywhere, gives events or one typed error and
/// then ends: never a panic (fuzzed by `fuzz/fuzz_targets/upstream_streams.rs`). Lines are
/// split by `sse_parse` (the WHATWG event-stream rules; invalid UTF-8 becomes U+FFFD), and no
/// event may exceed [`MAX_EVENT_BYTES`].
pub fn decode_stream<S, B, E>(mut body: S) -> GenerationStream
where
    S: futures::Stream<Item = Result<B, E>> + Send + Unpin + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    Box::pin(async_stream::stream! {
        let mut parser = sse_parse::SseParser::new().max_buffer(MAX_EVENT_BYTES);
        let mut reason: Option<String> = None;
        let mut usage = Usage::default();
        let mut ended = false;
        'read: loop {
            while let Some(ev) = parser.next_event() {
                let data = ev.data.trim();
                if data.is_empty() {
                    continue;
                }
                if data == "[DONE]" {
                    yield Ok(GenerationEvent::Done { finish_reason: finish(reason.as_deref()), usage, truncated_turns: 0 });
                    break 'read;
                }
                let chunk: WireChunk = match serde_json::from_str(data) {
                    Ok(c) => c,
                    Err(_) => {
                        yield Err(ProviderError::Internal("openai: the upstream sent an invalid event".into()));
                        break 'read;
                    }
                };
                if chunk.error.is_some() {
                    yield Err(ProviderError::Unavailable("openai: the upstream reported an error mid-stream".into()));
                    break 'read;
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
            if ended {
                // Some servers close without `[DONE]` after the final chunk.
                if reason.is_some() {
                    yield Ok(GenerationEvent::Done { finish_reason: finish(reason.as_deref()), usage, truncated_turns: 0 });
                } else {
                    yield Err(ProviderError::Unavailable("openai: the upstream closed the stream early".into()));
                }
                break;
            }
            match body.next().await {
                Some(Ok(bytes)) => {
                    parser.feed(bytes.as_ref());
                    // Checked before any event of this chunk is given out: the parser drops an
                    // oversized block and goes on, and what follows it must not reach the
                    // client as if nothing were missing.
                    if parser.overflows() > 0 {
                        yield Err(ProviderError::Internal(format!(
                            "openai: the upstream sent an event over {} MiB", MAX_EVENT_BYTES >> 20
                        )));
                        break;
                    }
                }
                Some(Err(e)) => {
                    yield Err(ProviderError::Unavailable(format!("openai: stream broken ({e})")));
                    break;
                }
                None => {
                    parser.finish();
                    ended = true;
                }
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    type Chunk = Result<bytes::Bytes, std::io::Error>;

    /// What a stream gave: the text, then how it ended (finish reason and usage, or the error).
    fn run(chunks: Vec<Chunk>) -> (String, Result<(FinishReason, u32, u32), ProviderError>) {
        let events: Vec<_> =
            futures::executor::block_on(decode_stream(futures::stream::iter(chunks)).collect());
        let mut text = String::new();
        let mut end = None;
        for e in events {
            assert!(end.is_none(), "an event after the end");
            match e {
                Ok(GenerationEvent::Text(t)) => text.push_str(&t),
                Ok(GenerationEvent::Done {
                    finish_reason,
                    usage,
                    ..
                }) => {
                    end = Some(Ok((
                        finish_reason,
                        usage.prompt_tokens,
                        usage.completion_tokens,
                    )))
                }
                Err(e) => end = Some(Err(e)),
            }
        }
        (text, end.expect("the stream ended with an event"))
    }

    fn cut(body: &[u8], size: usize) -> Vec<Chunk> {
        body.chunks(size)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect()
    }

    /// A recorded OpenAI stream, with the line endings, comments and field spellings the event
    /// stream format allows (CRLF, CR, `data:` without its space, a keep-alive comment).
    const BODY: &str = concat!(
        ": keep-alive\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Gr\\u00fc\"},\"finish_reason\":null}]}\r\n\r\n",
        "data:{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ezi \u{1F600}\"},\"finish_reason\":null}]}\n\n",
        "event: message\rdata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\r\r",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn every_cut_of_a_stream_gives_the_same_answer() {
        for size in 1..=BODY.len() {
            let (text, end) = run(cut(BODY.as_bytes(), size));
            assert_eq!(text, "Grüezi \u{1F600}", "chunks of {size}");
            assert_eq!(
                end.ok(),
                Some((FinishReason::Length, 12, 3)),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn a_close_after_the_finish_ends_the_answer_and_one_before_it_is_an_error() {
        let finished =
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}]}\n\n";
        let (text, end) = run(cut(finished.as_bytes(), 7));
        assert_eq!(text, "Hi");
        assert_eq!(end.ok(), Some((FinishReason::Stop, 0, 0)));

        // An event without its closing blank line is not an event (the format's rule).
        let unfinished =
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n\
                          data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n";
        let (text, end) = run(cut(unfinished.as_bytes(), 5));
        assert_eq!(text, "Hi");
        assert!(matches!(end, Err(ProviderError::Unavailable(_))), "{end:?}");

        let mut broken = cut(unfinished.as_bytes(), 64);
        broken.push(Err(std::io::Error::other("connection reset")));
        let (_, end) = run(broken);
        assert!(
            matches!(&end, Err(ProviderError::Unavailable(m)) if m.contains("connection reset")),
            "{end:?}"
        );
    }

    #[test]
    fn an_endless_event_is_refused_not_buffered() {
        // An upstream that streams one line and never ends it: the decoder stops at the cap
        // with a typed error instead of holding the line (here 3 MiB; it could be endless).
        let mut chunks = cut(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"ok\"},\"finish_reason\":null}]}\n\ndata: \"",
            16,
        );
        let filler = bytes::Bytes::from(vec![b'a'; 64 * 1024]);
        chunks.extend((0..48).map(|_| Ok(filler.clone())));
        let (text, end) = run(chunks);
        assert_eq!(text, "ok");
        assert!(
            matches!(&end, Err(ProviderError::Internal(m)) if m.contains("MiB")),
            "{end:?}"
        );
        // An oversized event followed, in the same chunk, by a good one: nothing after the
        // dropped event is given out.
        let mut body = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
        body.extend(std::iter::repeat_n(b'x', MAX_EVENT_BYTES + 10));
        body.extend_from_slice(b"\"},\"finish_reason\":null}]}\n\n");
        body.extend_from_slice(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"after\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        );
        let (text, end) = run(vec![Ok(bytes::Bytes::from(body))]);
        assert_eq!(text, "");
        assert!(matches!(end, Err(ProviderError::Internal(_))), "{end:?}");
        // Just under the cap is still an event.
        let mut body = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
        body.extend(std::iter::repeat_n(b'x', MAX_EVENT_BYTES - 200));
        body.extend_from_slice(b"\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
        let (text, end) = run(cut(&body, 4096));
        assert_eq!(text.len(), MAX_EVENT_BYTES - 200);
        assert_eq!(end.ok(), Some((FinishReason::Stop, 0, 0)));
    }

    #[test]
    fn invalid_utf8_in_a_chunk_does_not_break_the_stream() {
        let mut body = b"data: {\"choices\":[{\"delta\":{\"content\":\"a".to_vec();
        body.push(0xFF);
        body.extend_from_slice(b"b\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
        let (text, end) = run(cut(&body, 3));
        assert_eq!(text, "a\u{FFFD}b");
        assert!(end.is_ok(), "{end:?}");
    }
}
