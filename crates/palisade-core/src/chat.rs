//! The chat pipeline service: validate, load the conversation, generate, stream, persist.
//!
//! One place for the whole flow so every route (JSON, SSE, later WebSocket and `/v1`) behaves the
//! same. Generation runs in its own task: the answer is saved even when the client goes away (the
//! partial text, marked as such), and a client that goes away cancels the generation.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::entities::{
    now_millis, ChatSession, GenerationMeta, Principal, SessionOverview, SessionSort, StoredMessage,
};
use crate::error::{CoreError, CoreResult};
use crate::ids::{MessageId, SessionId};
use crate::ports::ChatRepository;
use crate::provider::{
    ChatProvider, GenerationEvent, GenerationParams, GenerationRequest, ModelInfo, PromptMessage,
    ProviderError, Role,
};

/// Limits and defaults of the chat pipeline (from configuration).
#[derive(Debug, Clone)]
pub struct ChatPolicy {
    /// The model used when the request names none.
    pub default_model: String,
    pub system_prompt: String,
    pub max_message_chars: usize,
    pub default_max_tokens: u32,
    pub max_tokens_cap: u32,
    /// How many earlier messages of the conversation are offered to the model.
    pub history_messages: u32,
    pub max_stop_sequences: usize,
}

impl Default for ChatPolicy {
    fn default() -> Self {
        Self {
            default_model: "smollm2-135m".into(),
            system_prompt: "You are a helpful, concise assistant.".into(),
            max_message_chars: 16_000,
            default_max_tokens: 512,
            max_tokens_cap: 2048,
            history_messages: 50,
            max_stop_sequences: 4,
        }
    }
}

/// A chat request after the HTTP layer parsed it; numbers are still unchecked.
#[derive(Debug, Clone, Default)]
pub struct ChatInput {
    pub message: String,
    pub session_id: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub max_tokens: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub request_id: String,
}

/// What a running chat reports to the route that serves it.
#[derive(Debug)]
pub enum ChatEvent {
    Token(String),
    /// The assistant message as stored.
    Finished(StoredMessage),
    /// Generation failed after it started; the partial answer (if any) was stored.
    Failed {
        error: ProviderError,
        stored: Option<StoredMessage>,
    },
}

/// A chat that has started: the session it belongs to and its events.
#[derive(Debug)]
pub struct ChatRun {
    pub session_id: SessionId,
    pub user_message_id: MessageId,
    pub model: String,
    pub events: mpsc::Receiver<ChatEvent>,
}

/// The answer of a one-shot generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneShot {
    pub content: String,
    pub model: String,
    pub tokens_used: u32,
    pub prompt_tokens: u32,
    pub latency_ms: u64,
}

/// The chat pipeline.
pub struct ChatService {
    repo: Arc<dyn ChatRepository>,
    provider: Arc<dyn ChatProvider>,
    policy: ChatPolicy,
}

impl ChatService {
    pub fn new(
        repo: Arc<dyn ChatRepository>,
        provider: Arc<dyn ChatProvider>,
        policy: ChatPolicy,
    ) -> Self {
        Self {
            repo,
            provider,
            policy,
        }
    }

    pub fn provider(&self) -> &Arc<dyn ChatProvider> {
        &self.provider
    }

