//! The provider router: the one `ChatProvider` the chat pipeline talks to.
//!
//! For a request naming model `m` it walks `m`'s chain (the model, then its fallbacks). For
//! each candidate: skip it when its upstream's circuit is open; fit the conversation into its
//! window (estimated tokens; the local engine counts with its own tokenizer); send the request,
//! retrying with back-off while no token has arrived; wait for the first event under the
//! first-token timeout. The first candidate that produces an event answers; later failures
//! arrive inside the stream (there is no fallback after the first token: the client has
//! already seen text). Deterministic requests may be answered from the response cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use palisade_core::models::ModelRegistry;
use palisade_core::provider::{
    CacheCounters, ChatProvider, GenerationEvent, GenerationRequest, GenerationStream, ModelInfo,
    ProviderError, RoutedStream, Usage,
};
use palisade_types::models::{ModelSpec, ProviderKind};
use rand::Rng;

use crate::breaker::{Admission, Breaker};
use crate::cache::{CachedAnswer, ResponseCache};
use crate::estimate;
use crate::ollama::OllamaUpstream;
use crate::openai::OpenAiUpstream;
use crate::upstream::{http_client_with, TlsMaterial, Upstream, UpstreamRequest};

/// Resolves a credential reference (`env::NAME`, `file::PATH`) to the secret.
pub type SecretResolver = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Router-wide settings.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Consecutive failures that open an upstream's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit fails fast before a probe is let through.
    pub breaker_cooldown: Duration,
    /// First retry delay; doubles each retry (with jitter).
    pub retry_backoff: Duration,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(200),
        }
    }
}

/// A candidate that produced its first event.
struct Started {
    first: GenerationEvent,
    rest: GenerationStream,
    /// Turns dropped to fit the window, and the prompt's estimated tokens (remote models).
    truncated: u32,
    prompt_estimate: u32,
    breaker: Arc<Breaker>,
}

/// A built client for one registry entry; rebuilt when the entry changes.
struct Built {
    spec: Arc<ModelSpec>,
    upstream: Arc<dyn Upstream>,
}

pub struct Router {
    registry: Arc<ModelRegistry>,
    local: Option<Arc<dyn ChatProvider>>,
    resolver: SecretResolver,
    settings: RouterSettings,
    cache: Option<Arc<ResponseCache>>,
    clients: Mutex<HashMap<String, Built>>,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
}

/// Where a failure leaves the chain walk.
fn worth_fallback(e: &ProviderError) -> bool {
    matches!(
        e,
        ProviderError::Unavailable(_)
            | ProviderError::Timeout(_)
            | ProviderError::Overloaded { .. }
            | ProviderError::Internal(_)
            | ProviderError::UnknownModel
    )
}

fn worth_retry(e: &ProviderError) -> bool {
    match e {
        ProviderError::Unavailable(_) | ProviderError::Timeout(_) => true,
        ProviderError::Overloaded { retry_after_secs } => *retry_after_secs <= 2,
        _ => false,
    }
}

