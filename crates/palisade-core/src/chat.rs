//! The chat pipeline service: validate, load the conversation, generate, stream, persist.
//!
//! One place for the whole flow so every route (JSON, SSE, later WebSocket and `/v1`) behaves the
//! same. Generation runs in its own task: the answer is saved even when the client goes away (the
//! partial text, marked as such), and a client that goes away cancels the generation.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tracing::Instrument;

use crate::access::{Grant, ModelsManage};
use crate::entities::{
    now_millis, ChatSession, GenerationMeta, Principal, SessionOverview, SessionSort, StoredMessage,
};
use crate::error::{CoreError, CoreResult};
use crate::guard::{
    FindingSummary, Guard, GuardScope, NoGuard, OutputGuard, OutputStep, Pseudonyms,
};
use crate::identity::{SecurityEvent, SecurityEventKind};
use crate::ids::{MessageId, SessionId};
use crate::jobs::{Job, JobHandler, JobRepository, NewJob};
use crate::models::{may_use, ModelRegistry};
use crate::ports::{ChatRepository, SecurityEventSink};
use crate::provider::{
    ChatProvider, GenerationEvent, GenerationParams, GenerationRequest, PromptMessage,
    ProviderError, Role,
};
use crate::quota::{
    Consumed, Demand, Door, LimitState, Quotas, Reservation, Unlimited, UsageQuery,
    UsageRepository, UsageRow,
};
use palisade_types::models::ModelSpec;

/// The input guard's refusal: the categories that blocked and every finding (no text).
struct GuardRefusal {
    categories: Vec<String>,
    findings: Vec<FindingSummary>,
}

/// Where the conversation of a run is stored.
enum Target {
    Existing(ChatSession),
    /// A new conversation: its title and system prompt.
    New(String, Option<String>),
}

/// Longest system prompt of a conversation (characters): it is sent with every request.
pub const MAX_SYSTEM_PROMPT_CHARS: usize = 4000;

/// Limits and defaults of the chat pipeline (from configuration). Per-model limits
/// (`max_tokens`, context size) live in the model registry.
#[derive(Debug, Clone)]
pub struct ChatPolicy {
    pub system_prompt: String,
    pub max_message_chars: usize,
    /// How many earlier messages of the conversation are offered to the model.
    pub history_messages: u32,
    pub max_stop_sequences: usize,
    /// Messages in one `/v1` request.
    pub max_messages: usize,
}

impl Default for ChatPolicy {
    fn default() -> Self {
        Self {
            system_prompt: "You are a helpful, concise assistant.".into(),
            max_message_chars: 16_000,
            history_messages: 50,
            max_stop_sequences: 4,
            max_messages: 256,
        }
    }
}

/// Sampling parameters as a client sent them; still unchecked.
#[derive(Debug, Clone, Default)]
pub struct SamplingInput {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub max_tokens: Option<i64>,
    pub stop: Option<Vec<String>>,
}

/// A chat request after the HTTP layer parsed it; numbers are still unchecked.
#[derive(Debug, Clone, Default)]
pub struct ChatInput {
    pub message: String,
    pub session_id: Option<String>,
    pub model: Option<String>,
    pub sampling: SamplingInput,
    pub request_id: String,
    /// The system prompt of a new conversation (needs `chat:system_prompt`).
    pub system_prompt: Option<String>,
}

/// A whole conversation sent at once (OpenAI's `/v1/chat/completions`).
#[derive(Debug, Clone, Default)]
pub struct CompletionInput {
    pub model: String,
    pub messages: Vec<PromptMessage>,
    pub sampling: SamplingInput,
    /// Keep the conversation in the caller's history (the API key's policy).
    pub store: bool,
    pub request_id: String,
}

/// What a running chat reports to the route that serves it.
///
/// The stored message is boxed: every open stream holds a channel of these, and tokio
/// allocates its slots 32 at a time, so the size of the largest variant is paid 32 times per
/// stream (7.2 kB unboxed, 1.5 kB boxed; measured with heaptrack at 3,000 SSE streams).
#[derive(Debug)]
pub enum ChatEvent {
    Token(String),
    /// The assistant message as stored (or, for an unstored completion, as it would be).
    Finished(Box<StoredMessage>),
    /// Generation failed after it started; the partial answer (if any) was stored.
    Failed {
        error: ProviderError,
        stored: Option<Box<StoredMessage>>,
    },
    /// The output guard cut the answer; what was shown before is stored, marked partial.
    Blocked {
        categories: Vec<String>,
        stored: Option<Box<StoredMessage>>,
    },
}

/// A chat that has started: the session it belongs to and its events.
#[derive(Debug)]
pub struct ChatRun {
    pub session_id: SessionId,
    pub user_message_id: MessageId,
    /// The model that answers.
    pub model: String,
    /// The model asked for, when a fallback answers.
    pub fallback_from: Option<String>,
    pub cached: bool,
    /// False for a completion that is not kept in the history.
    pub stored: bool,
    pub events: ChatEvents,
}

/// What a model test returned (admin "test connection").
#[derive(Debug, Clone)]
pub struct ModelProbe {
    /// The model that answered (a fallback when the tested one failed before its first token).
    pub model: String,
    pub answer: String,
    pub latency_ms: u64,
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
    registry: Arc<ModelRegistry>,
    policy: ChatPolicy,
    guard: Arc<dyn Guard>,
    quotas: Arc<dyn Quotas>,
    usage: Option<Arc<dyn UsageRepository>>,
    audit: Option<Arc<AuditHook>>,
    titles: Option<Titles>,
}

/// Conversation titles written by a model, in a background job.
struct Titles {
    jobs: Arc<dyn JobRepository>,
    model: String,
    max_attempts: u32,
}

/// The job kind of title generation.
pub const TITLE_JOB: &str = "conversation_title";

/// Where model requests and guard decisions are recorded (the audit trail).
struct AuditHook {
    sink: Arc<dyn SecurityEventSink>,
    /// A request whose `llm_request` event cannot be recorded is refused (503).
    fail_closed: bool,
    /// Tenants whose requests are recorded with their text (`*`: all; see
    /// [`ChatService::with_audit_content`]).
    content: Vec<String>,
}

impl AuditHook {
    /// Whether `tenant`'s policy asks for the text of its model requests in the trail.
    fn records_content(&self, tenant: &crate::ids::TenantId) -> bool {
        // The common case (digests only) costs nothing per request.
        if self.content.is_empty() {
            return false;
        }
        let t = tenant.to_string();
        self.content.iter().any(|c| c == "*" || *c == t)
    }

    /// Records `event`; a failure is logged (the caller decides whether it refuses).
    async fn record(&self, event: SecurityEvent) -> CoreResult<()> {
        let kind = event.kind.as_str();
        let result = self.sink.record(event).await;
        if let Err(e) = &result {
            tracing::error!(kind, error = ?e, "could not record an audit event");
        }
        result
    }
}

/// How a request came in, for its budgets and its audit record.
struct Entry {
    door: Door,
    /// `chat`, `v1` or `generate`.
    route: &'static str,
    /// The turns the client sent, as the compact JSON the trail digests (see
    /// [`prompt_digest`]).
    prompt_json: String,
}

/// SHA-256 (hex) of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::hex_lower(&sha2::Sha256::digest(bytes))
}

/// The audit trail's digest of the turns a client sent: SHA-256 of their compact JSON array,
/// `[{"content":"…","role":"user"},…]` (keys sorted, no spaces), so an auditor holding the
/// text can prove it is the text of this request.
pub fn prompt_digest(turns: &[(Role, &str)]) -> String {
    sha256_hex(prompt_json(turns).as_bytes())
}

