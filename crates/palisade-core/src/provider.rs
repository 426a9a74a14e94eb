//! The `ChatProvider` port: how the chat pipeline asks a model for a streamed answer.
//!
//! Adapters (the embedded llama.cpp engine, remote providers) implement this trait over our own
//! types. A stream is cancelled by dropping it: the provider must notice and stop generating.

use std::pin::Pin;

use futures::Stream;
use serde::{Deserialize, Serialize};

/// Who wrote a turn of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// One turn sent to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMessage {
    pub role: Role,
    pub content: String,
}

/// Sampling and length parameters for one generation, already validated by the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// 0.0 means greedy decoding.
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub seed: Option<u32>,
    pub max_tokens: u32,
    /// Generation ends before any of these strings; they are not part of the answer.
    pub stop: Vec<String>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 40,
            seed: None,
            max_tokens: 512,
            stop: Vec::new(),
        }
    }
}

/// A request to a provider: the model's public name, the conversation, the parameters.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub model: String,
    pub messages: Vec<PromptMessage>,
    pub params: GenerationParams,
    /// Correlates engine logs with the HTTP request (and is sent upstream as `X-Request-Id`);
    /// never contains content.
    pub request_id: String,
    /// Isolation scope of the response cache (the tenant); `None` disables caching.
    pub cache_scope: Option<String>,
    /// Whose request this is (the tenant), so model queues share their capacity fairly.
    pub tenant: Option<String>,
    /// The per-request canary in the system prompt: the cache key ignores it, so guarded
    /// requests still share cached answers.
    pub canary: Option<String>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted end-of-generation or a stop string matched.
    Stop,
    /// `max_tokens` was reached (or the context window filled up).
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token accounting for one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// One item of a generation stream.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// A piece of text; always whole UTF-8 characters.
    Text(String),
    /// The last event of a successful stream.
    Done {
        finish_reason: FinishReason,
        usage: Usage,
        /// Oldest history turns dropped to fit the context window.
        truncated_turns: u32,
    },
}

/// What can go wrong inside a provider. The messages are safe to show to the user.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProviderError {
    /// The queue is full; the caller should retry after the given number of seconds.
    #[error("the model is busy; retry in {retry_after_secs} s")]
    Overloaded { retry_after_secs: u32 },
    /// The prompt cannot fit the context window even after dropping the history.
    #[error(
        "the message is too long for the model's context window ({tokens} tokens, limit {limit})"
    )]
    ContextOverflow { tokens: u32, limit: u32 },
    /// No such model in this provider.
    #[error("unknown model")]
    UnknownModel,
    /// Parameters the provider can't honour.
    #[error("{0}")]
    InvalidRequest(String),
    /// The provider is not able to serve (engine stopped, upstream down).
    #[error("the model is unavailable")]
    Unavailable(String),
    /// The model did not answer in time (first token or whole request).
    #[error("the model did not answer in time")]
    Timeout(String),
    /// An internal failure; the detail is for logs only.
    #[error("the model failed to generate an answer")]
    Internal(String),
}

/// A stream of generation events. Dropping it cancels the generation.
pub type GenerationStream =
    Pin<Box<dyn Stream<Item = Result<GenerationEvent, ProviderError>> + Send + 'static>>;

/// A started generation and which model serves it.
pub struct RoutedStream {
    /// The model that answers (a fallback when the requested one failed).
    pub model: String,
    /// The model the request named, when a fallback answers instead.
    pub fallback_from: Option<String>,
    /// True when the answer is replayed from the response cache.
    pub cached: bool,
    pub stream: GenerationStream,
}

impl std::fmt::Debug for RoutedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedStream")
            .field("model", &self.model)
            .field("fallback_from", &self.fallback_from)
            .field("cached", &self.cached)
            .finish_non_exhaustive()
    }
}

/// Hit and miss counts of the response cache since start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CacheCounters {
    pub backend: String,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
}

/// Information about a model a provider serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    /// Tokens of context available to one conversation.
    pub context_size: u32,
    pub max_output_tokens: u32,
}

/// The port every model backend implements.
#[async_trait::async_trait]
pub trait ChatProvider: Send + Sync + 'static {
    /// Models this provider serves.
    fn models(&self) -> Vec<ModelInfo>;

    /// Starts a generation. Errors that happen before the first token (queue full, prompt too
    /// long, unknown model) are returned here; later ones arrive inside the stream.
    async fn generate(&self, req: GenerationRequest) -> Result<GenerationStream, ProviderError>;

    /// True when the provider can take requests (model loaded, engine running).
    fn is_ready(&self) -> bool;

    /// Starts a generation and says which model answers. Routers override this to report
    /// fallbacks and cache hits; a plain provider answers with the model asked for.
    async fn generate_routed(&self, req: GenerationRequest) -> Result<RoutedStream, ProviderError> {
        let model = req.model.clone();
        let stream = self.generate(req).await?;
        Ok(RoutedStream {
            model,
            fallback_from: None,
            cached: false,
            stream,
        })
    }

    /// Response-cache counters, when a cache is configured.
    fn cache_counters(&self) -> Option<CacheCounters> {
        None
    }

    /// False when `model` cannot serve right now (circuit open, engine stopped).
    fn is_available(&self, model: &str) -> bool {
        let _ = model;
        self.is_ready()
    }
}