impl Router {
    pub fn new(
        registry: Arc<ModelRegistry>,
        local: Option<Arc<dyn ChatProvider>>,
        resolver: SecretResolver,
        settings: RouterSettings,
    ) -> Self {
        Self {
            registry,
            local,
            resolver,
            settings,
            cache: None,
            clients: Mutex::new(HashMap::new()),
            breakers: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_cache(mut self, cache: Arc<ResponseCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// The breaker of an upstream server (local engine: one breaker).
    fn breaker(&self, spec: &ModelSpec) -> Arc<Breaker> {
        let key = match spec.provider {
            ProviderKind::Local => "local".to_string(),
            _ => format!(
                "{}|{}",
                spec.provider.as_str(),
                spec.base_url.as_deref().unwrap_or_default()
            ),
        };
        let mut map = match self.breakers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        map.entry(key)
            .or_insert_with(|| {
                Arc::new(Breaker::new(
                    self.settings.breaker_failures,
                    self.settings.breaker_cooldown,
                ))
            })
            .clone()
    }

    /// Reads the CA and client certificate files and resolves the client key of an entry.
    /// Errors name the entry and the setting, never a file's content.
    fn tls_material(&self, spec: &ModelSpec) -> Result<TlsMaterial, ProviderError> {
        let t = &spec.tls;
        let fail = |what: &str, detail: String| {
            tracing::error!(model = %spec.name, setting = what, error = %detail, "upstream TLS setting cannot be read");
            ProviderError::Internal(format!("`{what}` of `{}` cannot be read", spec.name))
        };
        let read = |what: &str, path: &str| {
            std::fs::read(path).map_err(|e| fail(what, format!("{path}: {e}")))
        };
        let ca_pem = match &t.ca_cert {
            Some(p) => Some(read("tls.ca_cert", p)?),
            None => None,
        };
        let identity_pem = match (&t.client_cert, &t.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read("tls.client_cert", cert)?;
                let key = (self.resolver)(key).map_err(|e| fail("tls.client_key", e))?;
                pem.push(b'\n');
                pem.extend_from_slice(key.as_bytes());
                pem.push(b'\n');
                Some(pem)
            }
            _ => None,
        };
        Ok(TlsMaterial {
            ca_pem,
            ca_only: t.ca_only,
            identity_pem,
            http2: t.http2,
        })
    }

    /// The client of a remote entry, built on first use and after every change of the entry.
    fn upstream(&self, spec: &Arc<ModelSpec>) -> Result<Arc<dyn Upstream>, ProviderError> {
        let mut map = match self.clients.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(b) = map.get(&spec.name) {
            if *b.spec == **spec {
                return Ok(b.upstream.clone());
            }
        }
        let key = match &spec.api_key {
            Some(r) => Some((self.resolver)(r).map_err(|e| {
                tracing::error!(model = %spec.name, error = %e, "upstream credential cannot be resolved");
                ProviderError::Internal(format!("credential of `{}` cannot be resolved", spec.name))
            })?),
            None => None,
        };
        let base = spec.base_url.as_deref().unwrap_or_default();
        let connect = Duration::from_millis(spec.timeouts.connect_ms);
        let tls = self.tls_material(spec)?;
        let http = http_client_with(connect, &tls).map_err(|e| {
            tracing::error!(model = %spec.name, error = %e, "upstream TLS settings cannot be used");
            ProviderError::Internal(format!("TLS settings of `{}` cannot be used", spec.name))
        })?;
        let upstream: Arc<dyn Upstream> = match spec.provider {
            ProviderKind::Openai => Arc::new(OpenAiUpstream::with_client(base, key, http)),
            ProviderKind::Ollama => Arc::new(OllamaUpstream::with_client(base, key, http)),
            ProviderKind::Local => {
                return Err(ProviderError::Internal(
                    "a local model has no upstream".into(),
                ))
            }
        };
        map.insert(
            spec.name.clone(),
            Built {
                spec: spec.clone(),
                upstream: upstream.clone(),
            },
        );
        Ok(upstream)
    }

    /// Starts one candidate and waits for its first event.
    async fn try_model(
        &self,
        spec: &Arc<ModelSpec>,
        req: &GenerationRequest,
    ) -> Result<Started, ProviderError> {
        let mut params = req.params.clone();
        params.max_tokens = params.max_tokens.min(spec.max_tokens);
        let first_token = Duration::from_millis(spec.timeouts.first_token_ms);
        let breaker = self.breaker(spec);

        let mut messages = req.messages.clone();
        let (truncated, prompt_estimate) = match spec.provider {
            // The engine fits the prompt with its own tokenizer and reports it.
            ProviderKind::Local => (0, 0),
            _ => {
                let reserve = params.max_tokens.min(spec.context_size / 2);
                let dropped = estimate::fit(&mut messages, spec.context_size, reserve)?;
                (dropped, estimate::estimate_messages(&messages))
            }
        };

        let mut attempt = 0u32;
        loop {
            if breaker.admit() == Admission::Rejected {
                return Err(ProviderError::Unavailable(format!(
                    "circuit open for `{}`",
                    spec.name
                )));
            }
            let started = self.start_once(spec, req, &messages, &params);
            let outcome = tokio::time::timeout(first_token, async {
                let mut stream = started.await?;
                match stream.next().await {
                    Some(Ok(ev)) => Ok((stream, ev)),
                    Some(Err(e)) => Err(e),
                    None => Err(ProviderError::Unavailable(
                        "the upstream ended without an answer".into(),
                    )),
                }
            })
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::Timeout(format!(
                    "no first token from `{}` within {} ms",
                    spec.name, spec.timeouts.first_token_ms
                )))
            });
            match outcome {
                Ok((rest, first)) => {
                    breaker.success();
                    return Ok(Started {
                        rest,
                        first,
                        truncated,
                        prompt_estimate,
                        breaker,
                    });
                }
                Err(e) => {
                    // The embedded engine's first token waits behind its own queue: a timeout
                    // there means "busy", not "broken". Counting it would open the circuit and
                    // turn a burst of load into 503s for everyone for the whole cooldown, and
                    // retrying would only queue the request again.
                    let local_wait = spec.provider == ProviderKind::Local
                        && matches!(e, ProviderError::Timeout(_));
                    // Client errors say nothing about the upstream's health.
                    if worth_fallback(&e)
                        && !matches!(e, ProviderError::Overloaded { .. })
                        && !local_wait
                    {
                        breaker.failure();
                    }
                    tracing::warn!(model = %spec.name, attempt, error = %e, detail = ?e, "model call failed before the first token");
                    if attempt >= spec.max_retries || !worth_retry(&e) || local_wait {
                        return Err(e);
                    }
                    let base = self.settings.retry_backoff.as_millis() as u64;
                    let delay = base.saturating_mul(1 << attempt.min(6));
                    let jitter = rand::thread_rng().gen_range(0..=delay / 2 + 1);
                    tokio::time::sleep(Duration::from_millis(delay + jitter)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn start_once(
        &self,
        spec: &Arc<ModelSpec>,
        req: &GenerationRequest,
        messages: &[palisade_core::provider::PromptMessage],
        params: &palisade_core::provider::GenerationParams,
    ) -> Result<GenerationStream, ProviderError> {
        match spec.provider {
            ProviderKind::Local => {
                let local = self.local.as_ref().ok_or_else(|| {
                    ProviderError::Unavailable("the embedded engine is not running".into())
                })?;
                // The engine knows its model under its own name.
                let engine_model = local
                    .models()
                    .into_iter()
                    .next()
                    .map(|m| m.name)
                    .unwrap_or_default();
                local
                    .generate(GenerationRequest {
                        model: engine_model,
                        messages: messages.to_vec(),
                        params: params.clone(),
                        request_id: req.request_id.clone(),
                        cache_scope: None,
                        tenant: req.tenant.clone(),
                        canary: None,
                    })
                    .await
            }
            _ => {
                let upstream = self.upstream(spec)?;
                upstream
                    .start(&UpstreamRequest {
                        model: spec.upstream_id().to_string(),
                        messages: messages.to_vec(),
                        params: params.clone(),
                        request_id: req.request_id.clone(),
                    })
                    .await
            }
        }
    }

    /// The answer stream after the first event: whole-request deadline, a stall limit between
    /// events, usage estimates when the upstream gives none, breaker accounting of mid-stream
    /// failures, and storing the answer in the cache.
    fn supervise(
        &self,
        spec: &Arc<ModelSpec>,
        s: Started,
        started: Instant,
        cache_key: Option<String>,
    ) -> GenerationStream {
        let Started {
            first,
            mut rest,
            truncated,
            prompt_estimate,
            breaker,
        } = s;
        let deadline = tokio::time::Instant::from_std(
            started + Duration::from_millis(spec.timeouts.request_ms),
        );
        let stall = Duration::from_millis(spec.timeouts.first_token_ms);
        let cache = self.cache.clone();
        let model = spec.name.clone();
        Box::pin(async_stream::stream! {
            let mut text = String::new();
            let mut pieces = 0u32;
            let mut next = Some(Ok(first));
            loop {
                let ev = match next.take() {
                    Some(ev) => Some(ev),
                    None => {
                        let gap = tokio::time::Instant::now() + stall;
                        tokio::select! {
                            ev = rest.next() => ev,
                            _ = tokio::time::sleep_until(deadline.min(gap)) => {
                                breaker.failure();
                                yield Err(ProviderError::Timeout(format!("`{model}` stalled or ran past its time limit")));
                                break;
                            }
                        }
                    }
                };
                match ev {
                    Some(Ok(GenerationEvent::Text(t))) => {
                        pieces += 1;
                        if cache_key.is_some() {
                            text.push_str(&t);
                        }
                        yield Ok(GenerationEvent::Text(t));
                    }
                    Some(Ok(GenerationEvent::Done { finish_reason, usage, truncated_turns })) => {
                        let usage = Usage {
                            prompt_tokens: if usage.prompt_tokens == 0 { prompt_estimate } else { usage.prompt_tokens },
                            completion_tokens: if usage.completion_tokens == 0 { pieces } else { usage.completion_tokens },
                        };
                        let truncated_turns = truncated_turns + truncated;
                        if let (Some(key), Some(cache)) = (cache_key.clone(), cache.as_ref()) {
                            cache.put(key, CachedAnswer {
                                model: model.clone(),
                                content: std::mem::take(&mut text),
                                finish_reason,
                                usage,
                                truncated_turns,
                            }).await;
                        }
                        yield Ok(GenerationEvent::Done { finish_reason, usage, truncated_turns });
                        break;
                    }
                    Some(Err(e)) => {
                        if worth_fallback(&e) {
                            breaker.failure();
                        }
                        yield Err(e);
                        break;
                    }
                    None => {
                        breaker.failure();
                        yield Err(ProviderError::Unavailable(format!("`{model}` ended the stream without finishing")));
                        break;
                    }
                }
            }
        })
    }
}

#[async_trait::async_trait]
impl ChatProvider for Router {
    fn models(&self) -> Vec<ModelInfo> {
        self.registry
            .snapshot()
            .all()
            .filter(|(s, _)| s.enabled)
            .map(|(s, _)| ModelInfo {
                name: s.name.clone(),
                context_size: s.context_size,
                max_output_tokens: s.max_tokens,
            })
            .collect()
    }

    async fn generate(&self, req: GenerationRequest) -> Result<GenerationStream, ProviderError> {
        Ok(self.generate_routed(req).await?.stream)
    }

    fn is_ready(&self) -> bool {
        self.local.as_ref().is_none_or(|l| l.is_ready())
    }

    fn cache_counters(&self) -> Option<CacheCounters> {
        self.cache.as_ref().map(|c| {
            let s = c.stats();
            CacheCounters {
                backend: c.backend_name().into(),
                hits: s.hits,
                misses: s.misses,
                errors: s.errors,
            }
        })
    }

    fn is_available(&self, model: &str) -> bool {
        let snap = self.registry.snapshot();
        let Some(spec) = snap.get(model) else {
            return false;
        };
        if spec.provider == ProviderKind::Local
            && !self.local.as_ref().is_some_and(|l| l.is_ready())
        {
            return false;
        }
        !self.breaker(spec).is_open()
    }

    async fn generate_routed(&self, req: GenerationRequest) -> Result<RoutedStream, ProviderError> {
        let started = Instant::now();
        let chain = self.registry.snapshot().chain(&req.model);
        if chain.is_empty() {
            return Err(ProviderError::UnknownModel);
        }
        let cache_key = self.cache.as_ref().and_then(|_| ResponseCache::key(&req));
        if let (Some(cache), Some(key)) = (&self.cache, &cache_key) {
            if let Some(hit) = cache.get(key).await {
                let fallback_from = (hit.model != req.model).then(|| req.model.clone());
                let mut events = Vec::new();
                if !hit.content.is_empty() {
                    events.push(Ok(GenerationEvent::Text(hit.content)));
                }
                events.push(Ok(GenerationEvent::Done {
                    finish_reason: hit.finish_reason,
                    usage: hit.usage,
                    truncated_turns: hit.truncated_turns,
                }));
                return Ok(RoutedStream {
                    model: hit.model,
                    fallback_from,
                    cached: true,
                    stream: Box::pin(futures::stream::iter(events)),
                });
            }
        }
        let mut last: Option<ProviderError> = None;
        for spec in &chain {
            match self.try_model(spec, &req).await {
                Ok(s) => {
                    let fallback_from = (spec.name != req.model).then(|| req.model.clone());
                    if let Some(from) = &fallback_from {
                        tracing::info!(requested = %from, answered_by = %spec.name, "fallback model answers");
                    }
                    let stream = self.supervise(spec, s, started, cache_key.clone());
                    return Ok(RoutedStream {
                        model: spec.name.clone(),
                        fallback_from,
                        cached: false,
                        stream,
                    });
                }
                Err(e) if worth_fallback(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ProviderError::UnknownModel))
    }
}