/// The compact JSON array of `turns` whose SHA-256 is [`prompt_digest`] (also what a tenant
/// whose policy records content keeps, sealed, in the trail).
pub fn prompt_json(turns: &[(Role, &str)]) -> String {
    /// One turn as the digest reads it: fields in sorted order, as a JSON object's keys are.
    #[derive(serde::Serialize)]
    struct Turn<'a> {
        content: &'a str,
        role: &'a str,
    }
    let turns: Vec<Turn<'_>> = turns
        .iter()
        .map(|(role, content)| Turn {
            content,
            role: role.as_str(),
        })
        .collect();
    // Strings into memory: serialising cannot fail.
    serde_json::to_string(&turns).unwrap_or_default()
}

/// The audit trail's digest of an answer: SHA-256 of its text as the client received it.
pub fn answer_digest(answer: &str) -> String {
    sha256_hex(answer.as_bytes())
}

/// A provider error's kind, for the audit trail.
fn error_kind(e: &ProviderError) -> &'static str {
    match e {
        ProviderError::Overloaded { .. } => "overloaded",
        ProviderError::ContextOverflow { .. } => "context_overflow",
        ProviderError::UnknownModel => "unknown_model",
        ProviderError::InvalidRequest(_) => "invalid_request",
        ProviderError::Unavailable(_) => "unavailable",
        ProviderError::Timeout(_) => "timeout",
        ProviderError::Internal(_) => "internal",
    }
}

/// One model request as the audit trail sees it: who, through which route, to which model,
/// and the digest of what was asked.
struct RequestAudit {
    hook: Arc<AuditHook>,
    who: Principal,
    base: serde_json::Map<String, serde_json::Value>,
    /// The turns sent (compact JSON), when the tenant's policy records content.
    prompt: Option<String>,
}

impl RequestAudit {
    fn event(&self, kind: SecurityEventKind, extra: serde_json::Value) -> SecurityEvent {
        Self::with_base(&self.who, self.base.clone(), kind, extra)
    }

    /// [`RequestAudit::event`] for the request's last record: the facts move into it instead
    /// of being copied.
    fn last_event(&mut self, kind: SecurityEventKind, extra: serde_json::Value) -> SecurityEvent {
        Self::with_base(&self.who, std::mem::take(&mut self.base), kind, extra)
    }

    fn with_base(
        who: &Principal,
        mut detail: serde_json::Map<String, serde_json::Value>,
        kind: SecurityEventKind,
        extra: serde_json::Value,
    ) -> SecurityEvent {
        if let serde_json::Value::Object(m) = extra {
            detail.extend(m);
        }
        SecurityEvent::new(kind)
            .caller(who)
            .detail(serde_json::Value::Object(detail))
    }
}

/// An admitted request's budget hold, usage row and audit record, closed once when it ends.
struct Accounting {
    reservation: Box<dyn Reservation>,
    usage: Option<Arc<dyn UsageRepository>>,
    row: UsageRow,
    prompt_estimate: u64,
    audit: Option<RequestAudit>,
}

impl Accounting {
    /// Records the request before any model sees it. When that fails and the trail is
    /// fail-closed, the request is refused: closes the accounting and returns the error.
    async fn record_request(self, guard: &[FindingSummary]) -> CoreResult<Accounting> {
        let Some(a) = &self.audit else {
            return Ok(self);
        };
        let mut extra = serde_json::json!({ "guard": guard });
        if let Some(p) = &a.prompt {
            // Sealed with the tenant's data key by the store before it is chained.
            extra["content"] = serde_json::json!({ "prompt": p });
        }
        let event = a.event(SecurityEventKind::LlmRequest, extra);
        match a.hook.record(event).await {
            Err(e) if a.hook.fail_closed => {
                let why = match e {
                    CoreError::AuditUnavailable(d)
                    | CoreError::Storage(d)
                    | CoreError::StorageUnavailable(d) => d,
                    other => other.to_string(),
                };
                self.close(Consumed::default(), false).await;
                Err(CoreError::AuditUnavailable(why))
            }
            _ => Ok(self),
        }
    }

    /// Records how the request ended (`extra` adds to the request's facts; `answer`: the text
    /// the client received, kept only when the tenant's policy records content), settles the
    /// reservation to `used` and adds the request to the day's usage. The audit record and the
    /// usage row go to their group commits together, so the request waits for one commit, not
    /// two in a row.
    async fn finish(
        self,
        mut extra: serde_json::Value,
        answer: Option<&str>,
        used: Consumed,
        guard_blocked: bool,
    ) {
        let Accounting {
            reservation,
            usage,
            row,
            prompt_estimate,
            audit,
        } = self;
        let record = async {
            if let Some(mut a) = audit {
                if let (Some(_), Some(text)) = (&a.prompt, answer) {
                    extra["content"] = serde_json::json!({ "answer": text });
                }
                let event = a.last_event(SecurityEventKind::LlmResult, extra);
                let _ = a.hook.record(event).await;
            }
        };
        let settle = Self::settle(
            reservation,
            usage,
            row,
            prompt_estimate,
            used,
            guard_blocked,
        );
        tokio::join!(record, settle);
    }

    /// Settles the reservation to `used` and adds the request to the day's usage.
    async fn close(self, used: Consumed, guard_blocked: bool) {
        Self::settle(
            self.reservation,
            self.usage,
            self.row,
            self.prompt_estimate,
            used,
            guard_blocked,
        )
        .await;
    }

    async fn settle(
        reservation: Box<dyn Reservation>,
        usage: Option<Arc<dyn UsageRepository>>,
        mut row: UsageRow,
        prompt_estimate: u64,
        mut used: Consumed,
        guard_blocked: bool,
    ) {
        if used.prompt_tokens == 0 && used.completion_tokens > 0 {
            // Providers that end early (client gone) report no prompt count: the estimate
            // stands in for it.
            used.prompt_tokens = prompt_estimate;
        }
        reservation.settle(used).await;
        if let Some(repo) = usage {
            row.requests = 1;
            row.prompt_tokens = used.prompt_tokens;
            row.completion_tokens = used.completion_tokens;
            row.compute_ms = used.compute_ms;
            row.guard_blocks = u64::from(guard_blocked);
            if let Err(e) = repo.add_usage(&row).await {
                tracing::error!(error = %e, "could not record usage");
            }
        }
    }
}

/// An upper estimate of a prompt's tokens before it is tokenized: about three bytes per token
/// for text, plus the chat template's framing and the server's system prompt.
fn estimate_prompt_tokens(messages: &[PromptMessage]) -> u64 {
    let text: u64 = messages
        .iter()
        .map(|m| (m.content.len() as u64).div_ceil(3) + 8)
        .sum();
    text + 128
}

/// A conversation after the input guard: what the model sees, and how its answer is checked.
struct Guarded {
    prompt: Vec<PromptMessage>,
    canary: String,
    output: Box<dyn OutputGuard>,
    findings: Vec<FindingSummary>,
    /// The vault to store with the session when the guard added placeholders.
    vault: Option<Pseudonyms>,
}

/// A fresh random canary for one request's system prompt.
fn new_canary() -> String {
    let raw = uuid::Uuid::new_v4().simple().to_string();
    format!("PLSD-{}", &raw[..12])
}

fn log_findings(stage: &'static str, findings: &[FindingSummary]) {
    crate::telemetry::guard_findings(stage, findings);
    if findings.is_empty() {
        return;
    }
    let list: Vec<String> = findings
        .iter()
        .map(|f| {
            format!(
                "{}/{}:{:.2}:{}",
                f.category,
                f.kind,
                f.score,
                f.action.as_str()
            )
        })
        .collect();
    tracing::info!(stage, findings = %list.join(","), "guard findings");
}

impl ChatService {
    pub fn new(
        repo: Arc<dyn ChatRepository>,
        provider: Arc<dyn ChatProvider>,
        registry: Arc<ModelRegistry>,
        policy: ChatPolicy,
    ) -> Self {
        Self {
            repo,
            provider,
            registry,
            policy,
            guard: Arc::new(NoGuard),
            quotas: Arc::new(Unlimited),
            usage: None,
            audit: None,
            titles: None,
        }
    }

