//! Shared helpers for the engine integration tests (real model, no mocks).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use palisade_core::provider::{
    ChatProvider, FinishReason, GenerationEvent, GenerationParams, GenerationRequest,
    GenerationStream, PromptMessage, ProviderError, Role, Usage,
};
use palisade_llama::provision::{default_model_path, DEFAULT_MODEL_NAME};
use palisade_llama::{EngineConfig, LlamaEngine};

/// `$PALISADE_TEST_MODEL`, else the default model path. Fails loudly when absent.
pub fn model_path() -> PathBuf {
    let path = match std::env::var_os("PALISADE_TEST_MODEL").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => default_model_path(),
    };
    assert!(
        path.is_file(),
        "test model not found at {}: set PALISADE_TEST_MODEL to a SmolLM2-135M-Instruct GGUF, \
         or install it with `palisade model pull` (PALISADE_MODEL_DIR selects the directory)",
        path.display()
    );
    path
}

pub fn config() -> EngineConfig {
    EngineConfig::new(model_path(), DEFAULT_MODEL_NAME)
}

pub fn start(cfg: EngineConfig) -> Arc<LlamaEngine> {
    LlamaEngine::start(cfg).expect("engine starts")
}

pub fn user(text: &str) -> PromptMessage {
    PromptMessage {
        role: Role::User,
        content: text.to_string(),
    }
}

pub fn system(text: &str) -> PromptMessage {
    PromptMessage {
        role: Role::System,
        content: text.to_string(),
    }
}

pub fn assistant(text: &str) -> PromptMessage {
    PromptMessage {
        role: Role::Assistant,
        content: text.to_string(),
    }
}

pub fn greedy(max_tokens: u32) -> GenerationParams {
    GenerationParams {
        temperature: 0.0,
        max_tokens,
        ..GenerationParams::default()
    }
}

pub fn request(messages: Vec<PromptMessage>, params: GenerationParams) -> GenerationRequest {
    GenerationRequest {
        model: DEFAULT_MODEL_NAME.to_string(),
        messages,
        params,
        request_id: "test".to_string(),
        cache_scope: None,
        tenant: None,
        canary: None,
    }
}

/// The result of a fully consumed stream.
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    pub pieces: Vec<String>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub truncated_turns: u32,
}

/// Reads a stream to its end, checking there is exactly one `Done`, last.
pub async fn collect(mut stream: GenerationStream) -> Result<Answer, ProviderError> {
    let mut pieces = Vec::new();
    let mut done = None;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(120), stream.next())
        .await
        .expect("stream stalled")
    {
        match item? {
            GenerationEvent::Text(t) => {
                assert!(done.is_none(), "text after Done");
                assert!(!t.is_empty(), "empty text event");
                pieces.push(t);
            }
            GenerationEvent::Done {
                finish_reason,
                usage,
                truncated_turns,
            } => {
                assert!(done.is_none(), "two Done events");
                done = Some((finish_reason, usage, truncated_turns));
            }
        }
    }
    let (finish_reason, usage, truncated_turns) = done.expect("stream ended without Done");
    Ok(Answer {
        text: pieces.concat(),
        pieces,
        finish_reason,
        usage,
        truncated_turns,
    })
}

pub async fn ask(
    engine: &LlamaEngine,
    messages: Vec<PromptMessage>,
    params: GenerationParams,
) -> Result<Answer, ProviderError> {
    let stream = engine.generate(request(messages, params)).await?;
    collect(stream).await
}

/// Polls until `cond` holds or fails after `secs`.
pub async fn wait_until(secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