    /// Validates, loads history, starts generation and persists the user's message.
    /// Errors before generation starts (validation, unknown session, queue full) store nothing.
    pub async fn start(&self, who: &Principal, input: ChatInput) -> CoreResult<ChatRun> {
        let message = input.message.trim();
        if message.is_empty() {
            return Err(CoreError::validation(
                "empty_message",
                "message must not be empty",
            ));
        }
        let chars = message.chars().count();
        if chars > self.policy.max_message_chars {
            return Err(CoreError::validation(
                "message_too_long",
                format!(
                    "message has {chars} characters; the limit is {}",
                    self.policy.max_message_chars
                ),
            ));
        }
        let info = self.resolve_model(input.model.as_deref())?;
        Self::authorise(who, &info.name)?;
        let params = self.params(&input, &info)?;
        let model = info.name;

        let existing = match input.session_id.as_deref() {
            Some(raw) => {
                let id: SessionId = raw.parse()?;
                let session = self
                    .repo
                    .get_session(who.tenant_id, who.user_id, id)
                    .await?
                    .ok_or(CoreError::NotFound("session"))?;
                Some(session)
            }
            None => None,
        };

        let mut prompt = vec![PromptMessage {
            role: Role::System,
            content: self.policy.system_prompt.clone(),
        }];
        if let Some(session) = &existing {
            let (history, _) = self
                .repo
                .list_messages(
                    who.tenant_id,
                    session.id,
                    None,
                    self.policy.history_messages,
                )
                .await?;
            prompt.extend(
                history
                    .into_iter()
                    .filter(|m| !m.content.is_empty())
                    .map(|m| PromptMessage {
                        role: m.role,
                        content: m.content,
                    }),
            );
        }
        prompt.push(PromptMessage {
            role: Role::User,
            content: message.to_string(),
        });

        let started = Instant::now();
        let stream = self
            .provider
            .generate(GenerationRequest {
                model: model.clone(),
                messages: prompt,
                params,
                request_id: input.request_id.clone(),
            })
            .await?;

        // Generation is admitted: from here on the conversation is recorded.
        let now = now_millis();
        let session = match existing {
            Some(s) => s,
            None => {
                let s = ChatSession {
                    id: SessionId::new(),
                    tenant_id: who.tenant_id,
                    user_id: who.user_id,
                    title: title_from(message),
                    created_at: now,
                    updated_at: now,
                };
                self.repo.create_session(&s).await?;
                s
            }
        };
        let user_msg = StoredMessage {
            id: MessageId::new(),
            tenant_id: who.tenant_id,
            session_id: session.id,
            role: Role::User,
            content: message.to_string(),
            meta: None,
            created_at: now,
        };
        self.repo.append_message(&user_msg).await?;

        let (tx, rx) = mpsc::channel(64);
        let pump = Pump {
            repo: self.repo.clone(),
            tenant: who.tenant_id,
            session: session.id,
            model: model.clone(),
            started,
        };
        tokio::spawn(pump.run(stream, tx));

        Ok(ChatRun {
            session_id: session.id,
            user_message_id: user_msg.id,
            model,
            events: rx,
        })
    }

    /// `chat:send` and the right to use this model.
    fn authorise(who: &Principal, model: &str) -> CoreResult<()> {
        if !who.can(crate::access::CHAT_SEND) {
            return Err(CoreError::denied(
                "permission_denied",
                "your role may not send chat messages",
            ));
        }
        if !who.may_use_model(model) {
            return Err(CoreError::denied(
                "model_not_allowed",
                format!("you may not use the model `{model}`"),
            ));
        }
        Ok(())
    }

    /// One prompt, one answer, nothing stored: spec 004's scoped `generate`.
    pub async fn generate_once(
        &self,
        who: &Principal,
        prompt: &str,
        model: &str,
        max_tokens: u32,
        request_id: String,
    ) -> CoreResult<OneShot> {
        let prompt = prompt.trim();
        if prompt.is_empty() {
            return Err(CoreError::validation(
                "empty_message",
                "prompt must not be empty",
            ));
        }
        let chars = prompt.chars().count();
        if chars > self.policy.max_message_chars {
            return Err(CoreError::validation(
                "message_too_long",
                format!(
                    "prompt has {chars} characters; the limit is {}",
                    self.policy.max_message_chars
                ),
            ));
        }
        let info = self.resolve_model(Some(model))?;
        Self::authorise(who, &info.name)?;
        let input = ChatInput {
            max_tokens: Some(i64::from(max_tokens)),
            ..ChatInput::default()
        };
        let params = self.params(&input, &info)?;
        let started = Instant::now();
        let mut stream = self
            .provider
            .generate(GenerationRequest {
                model: info.name.clone(),
                messages: vec![
                    PromptMessage {
                        role: Role::System,
                        content: self.policy.system_prompt.clone(),
                    },
                    PromptMessage {
                        role: Role::User,
                        content: prompt.to_string(),
                    },
                ],
                params,
                request_id,
            })
            .await?;
        let mut content = String::new();
        while let Some(ev) = stream.next().await {
            match ev? {
                GenerationEvent::Text(t) => content.push_str(&t),
                GenerationEvent::Done { usage, .. } => {
                    return Ok(OneShot {
                        content,
                        model: info.name,
                        tokens_used: usage.completion_tokens,
                        prompt_tokens: usage.prompt_tokens,
                        latency_ms: u64::try_from(started.elapsed().as_millis())
                            .unwrap_or(u64::MAX),
                    });
                }
            }
        }
        Err(CoreError::Provider(ProviderError::Internal(
            "the generation ended without finishing".into(),
        )))
    }