    /// New conversations get a title written by `model` (a `conversation_title` job, retried
    /// up to `max_attempts` times); until then, and if it fails, the first line stands.
    pub fn with_titles(
        mut self,
        jobs: Arc<dyn JobRepository>,
        model: String,
        max_attempts: u32,
    ) -> Self {
        self.titles = Some(Titles {
            jobs,
            model,
            max_attempts,
        });
        self
    }

    /// Records every model request (before the model sees it, and how it ended) and every
    /// guard refusal in the audit trail. With `fail_closed`, a request whose record cannot be
    /// written is refused with 503 `audit_unavailable`.
    pub fn with_audit(mut self, sink: Arc<dyn SecurityEventSink>, fail_closed: bool) -> Self {
        self.audit = Some(Arc::new(AuditHook {
            sink,
            fail_closed,
            content: Vec::new(),
        }));
        self
    }

    /// The tenants (ids; `*`: all) whose model requests are recorded with their text: the
    /// turns sent on `llm_request` and the answer on `llm_result`, under `content` (the store
    /// seals it with the tenant's data key). Others get digests only. After [`Self::with_audit`].
    pub fn with_audit_content(mut self, tenants: Vec<String>) -> Self {
        self.audit = self.audit.map(|h| {
            Arc::new(AuditHook {
                sink: h.sink.clone(),
                fail_closed: h.fail_closed,
                content: tenants,
            })
        });
        self
    }

    /// Records an event in the audit trail (failures are logged).
    async fn audit_event(&self, event: SecurityEvent) {
        if let Some(hook) = &self.audit {
            let _ = hook.record(event).await;
        }
    }

    /// Token, compute and stream budgets (pipeline step 4).
    pub fn with_quotas(mut self, quotas: Arc<dyn Quotas>) -> Self {
        self.quotas = quotas;
        self
    }

    /// Where each request's usage is counted (pipeline step 10).
    pub fn with_usage(mut self, usage: Arc<dyn UsageRepository>) -> Self {
        self.usage = Some(usage);
        self
    }

    /// The caller's own usage in a window (`YYYY-MM-DD` days, UTC) and what is left of each
    /// limit that applies to them.
    pub async fn own_usage(
        &self,
        who: &Principal,
        from: Option<&str>,
        to: Option<&str>,
    ) -> CoreResult<(UsageQuery, Vec<UsageRow>, Vec<LimitState>)> {
        let (from_day, to_day) = UsageQuery::window(from, to, now_millis())?;
        let q = UsageQuery {
            tenant: Some(who.tenant_id),
            user: Some(who.user_id),
            from_day,
            to_day,
        };
        let rows = match &self.usage {
            Some(repo) => repo.usage(&q).await?,
            None => Vec::new(),
        };
        let limits = self.quotas.status(who).await;
        Ok((q, rows, limits))
    }

