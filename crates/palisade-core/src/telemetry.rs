//! The chat pipeline's measurements (model requests, tokens, time to first token, guard
//! findings, jobs), recorded through the `metrics` facade. The binary installs the Prometheus
//! exporter; without one every call is a no-op. Labels are bounded: model names come from the
//! registry, categories and actions from the guard's fixed vocabulary, never from user input.

use std::time::Duration;

use crate::guard::FindingSummary;

/// How one model request ended, for `palisade_llm_*` and spec 003's `llm_response_time_seconds`.
pub(crate) struct LlmFinished<'a> {
    /// The registry name of the model that answered (or was asked, when none answered).
    pub model: &'a str,
    /// `completed`, `guard_blocked`, `cancelled`, `error`.
    pub outcome: &'static str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// From admission to the end.
    pub latency: Duration,
    /// From admission to the first event of the answer (`None`: no answer started).
    pub first_token: Option<Duration>,
    /// From the first event to the end.
    pub generating: Duration,
    pub cached: bool,
}

/// The span of one model request, from routing to the end of the answer (exported as a trace
/// span when trace export is on; no content, only the model, the outcome and the counts).
pub(crate) fn llm_span(model: &str) -> tracing::Span {
    tracing::debug_span!(
        "llm.generate",
        otel.kind = "internal",
        gen_ai.request.model = %model,
        gen_ai.response.model = tracing::field::Empty,
        outcome = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        time_to_first_token_ms = tracing::field::Empty,
        cached = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// Writes how a request ended into the current span (the request's `llm.generate`).
fn record_span(f: &LlmFinished<'_>) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("gen_ai.response.model", f.model);
    span.record("outcome", f.outcome);
    span.record("gen_ai.usage.input_tokens", f.prompt_tokens);
    span.record("gen_ai.usage.output_tokens", f.completion_tokens);
    span.record("cached", f.cached);
    if let Some(t) = f.first_token {
        span.record(
            "time_to_first_token_ms",
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
        );
    }
    if f.outcome == "error" {
        span.record("otel.status_code", "ERROR");
    }
}

pub(crate) fn llm_finished(f: &LlmFinished<'_>) {
    record_span(f);
    let model = f.model.to_string();
    metrics::counter!(
        "palisade_llm_requests_total",
        "model" => model.clone(),
        "outcome" => f.outcome
    )
    .increment(1);
    metrics::histogram!("llm_response_time_seconds", "model" => model.clone())
        .record(f.latency.as_secs_f64());
    metrics::counter!("palisade_llm_tokens_total", "model" => model.clone(), "kind" => "prompt")
        .increment(f.prompt_tokens);
    metrics::counter!(
        "palisade_llm_tokens_total",
        "model" => model.clone(),
        "kind" => "completion"
    )
    .increment(f.completion_tokens);
    if f.cached {
        return;
    }
    if let Some(t) = f.first_token {
        metrics::histogram!("palisade_llm_time_to_first_token_seconds", "model" => model.clone())
            .record(t.as_secs_f64());
    }
    let secs = f.generating.as_secs_f64();
    if f.completion_tokens > 1 && secs > 0.0 {
        metrics::histogram!("palisade_llm_tokens_per_second", "model" => model)
            .record(f.completion_tokens as f64 / secs);
    }
}

/// A model request that failed before any answer started (routing, provider refusal).
pub(crate) fn llm_failed(model: &str, latency: Duration) {
    llm_finished(&LlmFinished {
        model,
        outcome: "error",
        prompt_tokens: 0,
        completion_tokens: 0,
        latency,
        first_token: None,
        generating: Duration::ZERO,
        cached: false,
    });
}

/// Spec 003's `chat_messages_total{role, model}`: a stored message of a conversation.
pub(crate) fn chat_message(role: &'static str, model: &str) {
    metrics::counter!("chat_messages_total", "role" => role, "model" => model.to_string())
        .increment(1);
}

/// Every finding of one guard pass, by stage (`input`, `output`, `system prompt`), category and
/// the action the policy chose.
pub(crate) fn guard_findings(stage: &'static str, findings: &[FindingSummary]) {
    for f in findings {
        metrics::counter!(
            "palisade_guard_findings_total",
            "stage" => stage,
            "category" => f.category.clone(),
            "action" => f.action.as_str()
        )
        .increment(1);
    }
}

/// A request or answer the guard refused (input, system prompt) or cut (output).
pub(crate) fn guard_blocked(stage: &'static str) {
    metrics::counter!("palisade_guard_blocks_total", "stage" => stage).increment(1);
}

/// A background job's attempt: `done`, `retry` or `dead`.
pub(crate) fn job_attempt(kind: &str, outcome: &'static str) {
    metrics::counter!(
        "palisade_jobs_total",
        "kind" => kind.to_string(),
        "outcome" => outcome
    )
    .increment(1);
    // Every kind that ran has a dead-letter series, zero until one dies.
    metrics::counter!("palisade_jobs_dead_letters_total", "kind" => kind.to_string())
        .increment(u64::from(outcome == "dead"));
}