    fn resolve_model(&self, requested: Option<&str>) -> CoreResult<ModelInfo> {
        let name = requested.unwrap_or(&self.policy.default_model);
        match self.provider.models().into_iter().find(|m| m.name == name) {
            Some(info) => Ok(info),
            None => Err(CoreError::validation(
                "unknown_model",
                "the requested model does not exist or is not available to you",
            )),
        }
    }

    fn params(&self, input: &ChatInput, model: &ModelInfo) -> CoreResult<GenerationParams> {
        let mut p = GenerationParams {
            max_tokens: self.policy.default_max_tokens,
            ..GenerationParams::default()
        };
        let cap = model.max_output_tokens.min(self.policy.max_tokens_cap);
        if let Some(t) = input.temperature {
            if !(0.0..=2.0).contains(&t) || t.is_nan() {
                return Err(CoreError::validation(
                    "invalid_temperature",
                    "temperature must be between 0 and 2",
                ));
            }
            p.temperature = t as f32;
        }
        if let Some(v) = input.top_p {
            if !(v > 0.0 && v <= 1.0) {
                return Err(CoreError::validation(
                    "invalid_top_p",
                    "top_p must be greater than 0 and at most 1",
                ));
            }
            p.top_p = v as f32;
        }
        if let Some(k) = input.top_k {
            if !(0..=1000).contains(&k) {
                return Err(CoreError::validation(
                    "invalid_top_k",
                    "top_k must be between 0 and 1000",
                ));
            }
            p.top_k = k as u32;
        }
        if let Some(s) = input.seed {
            p.seed = Some(u32::try_from(s).map_err(|_| {
                CoreError::validation("invalid_seed", "seed must be between 0 and 4294967295")
            })?);
        }
        if let Some(m) = input.max_tokens {
            if m < 1 || m > i64::from(cap) {
                return Err(CoreError::validation(
                    "invalid_max_tokens",
                    format!("max_tokens must be between 1 and {cap}"),
                ));
            }
            p.max_tokens = m as u32;
        } else {
            p.max_tokens = p.max_tokens.min(cap);
        }
        if let Some(stop) = &input.stop {
            if stop.len() > self.policy.max_stop_sequences
                || stop.iter().any(|s| s.is_empty() || s.chars().count() > 64)
            {
                return Err(CoreError::validation(
                    "invalid_stop",
                    format!(
                        "stop takes at most {} non-empty strings of up to 64 characters",
                        self.policy.max_stop_sequences
                    ),
                ));
            }
            p.stop = stop.clone();
        }
        Ok(p)
    }

    pub async fn list_sessions(
        &self,
        who: &Principal,
        sort: SessionSort,
        limit: u32,
        offset: u32,
    ) -> CoreResult<(Vec<SessionOverview>, u64)> {
        self.repo
            .list_sessions(who.tenant_id, who.user_id, sort, limit, offset)
            .await
    }

    /// Messages of one of the caller's sessions (404 for anybody else's).
    pub async fn messages(
        &self,
        who: &Principal,
        session: SessionId,
        before: Option<MessageId>,
        limit: u32,
    ) -> CoreResult<(Vec<StoredMessage>, bool)> {
        self.repo
            .get_session(who.tenant_id, who.user_id, session)
            .await?
            .ok_or(CoreError::NotFound("session"))?;
        self.repo
            .list_messages(who.tenant_id, session, before, limit)
            .await
    }