    /// Usage for administrators (`usage:read`): their own tenant, or any (platform
    /// administrators; `tenant = None` is every tenant), optionally one user.
    pub async fn usage_report(
        &self,
        who: &Principal,
        tenant: Option<crate::ids::TenantId>,
        user: Option<crate::ids::UserId>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> CoreResult<(UsageQuery, Vec<UsageRow>)> {
        if !who.can(crate::access::USAGE_READ) {
            return Err(CoreError::denied(
                "permission_denied",
                "your role may not read usage",
            ));
        }
        let tenant = if who.is_platform_admin() {
            tenant
        } else {
            match tenant {
                Some(t) if t != who.tenant_id => return Err(CoreError::NotFound("tenant")),
                _ => Some(who.tenant_id),
            }
        };
        let (from_day, to_day) = UsageQuery::window(from, to, now_millis())?;
        let q = UsageQuery {
            tenant,
            user,
            from_day,
            to_day,
        };
        let rows = match &self.usage {
            Some(repo) => repo.usage(&q).await?,
            None => Vec::new(),
        };
        Ok((q, rows))
    }

    /// Counts a request refused before it reached the pipeline (a request-rate limit) in the
    /// day's usage; the model is not known yet and is recorded as `""`.
    pub async fn count_refusal(&self, who: &Principal) {
        if let Some(repo) = &self.usage {
            let mut row = UsageRow::for_request(who, "", now_millis());
            row.rate_limited = 1;
            if let Err(err) = repo.add_usage(&row).await {
                tracing::error!(error = %err, "could not record usage");
            }
        }
    }

    /// Admits a request against the budgets; a refusal is counted in the day's usage.
    async fn admit(
        &self,
        who: &Principal,
        entry: Entry,
        spec: &ModelSpec,
        prompt: &[PromptMessage],
        max_tokens: u32,
    ) -> CoreResult<Accounting> {
        let audit = self.audit.as_ref().map(|hook| {
            let mut base = serde_json::Map::new();
            base.insert("route".into(), entry.route.into());
            base.insert("model".into(), spec.name.clone().into());
            base.insert("provider".into(), spec.provider.as_str().into());
            base.insert(
                "trust_zone".into(),
                serde_json::to_value(spec.trust_zone).unwrap_or_default(),
            );
            if let crate::entities::Credential::ApiKey { key_id, .. } = &who.credential {
                base.insert("api_key_id".into(), key_id.to_string().into());
            }
            base.insert(
                "prompt_sha256".into(),
                sha256_hex(entry.prompt_json.as_bytes()).into(),
            );
            base.insert("max_tokens".into(), max_tokens.into());
            RequestAudit {
                hook: hook.clone(),
                who: who.clone(),
                base,
                prompt: hook
                    .records_content(&who.tenant_id)
                    .then(|| entry.prompt_json.clone()),
            }
        });
        let demand = Demand {
            door: entry.door,
            model: spec.name.clone(),
            prompt_tokens: estimate_prompt_tokens(prompt),
            max_tokens: u64::from(max_tokens),
        };
        let row = UsageRow::for_request(who, &spec.name, now_millis());
        match self.quotas.reserve(who, &demand).await {
            Ok(reservation) => Ok(Accounting {
                reservation,
                usage: self.usage.clone(),
                row,
                prompt_estimate: demand.prompt_tokens,
                audit,
            }),
            Err(e) => {
                if let (Some(repo), CoreError::TooManyRequests { .. }) = (&self.usage, &e) {
                    let mut row = row;
                    row.rate_limited = 1;
                    if let Err(err) = repo.add_usage(&row).await {
                        tracing::error!(error = %err, "could not record usage");
                    }
                }
                Err(e)
            }
        }
    }

    /// The input guard, with a refusal closing the request's accounting.
    async fn guard_admitted(
        &self,
        who: &Principal,
        spec: &ModelSpec,
        prompt: Vec<PromptMessage>,
        vault: Pseudonyms,
        acct: Accounting,
    ) -> CoreResult<(Guarded, Accounting)> {
        let checked = tracing::debug_span!("guard.input", otel.kind = "internal")
            .in_scope(|| self.guard_input(who, spec, prompt, vault));
        match checked {
            Ok(g) => Ok((g, acct)),
            Err(GuardRefusal {
                categories,
                findings,
            }) => {
                if let Some(a) = &acct.audit {
                    let event = a.event(
                        SecurityEventKind::GuardBlocked,
                        serde_json::json!({
                            "stage": "input",
                            "categories": categories,
                            "findings": findings,
                        }),
                    );
                    let _ = a.hook.record(event).await;
                }
                acct.close(Consumed::default(), true).await;
                Err(CoreError::GuardBlocked { categories })
            }
        }
    }

    /// The LLM firewall every request and answer passes through.
    pub fn with_guard(mut self, guard: Arc<dyn Guard>) -> Self {
        self.guard = guard;
        self
    }

    /// Runs the input guard over the conversation (without the server's system prompt) and
    /// prepares the hardened system prompt and the output guard.
    fn guard_input(
        &self,
        who: &Principal,
        spec: &ModelSpec,
        turns: Vec<PromptMessage>,
        vault: Pseudonyms,
    ) -> Result<Guarded, GuardRefusal> {
        let scope = GuardScope {
            tenant: who.tenant_id,
            zone: spec.trust_zone,
            model: spec.name.clone(),
        };
        let mut vault = vault;
        let before = vault.len();
        let verdict = self.guard.check_input(&scope, turns, &mut vault);
        log_findings("input", &verdict.findings);
        if let Some(categories) = verdict.blocked {
            crate::telemetry::guard_blocked("input");
            tracing::warn!(categories = %categories.join(","), user = %who.user_id, "guard blocked a request");
            return Err(GuardRefusal {
                categories,
                findings: verdict.findings,
            });
        }
        let canary = new_canary();
        let system = self
            .guard
            .system_prompt(&scope, &self.policy.system_prompt, &canary);
        let changed = vault.len() != before;
        let output = self.guard.output(&scope, vault.clone(), &system, &canary);
        let mut prompt = Vec::with_capacity(verdict.messages.len() + 1);
        prompt.push(PromptMessage {
            role: Role::System,
            content: system,
        });
        prompt.extend(verdict.messages);
        Ok(Guarded {
            prompt,
            canary,
            output,
            findings: verdict.findings,
            vault: changed.then_some(vault),
        })
    }

    pub fn provider(&self) -> &Arc<dyn ChatProvider> {
        &self.provider
    }

    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    /// The models `who` may use, with the default first.
    pub fn models_for(&self, who: &Principal) -> Vec<(Arc<ModelSpec>, bool, bool)> {
        let snap = self.registry.snapshot();
        let default = snap.default_model().to_string();
        let mut out: Vec<(Arc<ModelSpec>, bool, bool)> = self
            .registry
            .usable_by(who)
            .into_iter()
            .map(|s| {
                let is_default = s.name == default;
                let available = self.provider.is_available(&s.name);
                (s, is_default, available)
            })
            .collect();
        out.sort_by_key(|(s, d, _)| (!*d, s.name.clone()));
        out
    }

    fn check_message(&self, what: &str, text: &str) -> CoreResult<()> {
        if text.trim().is_empty() {
            return Err(CoreError::validation(
                "empty_message",
                format!("{what} must not be empty"),
            ));
        }
        let chars = text.chars().count();
        if chars > self.policy.max_message_chars {
            return Err(CoreError::validation(
                "message_too_long",
                format!(
                    "{what} has {chars} characters; the limit is {}",
                    self.policy.max_message_chars
                ),
            ));
        }
        Ok(())
    }

    /// Validates, loads history, starts generation and persists the user's message.
    /// Errors before generation starts (validation, unknown session, queue full) store nothing.
    pub async fn start(&self, who: &Principal, input: ChatInput) -> CoreResult<ChatRun> {
        self.check_message("message", &input.message)?;
        let message = input.message.trim();
        let spec = self.resolve_model(who, input.model.as_deref())?;
        let params = self.params(&input.sampling, &spec)?;

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

        let system = match (&input.system_prompt, &existing) {
            (None, Some(s)) => s.system_prompt.clone(),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(CoreError::validation(
                    "system_prompt_not_here",
                    "an existing conversation's system prompt is changed with \
                     PATCH /api/chat/sessions/{id}",
                ))
            }
            (Some(text), None) => self.check_system_prompt(who, text).await?,
        };
        let mut prompt = Vec::new();
        if let Some(text) = &system {
            prompt.push(PromptMessage {
                role: Role::System,
                content: text.clone(),
            });
        }
        let mut vault = Pseudonyms::default();
        if let Some(session) = &existing {
            if let Some(v) = self.repo.load_vault(who.tenant_id, session.id).await? {
                vault = v;
            }
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
        let entry = Entry {
            door: Door::Chat,
            route: "chat",
            prompt_json: prompt_json(&[(Role::User, message)]),
        };
        let acct = self
            .admit(who, entry, &spec, &prompt, params.max_tokens)
            .await?;
        let (guarded, acct) = self.guard_admitted(who, &spec, prompt, vault, acct).await?;
        self.run(
            who,
            &spec,
            (guarded, acct),
            params,
            input.request_id,
            Some(existing.map_or_else(
                || Target::New(title_from(message), system),
                Target::Existing,
            )),
            message.to_string(),
        )
        .await
    }

    /// A whole conversation from the client (OpenAI's `/v1`): the server's system prompt comes
    /// first; client system messages need `chat:system_prompt`. Stored as a new conversation
    /// only when `input.store` says so.
    pub async fn complete(&self, who: &Principal, input: CompletionInput) -> CoreResult<ChatRun> {
        if input.messages.is_empty() {
            return Err(CoreError::validation(
                "empty_message",
                "messages must not be empty",
            ));
        }
        if input.messages.len() > self.policy.max_messages {
            return Err(CoreError::validation(
                "too_many_messages",
                format!("at most {} messages per request", self.policy.max_messages),
            ));
        }
        let spec = self.resolve_model(who, Some(&input.model))?;
        let params = self.params(&input.sampling, &spec)?;
        let mut prompt = Vec::with_capacity(input.messages.len());
        let mut last_user = None;
        for m in input.messages {
            if m.role == Role::System && !who.can(crate::access::CHAT_SYSTEM_PROMPT) {
                return Err(CoreError::denied(
                    "system_prompt_not_allowed",
                    "your role may not send system messages",
                ));
            }
            if m.content.chars().count() > self.policy.max_message_chars {
                return Err(CoreError::validation(
                    "message_too_long",
                    format!(
                        "a message is longer than {} characters",
                        self.policy.max_message_chars
                    ),
                ));
            }
            if m.role == Role::User {
                last_user = Some(m.content.clone());
            }
            prompt.push(m);
        }
        let Some(last_user) = last_user.filter(|u| !u.trim().is_empty()) else {
            return Err(CoreError::validation(
                "empty_message",
                "messages must contain a non-empty user message",
            ));
        };
        let target = input
            .store
            .then(|| Target::New(title_from(last_user.trim()), None));
        let turns: Vec<(Role, &str)> = prompt
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        let entry = Entry {
            door: Door::Api,
            route: "v1",
            prompt_json: prompt_json(&turns),
        };
        let acct = self
            .admit(who, entry, &spec, &prompt, params.max_tokens)
            .await?;
        let (guarded, acct) = self
            .guard_admitted(who, &spec, prompt, Pseudonyms::default(), acct)
            .await?;
        self.run(
            who,
            &spec,
            (guarded, acct),
            params,
            input.request_id,
            target,
            last_user,
        )
        .await
    }

    /// Starts generation; once admitted, records the conversation (when `target` is set) and
    /// spawns the pump that streams and stores the answer.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        who: &Principal,
        spec: &ModelSpec,
        (guarded, acct): (Guarded, Accounting),
        params: GenerationParams,
        request_id: String,
        target: Option<Target>,
        user_text: String,
    ) -> CoreResult<ChatRun> {
        let started = Instant::now();
        let Guarded {
            prompt,
            canary,
            output,
            findings,
            vault,
        } = guarded;
        let acct = acct.record_request(&findings).await?;
        let span = crate::telemetry::llm_span(&spec.name);
        let routed = match self
            .provider
            .generate_routed(GenerationRequest {
                model: spec.name.clone(),
                messages: prompt,
                params,
                request_id,
                cache_scope: Some(who.tenant_id.to_string()),
                tenant: Some(who.tenant_id.to_string()),
                canary: Some(canary),
            })
            .instrument(span.clone())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                span.in_scope(|| crate::telemetry::llm_failed(&spec.name, started.elapsed()));
                let extra = serde_json::json!({
                    "outcome": "error",
                    "error": error_kind(&e),
                    "latency_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
                acct.finish(extra, None, Consumed::default(), false).await;
                return Err(e.into());
            }
        };
        let computing = Instant::now();

        // Generation is admitted: from here on the conversation is recorded.
        let now = now_millis();
        let stored = target.is_some();
        let is_new = matches!(target, Some(Target::New(..)));
        let session_id = match target {
            Some(Target::Existing(s)) => s.id,
            Some(Target::New(title, system_prompt)) => {
                let s = ChatSession {
                    id: SessionId::new(),
                    tenant_id: who.tenant_id,
                    user_id: who.user_id,
                    title,
                    system_prompt,
                    created_at: now,
                    updated_at: now,
                };
                self.repo.create_session(&s).await?;
                s.id
            }
            // An unstored completion: the id is never persisted.
            None => SessionId::new(),
        };
        let user_msg = StoredMessage {
            id: MessageId::new(),
            tenant_id: who.tenant_id,
            session_id,
            role: Role::User,
            content: user_text,
            meta: None,
            created_at: now,
        };
        if stored {
            self.repo.append_message(&user_msg).await?;
            crate::telemetry::chat_message("user", &spec.name);
            if let Some(vault) = &vault {
                self.repo
                    .save_vault(who.tenant_id, session_id, vault, now)
                    .await?;
            }
        }
        // The title job is queued once the first message is stored: a runner that claimed it
        // earlier would find no message to title and end it quietly, untitled.
        if let Some(t) = self.titles.as_ref().filter(|_| is_new) {
            let job = NewJob {
                kind: TITLE_JOB.into(),
                tenant_id: Some(who.tenant_id),
                payload: serde_json::json!({
                    "user_id": who.user_id.to_string(),
                    "session_id": session_id.to_string(),
                }),
                max_attempts: t.max_attempts,
                run_at: now,
            };
            if let Err(e) = t.jobs.enqueue(&job).await {
                tracing::error!(error = ?e, "could not queue a title job");
            }
        }

        let pump = Pump {
            repo: stored.then(|| self.repo.clone()),
            tenant: who.tenant_id,
            session: session_id,
            model: routed.model.clone(),
            fallback_from: routed.fallback_from.clone(),
            cached: routed.cached,
            started,
            computing,
            output,
            input_findings: findings,
            acct,
        };
        // The answer is driven by whoever reads its events (the route's response body), inside
        // the request's model span; see `ChatEvents`.
        let events = ChatEvents::new(pump, routed.stream, span);

        Ok(ChatRun {
            session_id,
            user_message_id: user_msg.id,
            model: routed.model,
            fallback_from: routed.fallback_from,
            cached: routed.cached,
            stored,
            events,
        })
    }

    /// `chat:send` and the right to use this model.
    fn authorise(who: &Principal, spec: &ModelSpec) -> CoreResult<()> {
        if !who.can(crate::access::CHAT_SEND) {
            return Err(CoreError::denied(
                "permission_denied",
                "your role may not send chat messages",
            ));
        }
        if !may_use(who, spec) {
            return Err(CoreError::denied(
                "model_not_allowed",
                format!("you may not use the model `{}`", spec.name),
            ));
        }
        Ok(())
    }

    /// The administrators' "test connection": one tiny request to `name` exactly as users' go
    /// (registry, router, retries; no content guard on this fixed prompt, nothing stored).
    /// Returns the model that answered (another one when the fallback chain was used), the
    /// first words of the answer and the latency.
    pub async fn probe_model(
        &self,
        _grant: &Grant<ModelsManage>,
        name: &str,
        request_id: String,
    ) -> CoreResult<ModelProbe> {
        let snap = self.registry().snapshot();
        let Some(spec) = snap.get(name).cloned() else {
            return Err(CoreError::NotFound("model"));
        };
        let sampling = SamplingInput {
            max_tokens: Some(8),
            temperature: Some(0.0),
            ..SamplingInput::default()
        };
        let params = self.params(&sampling, &spec)?;
        let started = Instant::now();
        let routed = self
            .provider
            .generate_routed(GenerationRequest {
                model: spec.name.clone(),
                messages: vec![PromptMessage {
                    role: Role::User,
                    content: "Reply with the single word OK.".into(),
                }],
                params,
                request_id,
                cache_scope: None,
                tenant: None,
                canary: None,
            })
            .await?;
        let mut stream = routed.stream;
        let mut answer = String::new();
        while let Some(ev) = stream.next().await {
            match ev? {
                GenerationEvent::Text(t) => answer.push_str(&t),
                GenerationEvent::Done { .. } => {
                    return Ok(ModelProbe {
                        model: routed.model,
                        answer: answer.chars().take(80).collect(),
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

    /// One prompt, one answer, nothing stored: spec 004's scoped `generate`.
    pub async fn generate_once(
        &self,
        who: &Principal,
        prompt: &str,
        model: &str,
        max_tokens: u32,
        request_id: String,
    ) -> CoreResult<OneShot> {
        self.check_message("prompt", prompt)?;
        let prompt = prompt.trim();
        let spec = self.resolve_model(who, Some(model))?;
        let sampling = SamplingInput {
            max_tokens: Some(i64::from(max_tokens)),
            ..SamplingInput::default()
        };
        let params = self.params(&sampling, &spec)?;
        let started = Instant::now();
        let messages = vec![PromptMessage {
            role: Role::User,
            content: prompt.to_string(),
        }];
        let max_tokens = params.max_tokens;
        let entry = Entry {
            door: Door::Api,
            route: "generate",
            prompt_json: prompt_json(&[(Role::User, prompt)]),
        };
        let acct = self.admit(who, entry, &spec, &messages, max_tokens).await?;
        let (guarded, acct) = self
            .guard_admitted(who, &spec, messages, Pseudonyms::default(), acct)
            .await?;
        let Guarded {
            prompt: messages,
            canary,
            mut output,
            findings,
            ..
        } = guarded;
        let acct = acct.record_request(&findings).await?;
        let routed = match self
            .provider
            .generate_routed(GenerationRequest {
                model: spec.name.clone(),
                messages,
                params,
                request_id,
                cache_scope: Some(who.tenant_id.to_string()),
                tenant: Some(who.tenant_id.to_string()),
                canary: Some(canary),
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                crate::telemetry::llm_failed(&spec.name, started.elapsed());
                let extra = serde_json::json!({
                    "outcome": "error",
                    "error": error_kind(&e),
                    "latency_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
                acct.finish(extra, None, Consumed::default(), false).await;
                return Err(e.into());
            }
        };
        let computing = Instant::now();
        let mut used = Consumed::default();
        let result = Self::collect_one(routed.stream, output.as_mut(), &mut used).await;
        used.compute_ms = u64::try_from(computing.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (outcome, error, answer) = match &result {
            Ok(text) => ("completed", None, Some(answer_digest(text))),
            Err(CoreError::GuardBlocked { .. }) => ("guard_blocked", None, None),
            Err(CoreError::Provider(e)) => ("error", Some(error_kind(e)), None),
            Err(_) => ("error", Some("internal"), None),
        };
        crate::telemetry::llm_finished(&crate::telemetry::LlmFinished {
            model: &routed.model,
            outcome,
            prompt_tokens: used.prompt_tokens,
            completion_tokens: used.completion_tokens,
            latency: started.elapsed(),
            first_token: Some(computing.duration_since(started)),
            generating: computing.elapsed(),
            cached: routed.cached,
        });
        acct.finish(
            serde_json::json!({
                "outcome": outcome,
                "error": error,
                "answered_by": routed.model,
                "fallback_from": routed.fallback_from,
                "cached": routed.cached,
                "prompt_tokens": used.prompt_tokens,
                "completion_tokens": used.completion_tokens,
                "latency_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "answer_sha256": answer,
                "guard": output.findings(),
            }),
            result.as_ref().ok().map(String::as_str),
            used,
            matches!(result, Err(CoreError::GuardBlocked { .. })),
        )
        .await;
        let content = result?;
        Ok(OneShot {
            content,
            model: routed.model,
            tokens_used: u32::try_from(used.completion_tokens).unwrap_or(u32::MAX),
            prompt_tokens: u32::try_from(used.prompt_tokens).unwrap_or(u32::MAX),
            latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Reads a one-shot generation to its end through the output guard; `used` counts the
    /// tokens as they come (the provider's usage replaces the count at the end).
    async fn collect_one(
        mut stream: crate::provider::GenerationStream,
        output: &mut dyn OutputGuard,
        used: &mut Consumed,
    ) -> CoreResult<String> {
        let mut content = String::new();
        let take = |step: OutputStep, content: &mut String| match step {
            OutputStep::Emit(s) => {
                content.push_str(&s);
                Ok(())
            }
            OutputStep::Block(categories) => Err(CoreError::GuardBlocked { categories }),
        };
        while let Some(ev) = stream.next().await {
            match ev? {
                GenerationEvent::Text(t) => {
                    used.completion_tokens += 1;
                    take(output.push(&t), &mut content)?;
                }
                GenerationEvent::Done { usage, .. } => {
                    used.prompt_tokens = u64::from(usage.prompt_tokens);
                    used.completion_tokens = u64::from(usage.completion_tokens);
                    take(output.finish(), &mut content)?;
                    log_findings("output", &output.findings());
                    return Ok(content);
                }
            }
        }
        Err(CoreError::Provider(ProviderError::Internal(
            "the generation ended without finishing".into(),
        )))
    }

    /// The named (or default) model, if it exists and `who` may use it.
    fn resolve_model(
        &self,
        who: &Principal,
        requested: Option<&str>,
    ) -> CoreResult<Arc<ModelSpec>> {
        let snap = self.registry.snapshot();
        let name = requested.unwrap_or(snap.default_model());
        match snap.get(name) {
            Some(spec) => {
                Self::authorise(who, spec)?;
                Ok(spec.clone())
            }
            None => Err(CoreError::validation(
                "unknown_model",
                "the requested model does not exist or is not available to you",
            )),
        }
    }

    fn params(&self, input: &SamplingInput, model: &ModelSpec) -> CoreResult<GenerationParams> {
        let mut p = GenerationParams {
            max_tokens: model.default_max_tokens,
            ..GenerationParams::default()
        };
        let cap = model.max_tokens;
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

    /// Every conversation of the caller with all its messages, oldest first (spec 003's chat
    /// export). Conversations whose key was shredded are left out. Recorded in the audit trail.
    pub async fn export(
        &self,
        who: &Principal,
        format: &str,
    ) -> CoreResult<Vec<(ChatSession, Vec<StoredMessage>)>> {
        const PAGE: u32 = 100;
        let mut sessions = Vec::new();
        let mut offset = 0;
        loop {
            let (page, total) = self
                .repo
                .list_sessions(
                    who.tenant_id,
                    who.user_id,
                    SessionSort::CreatedAsc,
                    PAGE,
                    offset,
                )
                .await?;
            let n = page.len() as u32;
            sessions.extend(page.into_iter().map(|o| o.session));
            offset += n;
            if n < PAGE || u64::from(offset) >= total {
                break;
            }
        }
        let mut out = Vec::with_capacity(sessions.len());
        for session in sessions {
            let mut messages: Vec<StoredMessage> = Vec::new();
            let mut before = None;
            let destroyed = loop {
                match self
                    .repo
                    .list_messages(who.tenant_id, session.id, before, 200)
                    .await
                {
                    Ok((page, more)) => {
                        before = page.first().map(|m| m.id);
                        let mut page = page;
                        page.append(&mut messages);
                        messages = page;
                        if !more {
                            break false;
                        }
                    }
                    Err(CoreError::DataDestroyed) => break true,
                    Err(e) => return Err(e),
                }
            };
            if !destroyed {
                out.push((session, messages));
            }
        }
        self.audit_event(
            SecurityEvent::new(SecurityEventKind::ConversationsExported)
                .caller(who)
                .detail(serde_json::json!({ "format": format, "conversations": out.len() })),
        )
        .await;
        Ok(out)
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

    /// Checks a conversation's system prompt: the caller's permission, its size and form, and
    /// the input guard (an injection planted there would otherwise ride along with every
    /// message). `Ok(None)`: empty, i.e. no system prompt.
    async fn check_system_prompt(&self, who: &Principal, text: &str) -> CoreResult<Option<String>> {
        if !who.can(crate::access::CHAT_SYSTEM_PROMPT) {
            return Err(CoreError::denied(
                "system_prompt_not_allowed",
                "your role may not set a system prompt",
            ));
        }
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let chars = text.chars().count();
        if chars > MAX_SYSTEM_PROMPT_CHARS {
            return Err(CoreError::validation(
                "system_prompt_too_long",
                format!(
                    "the system prompt has {chars} characters; the limit is \
                     {MAX_SYSTEM_PROMPT_CHARS}"
                ),
            ));
        }
        if text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        {
            return Err(CoreError::validation(
                "invalid_system_prompt",
                "the system prompt may not contain control characters",
            ));
        }
        let spec = self.resolve_model(who, None)?;
        let scope = GuardScope {
            tenant: who.tenant_id,
            zone: spec.trust_zone,
            model: spec.name.clone(),
        };
        let verdict = self.guard.check_input(
            &scope,
            vec![PromptMessage {
                role: Role::System,
                content: text.to_string(),
            }],
            &mut Pseudonyms::default(),
        );
        log_findings("system prompt", &verdict.findings);
        if let Some(categories) = verdict.blocked {
            crate::telemetry::guard_blocked("system prompt");
            self.audit_event(
                SecurityEvent::new(SecurityEventKind::GuardBlocked)
                    .caller(who)
                    .detail(serde_json::json!({
                        "stage": "system_prompt",
                        "categories": categories,
                        "findings": verdict.findings,
                    })),
            )
            .await;
            return Err(CoreError::GuardBlocked { categories });
        }
        Ok(Some(text.to_string()))
    }

    /// Sets or (with `""`) removes a conversation's system prompt.
    pub async fn set_system_prompt(
        &self,
        who: &Principal,
        session: SessionId,
        text: &str,
    ) -> CoreResult<()> {
        let text = self.check_system_prompt(who, text).await?;
        if self
            .repo
            .set_session_system_prompt(
                who.tenant_id,
                who.user_id,
                session,
                text.as_deref(),
                now_millis(),
            )
            .await?
        {
            self.audit_event(
                SecurityEvent::new(SecurityEventKind::SystemPromptChanged)
                    .caller(who)
                    .detail(serde_json::json!({
                        "session_id": session.to_string(),
                        "cleared": text.is_none(),
                        "sha256": text.as_deref().map(answer_digest),
                    })),
            )
            .await;
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

impl ChatService {
    /// The `conversation_title` job: asks the title model for a title of the conversation's
    /// first message and sets it, unless the user renamed the conversation meanwhile. A
    /// conversation gone, or a first message the guard refuses, ends the job quietly.
    async fn write_title(&self, job: &Job) -> Result<(), String> {
        let Some(t) = &self.titles else {
            return Err("title generation is off".into());
        };
        let tenant = job.tenant_id.ok_or("the job names no tenant")?;
        let field = |k: &str| -> Result<String, String> {
            job.payload[k]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("the job has no {k}"))
        };
        let user: crate::ids::UserId = field("user_id")?
            .parse()
            .map_err(|_| "bad user id in the job".to_string())?;
        let sid: SessionId = field("session_id")?
            .parse()
            .map_err(|_| "bad session id in the job".to_string())?;
        let hide = |e: CoreError| match e {
            CoreError::Storage(_) | CoreError::StorageUnavailable(_) | CoreError::Internal(_) => {
                "storage error".to_string()
            }
            other => other.to_string(),
        };
        let Some(session) = self
            .repo
            .get_session(tenant, user, sid)
            .await
            .map_err(hide)?
        else {
            return Ok(());
        };
        let (history, _) = self
            .repo
            .list_messages(tenant, sid, None, 20)
            .await
            .map_err(hide)?;
        let Some(first) = history.iter().find(|m| m.role == Role::User) else {
            return Ok(());
        };
        if session.title != title_from(&first.content) {
            return Ok(()); // renamed by the user
        }
        let spec = self
            .registry
            .snapshot()
            .get(&t.model)
            .cloned()
            .ok_or_else(|| format!("the title model `{}` is not in the registry", t.model))?;
        let scope = GuardScope {
            tenant,
            zone: spec.trust_zone,
            model: spec.name.clone(),
        };
        let ask = format!("Title this conversation: {}", first.content);
        let verdict = self.guard.check_input(
            &scope,
            vec![PromptMessage {
                role: Role::User,
                content: ask,
            }],
            &mut Pseudonyms::default(),
        );
        if verdict.blocked.is_some() {
            return Ok(());
        }
        let mut messages = vec![PromptMessage {
            role: Role::System,
            content: "Reply with a title of at most six words for the conversation the user                       describes. Reply with the title only."
                .into(),
        }];
        messages.extend(verdict.messages);
        let prompt_sha256 = {
            let turns: Vec<(Role, &str)> = messages
                .iter()
                .map(|m| (m.role, m.content.as_str()))
                .collect();
            prompt_digest(&turns)
        };
        let request_id = format!("job-{}", job.id);
        let event = |kind: SecurityEventKind, extra: serde_json::Value| {
            let mut detail = serde_json::json!({
                "route": "title",
                "model": spec.name,
                "provider": spec.provider.as_str(),
                "job_id": job.id,
                "session_id": sid.to_string(),
                "prompt_sha256": prompt_sha256,
            });
            if let (Some(d), serde_json::Value::Object(m)) = (detail.as_object_mut(), extra) {
                d.extend(m);
            }
            let mut e = SecurityEvent::new(kind).user(tenant, user).detail(detail);
            e.request_id = Some(request_id.clone());
            e
        };
        if let Some(hook) = &self.audit {
            if let Err(e) = hook
                .record(event(
                    SecurityEventKind::LlmRequest,
                    serde_json::Value::Null,
                ))
                .await
            {
                if hook.fail_closed {
                    return Err(format!("the audit trail is unavailable: {}", hide(e)));
                }
            }
        }
        let started = Instant::now();
        let result = async {
            let routed = self
                .provider
                .generate_routed(GenerationRequest {
                    model: spec.name.clone(),
                    messages,
                    params: GenerationParams {
                        max_tokens: 16,
                        temperature: 0.0,
                        ..GenerationParams::default()
                    },
                    request_id: request_id.clone(),
                    cache_scope: Some(tenant.to_string()),
                    tenant: Some(tenant.to_string()),
                    canary: None,
                })
                .await?;
            let mut text = String::new();
            let mut stream = routed.stream;
            while let Some(ev) = stream.next().await {
                match ev? {
                    GenerationEvent::Text(t) => text.push_str(&t),
                    GenerationEvent::Done { .. } => break,
                }
            }
            Ok::<String, ProviderError>(text)
        }
        .await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let outcome = match &result {
            Ok(text) => {
                serde_json::json!({ "outcome": "completed", "answer_sha256": answer_digest(text), "latency_ms": latency_ms })
            }
            Err(e) => {
                serde_json::json!({ "outcome": "error", "error": error_kind(e), "latency_ms": latency_ms })
            }
        };
        self.audit_event(event(SecurityEventKind::LlmResult, outcome))
            .await;
        let text = result.map_err(|e| format!("the title model failed: {e}"))?;
        let title: String = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .trim_matches(|c: char| c == '"' || c == '\'' || c == '*' || c == '#')
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(60)
            .collect();
        if title.is_empty() {
            return Ok(());
        }
        self.repo
            .rename_session(tenant, user, sid, &title, now_millis())
            .await
            .map_err(hide)?;
        Ok(())
    }
}

/// The `conversation_title` job handler.
pub struct TitleJob(pub Arc<ChatService>);

#[async_trait::async_trait]
impl JobHandler for TitleJob {
    fn kind(&self) -> &'static str {
        TITLE_JOB
    }

    async fn run(&self, job: &Job) -> Result<(), String> {
        self.0.write_title(job).await
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
    /// `None` for a completion that is not stored.
    repo: Option<Arc<dyn ChatRepository>>,
    tenant: crate::ids::TenantId,
    session: SessionId,
    model: String,
    fallback_from: Option<String>,
    cached: bool,
    started: Instant,
    /// When the engine or upstream took the request (compute time is measured from here).
    computing: Instant,
    output: Box<dyn OutputGuard>,
    input_findings: Vec<FindingSummary>,
    acct: Accounting,
}

/// The events of a running chat, made as they are read.
///
/// The generation is driven inside the reader's own task (the route's response body or
/// WebSocket loop): each read polls the model's stream, passes what it says through the output
/// guard and hands back the next event. No task and no channel sit between the model and the
/// client, so an answer costs no spawn and no wake-up of another thread (a pump task per
/// answer woke the other runtime worker for most requests; bench/README.md, session 33).
///
/// Dropping it before the end (a client gone) cancels the generation, and the rest (the audit
/// record, usage, the partial answer stored, marked cancelled) runs to its end in a task of its
/// own. Reading is cancel-safe: everything in flight lives here, not in the read's future.
pub struct ChatEvents {
    state: PumpState,
    /// Events made and not yet read (at most the last token and the final event).
    ready: std::collections::VecDeque<ChatEvent>,
    /// The request's model span, entered while the generation is polled and closed with this
    /// (or with the task that finishes an abandoned answer).
    span: tracing::Span,
}

type Finishing = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<ChatEvent>> + Send>>;

enum PumpState {
    /// Tokens are flowing.
    Streaming(Box<Streaming>),
    /// The answer is over: stored, audited and accounted before its last event.
    Finishing(Finishing),
    /// The last event was made.
    Done,
}

/// What a streaming answer holds.
struct Streaming {
    pump: Pump,
    stream: crate::provider::GenerationStream,
    content: String,
    meta: GenerationMeta,
}

/// How the model's stream ended.
struct Ended {
    failure: Option<ProviderError>,
    blocked: Option<Vec<String>>,
}

impl std::fmt::Debug for ChatEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            PumpState::Streaming(_) => "streaming",
            PumpState::Finishing(_) => "finishing",
            PumpState::Done => "done",
        };
        f.debug_struct("ChatEvents")
            .field("state", &state)
            .field("ready", &self.ready.len())
            .finish()
    }
}

impl ChatEvents {
    fn new(pump: Pump, stream: crate::provider::GenerationStream, span: tracing::Span) -> Self {
        let meta = GenerationMeta {
            model: pump.model.clone(),
            fallback_from: pump.fallback_from.clone(),
            cached: pump.cached,
            ..GenerationMeta::default()
        };
        ChatEvents {
            state: PumpState::Streaming(Box::new(Streaming {
                pump,
                stream,
                content: String::new(),
                meta,
            })),
            ready: std::collections::VecDeque::new(),
            span,
        }
    }

    /// The next event; `None` after the last one (`Finished`, `Failed` or `Blocked`).
    pub async fn recv(&mut self) -> Option<ChatEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event, driving the generation and then its end.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ChatEvent>> {
        use std::task::Poll;
        let ChatEvents { state, ready, span } = self;
        let _entered = span.enter();
        loop {
            if let Some(event) = ready.pop_front() {
                return Poll::Ready(Some(event));
            }
            match state {
                PumpState::Done => return Poll::Ready(None),
                PumpState::Streaming(s) => {
                    let next = match s.stream.poll_next_unpin(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(next) => next,
                    };
                    let Some(ended) = s.step(next, ready) else {
                        continue;
                    };
                    if let PumpState::Streaming(s) = std::mem::replace(state, PumpState::Done) {
                        *state = PumpState::Finishing(s.end(ended, false));
                    }
                }
                PumpState::Finishing(f) => match f.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(events) => {
                        ready.extend(events);
                        *state = PumpState::Done;
                    }
                },
            }
        }
    }
}

impl Drop for ChatEvents {
    /// A reader that stops before the end: the generation is cancelled (its stream dropped)
    /// and the answer's end is written in a task of its own.
    fn drop(&mut self) {
        let rest: Finishing = match std::mem::replace(&mut self.state, PumpState::Done) {
            PumpState::Done => return,
            PumpState::Streaming(s) => s.end(
                Ended {
                    failure: None,
                    blocked: None,
                },
                true,
            ),
            PumpState::Finishing(f) => f,
        };
        let span = std::mem::replace(&mut self.span, tracing::Span::none());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(rest.instrument(span));
            }
            Err(_) => {
                tracing::error!("a chat was dropped outside the runtime: its end is not recorded");
            }
        }
    }
}

impl Streaming {
    /// Ends the generation (dropping its stream cancels it in the provider) and returns the
    /// answer's end: stored, audited and accounted, then its last events.
    fn end(self: Box<Self>, ended: Ended, client_gone: bool) -> Finishing {
        let Streaming {
            pump,
            stream,
            content,
            meta,
        } = *self;
        drop(stream);
        Box::pin(pump.finish(content, meta, ended.failure, ended.blocked, client_gone))
    }

    /// Takes one item of the model's stream: a token shown (queued in `ready`), held back by
    /// the output guard, or the end of the stream.
    fn step(
        &mut self,
        next: Option<Result<GenerationEvent, ProviderError>>,
        ready: &mut std::collections::VecDeque<ChatEvent>,
    ) -> Option<Ended> {
        let mut shown_now = |shown: String, content: &mut String| {
            if !shown.is_empty() {
                content.push_str(&shown);
                ready.push_back(ChatEvent::Token(shown));
            }
        };
        match next {
            Some(Ok(GenerationEvent::Text(t))) => {
                self.meta.completion_tokens += 1;
                match self.pump.output.push(&t) {
                    OutputStep::Emit(shown) => {
                        shown_now(shown, &mut self.content);
                        None
                    }
                    OutputStep::Block(categories) => Some(Ended {
                        failure: None,
                        blocked: Some(categories),
                    }),
                }
            }
            Some(Ok(GenerationEvent::Done {
                finish_reason,
                usage,
                truncated_turns,
            })) => {
                self.meta.finish_reason = finish_reason.as_str().into();
                self.meta.prompt_tokens = usage.prompt_tokens;
                self.meta.completion_tokens = usage.completion_tokens;
                self.meta.truncated_turns = truncated_turns;
                let blocked = match self.pump.output.finish() {
                    OutputStep::Emit(shown) => {
                        shown_now(shown, &mut self.content);
                        None
                    }
                    OutputStep::Block(categories) => Some(categories),
                };
                Some(Ended {
                    failure: None,
                    blocked,
                })
            }
            Some(Err(e)) => Some(Ended {
                failure: Some(e),
                blocked: None,
            }),
            None => Some(Ended {
                failure: Some(ProviderError::Internal(
                    "stream ended without result".into(),
                )),
                blocked: None,
            }),
        }
    }
}

impl Pump {
    /// Stores and audits the answer once generation is over; returns the events left to
    /// show (the held-back text of a failed answer, then the last event).
    async fn finish(
        mut self,
        mut content: String,
        mut meta: GenerationMeta,
        failure: Option<ProviderError>,
        mut blocked: Option<Vec<String>>,
        client_gone: bool,
    ) -> Vec<ChatEvent> {
        let mut events = Vec::with_capacity(2);
        // A failed generation still shows what it produced: the held-back window is checked
        // in full and released.
        if failure.is_some() && blocked.is_none() && !client_gone {
            match self.output.finish() {
                OutputStep::Emit(shown) => {
                    if !shown.is_empty() {
                        content.push_str(&shown);
                        events.push(ChatEvent::Token(shown));
                    }
                }
                OutputStep::Block(categories) => blocked = Some(categories),
            }
        }
        let output_findings = self.output.findings();
        log_findings("output", &output_findings);
        let output_findings_for_audit = output_findings.clone();
        meta.guard = std::mem::take(&mut self.input_findings);
        meta.guard.extend(output_findings);
        if let Some(categories) = &blocked {
            tracing::warn!(categories = %categories.join(","), session = %self.session, "guard cut an answer");
            meta.finish_reason = "guard_blocked".into();
            meta.partial = true;
        } else if client_gone {
            meta.finish_reason = "cancelled".into();
            meta.partial = true;
        } else if failure.is_some() {
            meta.finish_reason = "error".into();
            meta.partial = true;
        }
        meta.latency_ms = self.started.elapsed().as_millis() as u64;
        let used = Consumed {
            prompt_tokens: u64::from(meta.prompt_tokens),
            completion_tokens: u64::from(meta.completion_tokens),
            compute_ms: u64::try_from(self.computing.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let acct = self.acct;
        let outcome = if blocked.is_some() {
            "guard_blocked"
        } else if client_gone {
            "cancelled"
        } else if failure.is_some() {
            "error"
        } else {
            "completed"
        };
        crate::telemetry::llm_finished(&crate::telemetry::LlmFinished {
            model: &meta.model,
            outcome,
            prompt_tokens: u64::from(meta.prompt_tokens),
            completion_tokens: u64::from(meta.completion_tokens),
            latency: self.started.elapsed(),
            first_token: Some(self.computing.duration_since(self.started)),
            generating: self.computing.elapsed(),
            cached: meta.cached,
        });
        if blocked.is_some() {
            crate::telemetry::guard_blocked("output");
        }
        acct.finish(
            serde_json::json!({
                "outcome": outcome,
                "error": failure.as_ref().map(error_kind),
                "finish_reason": meta.finish_reason,
                "answered_by": meta.model,
                "fallback_from": meta.fallback_from,
                "cached": meta.cached,
                "session_id": self.repo.is_some().then(|| self.session.to_string()),
                "prompt_tokens": meta.prompt_tokens,
                "completion_tokens": meta.completion_tokens,
                "latency_ms": meta.latency_ms,
                "answer_sha256": answer_digest(&content),
                "guard": output_findings_for_audit,
            }),
            Some(&content),
            used,
            blocked.is_some(),
        )
        .await;

        let stored_model = meta.model.clone();
        let stored = StoredMessage {
            id: MessageId::new(),
            tenant_id: self.tenant,
            session_id: self.session,
            role: Role::Assistant,
            content,
            meta: Some(meta),
            created_at: now_millis(),
        };
        let saved = match &self.repo {
            None => true,
            Some(repo) => match repo.append_message(&stored).await {
                Ok(()) => {
                    crate::telemetry::chat_message("assistant", &stored_model);
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, session = %self.session, "could not store the assistant message");
                    false
                }
            },
        };
        let event = match (failure, blocked) {
            (_, Some(categories)) => ChatEvent::Blocked {
                categories,
                stored: saved.then(|| Box::new(stored)),
            },
            (Some(error), None) => ChatEvent::Failed {
                error,
                stored: saved.then(|| Box::new(stored)),
            },
            (None, None) if saved => ChatEvent::Finished(Box::new(stored)),
            // The answer was made but could not be stored (the database is away): a
            // transient failure the client may retry (503), not a model error.
            (None, None) => ChatEvent::Failed {
                error: ProviderError::Unavailable(
                    "the answer could not be stored; try again shortly".into(),
                ),
                stored: None,
            },
        };
        events.push(event);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::title_from;

    #[test]
    fn the_prompt_json_is_the_compact_text_of_its_turns() {
        use crate::provider::Role;
        // Quotes, escapes, control characters and non-ASCII text, as `Display` writes them.
        let tricky = "say \"hi\"\n\t\u{1}\u{7f} é€😀 </script>";
        let turns = [(Role::System, "be brief"), (Role::User, tricky)];
        let expected = serde_json::json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": tricky},
        ])
        .to_string();
        assert_eq!(super::prompt_json(&turns), expected);
        assert_eq!(
            super::prompt_digest(&turns),
            super::sha256_hex(expected.as_bytes())
        );
    }

    #[test]
    fn titles() {
        assert_eq!(title_from("Hello\nworld"), "Hello");
        assert_eq!(title_from(&"x".repeat(80)).chars().count(), 61);
    }
}