    pub async fn rename(&self, who: &Principal, session: SessionId, title: &str) -> CoreResult<()> {
        let title = title.trim();
        let n = title.chars().count();
        if n == 0 || n > 255 {
            return Err(CoreError::validation(
                "invalid_title",
                "title must have 1 to 255 characters",
            ));
        }
        if self
            .repo
            .rename_session(who.tenant_id, who.user_id, session, title, now_millis())
            .await?
        {
            Ok(())
        } else {
            Err(CoreError::NotFound("session"))
        }
    }

    pub async fn delete(&self, who: &Principal, session: SessionId) -> CoreResult<()> {
        if self
            .repo
            .delete_session(who.tenant_id, who.user_id, session)
            .await?
        {
            Ok(())
        } else {
            Err(CoreError::NotFound("session"))
        }
    }
}

/// A session title from the first message: its first line, at most 60 characters.
fn title_from(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message).trim();
    let mut title: String = line.chars().take(60).collect();
    if line.chars().count() > 60 {
        title.push('…');
    }
    if title.is_empty() {
        "New chat".into()
    } else {
        title
    }
}

/// Drives one generation to its end, forwarding tokens and storing the answer.
struct Pump {
    repo: Arc<dyn ChatRepository>,
    tenant: crate::ids::TenantId,
    session: SessionId,
    model: String,
    started: Instant,
}

impl Pump {
    async fn run(self, mut stream: crate::provider::GenerationStream, tx: mpsc::Sender<ChatEvent>) {
        let mut content = String::new();
        let mut meta = GenerationMeta {
            model: self.model.clone(),
            ..GenerationMeta::default()
        };
        let mut failure: Option<ProviderError> = None;
        let mut client_gone = false;
        loop {
            let next = tokio::select! {
                ev = stream.next() => ev,
                _ = tx.closed() => { client_gone = true; break; }
            };
            match next {
                Some(Ok(GenerationEvent::Text(t))) => {
                    content.push_str(&t);
                    meta.completion_tokens += 1;
                    if tx.send(ChatEvent::Token(t)).await.is_err() {
                        client_gone = true;
                        break;
                    }
                }
                Some(Ok(GenerationEvent::Done {
                    finish_reason,
                    usage,
                    truncated_turns,
                })) => {
                    meta.finish_reason = finish_reason.as_str().into();
                    meta.prompt_tokens = usage.prompt_tokens;
                    meta.completion_tokens = usage.completion_tokens;
                    meta.truncated_turns = truncated_turns;
                    break;
                }
                Some(Err(e)) => {
                    failure = Some(e);
                    break;
                }
                None => {
                    failure = Some(ProviderError::Internal(
                        "stream ended without result".into(),
                    ));
                    break;
                }
            }
        }
        // Dropping the stream cancels the generation in the provider.
        drop(stream);
        if client_gone {
            meta.finish_reason = "cancelled".into();
            meta.partial = true;
        } else if failure.is_some() {
            meta.finish_reason = "error".into();
            meta.partial = true;
        }
        meta.latency_ms = self.started.elapsed().as_millis() as u64;

        let stored = StoredMessage {
            id: MessageId::new(),
            tenant_id: self.tenant,
            session_id: self.session,
            role: Role::Assistant,
            content,
            meta: Some(meta),
            created_at: now_millis(),
        };
        let saved = match self.repo.append_message(&stored).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, session = %self.session, "could not store the assistant message");
                false
            }
        };
        let event = match failure {
            Some(error) => ChatEvent::Failed {
                error,
                stored: saved.then_some(stored),
            },
            None if saved => ChatEvent::Finished(stored),
            None => ChatEvent::Failed {
                error: ProviderError::Internal("storage failed".into()),
                stored: None,
            },
        };
        let _ = tx.send(event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::title_from;

    #[test]
    fn titles() {
        assert_eq!(title_from("Hello\nworld"), "Hello");
        assert_eq!(title_from(&"x".repeat(80)).chars().count(), 61);
    }
}
