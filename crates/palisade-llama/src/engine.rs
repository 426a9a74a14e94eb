//! `LlamaEngine`: loads the GGUF once, runs the scheduler thread and implements `ChatProvider`.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use futures::StreamExt;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use palisade_core::provider::{
    ChatProvider, GenerationEvent, GenerationParams, GenerationRequest, GenerationStream,
    ModelInfo, PromptMessage, ProviderError,
};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::{EngineConfig, EngineError};
use crate::prompt::PromptFormatter;
use crate::sampling::{random_seed, SamplingSpec};
use crate::scheduler::{Command, Job, Limits, Scheduler};
use crate::shared::Shared;

/// A snapshot of the engine's load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Sequences being generated (occupied slots).
    pub active: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Requests accepted and not yet finished (includes those being tokenized).
    pub in_flight: usize,
    /// Sequences holding KV cells, measured when the engine last went idle (0 when clean).
    pub kv_sequences_in_use: usize,
}

/// The embedded llama.cpp engine. Cheap to share (`Arc`); dropping the last handle stops it.
pub struct LlamaEngine {
    cfg: EngineConfig,
    model: Arc<LlamaModel>,
    formatter: PromptFormatter,
    ctx_per_seq: u32,
    commands: Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LlamaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaEngine")
            .field("model_name", &self.cfg.model_name)
            .field("ctx_per_seq", &self.ctx_per_seq)
            .field("parallel", &self.cfg.parallel)
            .finish_non_exhaustive()
    }
}

/// llama.cpp's backend may be initialised once per process; engines share it.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    static INIT: Mutex<()> = Mutex::new(());
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    let b = LlamaBackend::init().map_err(|e| EngineError::Backend(e.to_string()))?;
    Ok(BACKEND.get_or_init(|| b))
}

impl LlamaEngine {
    /// Loads the model and starts the scheduler thread. Blocking (reads the whole GGUF): call it
    /// from `spawn_blocking` inside an async runtime.
    pub fn start(cfg: EngineConfig) -> Result<Arc<LlamaEngine>, EngineError> {
        cfg.validate()?;
        if !cfg.model_path.is_file() {
            return Err(EngineError::ModelNotFound(cfg.model_path.clone()));
        }
        crate::logging::install();
        let backend = backend()?;

        let load_started = Instant::now();
        let weights = crate::convert::weights_to_load(&cfg);
        let model = LlamaModel::load_from_file(backend, &weights, &LlamaModelParams::default())
            .map_err(|e| EngineError::ModelLoad {
                path: cfg.model_path.clone(),
                detail: e.to_string(),
            })?;
        let model = Arc::new(model);
        let formatter =
            PromptFormatter::for_model(&model).map_err(|detail| EngineError::ModelLoad {
                path: cfg.model_path.clone(),
                detail,
            })?;
        if cfg.context_size > model.n_ctx_train() {
            tracing::warn!(
                context_size = cfg.context_size,
                trained = model.n_ctx_train(),
                "context_size exceeds the model's training context; quality may degrade"
            );
        }

        let threads = i32::try_from(cfg.threads).unwrap_or(1);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(cfg.context_size * cfg.parallel))
            .with_n_batch(cfg.batch_size)
            .with_n_ubatch(cfg.batch_size)
            .with_n_seq_max(cfg.parallel)
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            // One KV stream per sequence: attention only reads that sequence's own cells.
            .with_kv_unified(false);

        let shared = Arc::new(Shared::new(
            cfg.parallel as usize,
            cfg.queue_capacity as usize,
            cfg.tenant_share_percent as usize,
        ));
        let (commands, rx) = std::sync::mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<u32, String>>(1);

        let thread_model = Arc::clone(&model);
        let thread_shared = Arc::clone(&shared);
        let parallel = cfg.parallel;
        let requested_ctx = cfg.context_size;
        let n_batch = cfg.batch_size as usize;
        let handle = std::thread::Builder::new()
            .name("palisade-llama".into())
            .spawn(move || {
                let shared = Arc::clone(&thread_shared);
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    let ctx = match thread_model.new_context(backend, params) {
                        Ok(ctx) => ctx,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let ctx_per_seq = (ctx.n_ctx() / parallel).min(requested_ctx);
                    let limits = Limits {
                        parallel: parallel as usize,
                        n_batch: (ctx.n_batch() as usize).min(n_batch),
                        ctx_per_seq,
                    };
                    thread_shared.running.store(true, Ordering::Release);
                    let _ = ready_tx.send(Ok(ctx_per_seq));
                    let vocab = thread_model.vocab();
                    Scheduler::new(ctx, vocab, limits, thread_shared).run(rx);
                }));
                shared.running.store(false, Ordering::Release);
                if outcome.is_err() {
                    tracing::error!("the llama engine thread panicked; the engine is stopped");
                }
            })
            .map_err(|e| EngineError::Thread(e.to_string()))?;

        let ctx_per_seq = match ready_rx.recv() {
            Ok(Ok(n)) => n,
            Ok(Err(detail)) => {
                let _ = handle.join();
                return Err(EngineError::Context(detail));
            }
            Err(_) => {
                let _ = handle.join();
                return Err(EngineError::Context("the engine thread exited".into()));
            }
        };
        tracing::info!(
            model = %cfg.model_name,
            ctx_per_seq,
            parallel = cfg.parallel,
            threads = cfg.threads,
            load_ms = load_started.elapsed().as_millis() as u64,
            "llama engine ready"
        );
        Ok(Arc::new(LlamaEngine {
            cfg,
            model,
            formatter,
            ctx_per_seq,
            commands,
            thread: Mutex::new(Some(handle)),
            shared,
        }))
    }

    /// Stops the scheduler thread: active and queued requests end with `Unavailable`.
    /// Idempotent; also called on drop.
    pub fn shutdown(&self) {
        self.shared.running.store(false, Ordering::Release);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let _ = self.commands.send(Command::Shutdown);
            if handle.join().is_err() {
                tracing::error!("the llama engine thread panicked during shutdown");
            }
        }
    }

    /// Current load.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            active: self.shared.active.load(Ordering::Relaxed),
            queued: self.shared.queued.load(Ordering::Relaxed),
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
            kv_sequences_in_use: self.shared.kv_sequences_in_use.load(Ordering::Relaxed),
        }
    }

    /// The model's public name.
    pub fn model_name(&self) -> &str {
        &self.cfg.model_name
    }

    /// Tokens of context one conversation gets (prompt + answer).
    pub fn context_size(&self) -> u32 {
        self.ctx_per_seq
    }

    /// Number of tokens `messages` take once templated (no truncation). Blocking (tokenizes).
    pub fn prompt_tokens(&self, messages: &[PromptMessage]) -> Result<u32, ProviderError> {
        let prepared = self.formatter.prepare(&self.model, messages, u32::MAX, 0)?;
        Ok(u32::try_from(prepared.tokens.len()).unwrap_or(u32::MAX))
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The output budget requested (0 → default), capped by the configured maximum.
    fn requested_max_tokens(&self, params: &GenerationParams) -> u32 {
        let asked = if params.max_tokens == 0 {
            self.cfg.default_max_tokens
        } else {
            params.max_tokens
        };
        asked.min(self.cfg.max_output_tokens).max(1)
    }
}

impl Drop for LlamaEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn validate_params(p: &GenerationParams) -> Result<(), ProviderError> {
    let bad = |m: &str| Err(ProviderError::InvalidRequest(m.to_string()));
    if !p.temperature.is_finite() || p.temperature < 0.0 {
        return bad("temperature must be a finite number >= 0");
    }
    if !p.top_p.is_finite() || p.top_p <= 0.0 || p.top_p > 1.0 {
        return bad("top_p must be in (0, 1]");
    }
    Ok(())
}

#[async_trait::async_trait]
impl ChatProvider for LlamaEngine {
    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            name: self.cfg.model_name.clone(),
            context_size: self.ctx_per_seq,
            max_output_tokens: self.cfg.max_output_tokens.min(self.ctx_per_seq),
        }]
    }

    async fn generate(&self, req: GenerationRequest) -> Result<GenerationStream, ProviderError> {
        if !self.is_ready() {
            return Err(ProviderError::Unavailable(
                "the llama engine is not running".into(),
            ));
        }
        if req.model != self.cfg.model_name {
            return Err(ProviderError::UnknownModel);
        }
        validate_params(&req.params)?;
        let tenant = req.tenant.clone().unwrap_or_default();
        let permit = self
            .shared
            .try_acquire(&tenant)
            .map_err(|retry_after_secs| ProviderError::Overloaded { retry_after_secs })?;

        let requested = self.requested_max_tokens(&req.params);
        let ctx = self.ctx_per_seq;
        // Keep room for a reasonable answer when deciding how much history fits.
        let reserve = requested.min(ctx / 4).max(1);
        let model = Arc::clone(&self.model);
        let formatter = self.formatter.clone();
        let messages = req.messages;
        let prepared =
            tokio::task::spawn_blocking(move || formatter.prepare(&model, &messages, ctx, reserve))
                .await
                .map_err(|e| {
                    ProviderError::Internal(format!("prompt preparation failed: {e}"))
                })??;

        if prepared.tokens.is_empty() {
            return Err(ProviderError::InvalidRequest("the prompt is empty".into()));
        }
        let prompt_len = u32::try_from(prepared.tokens.len()).unwrap_or(u32::MAX);
        let max_tokens = requested.min(ctx.saturating_sub(prompt_len)).max(1);
        let p = &req.params;
        let sampling = SamplingSpec {
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            seed: p.seed.unwrap_or_else(random_seed),
        };
        tracing::debug!(
            request_id = %req.request_id,
            prompt_tokens = prompt_len,
            truncated_turns = prepared.truncated_turns,
            max_tokens,
            "generation queued"
        );

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            request_id: req.request_id,
            tokens: prepared.tokens,
            sampling,
            max_tokens,
            stop: req.params.stop,
            truncated_turns: prepared.truncated_turns,
            tx,
            tenant,
            _permit: permit,
            enqueued: Instant::now(),
        };
        self.commands
            .send(Command::Job(Box::new(job)))
            .map_err(|_| ProviderError::Unavailable("the llama engine is not running".into()))?;
        Ok(event_stream(rx))
    }

    fn is_ready(&self) -> bool {
        self.shared.running.load(Ordering::Acquire)
    }
}

/// Turns the scheduler's channel into the public stream: ends after `Done` or an error, and
/// reports an error if the engine goes away without finishing.
fn event_stream(rx: UnboundedReceiver<Result<GenerationEvent, ProviderError>>) -> GenerationStream {
    futures::stream::unfold(Some(rx), |state| async move {
        let mut rx = state?;
        match rx.recv().await {
            Some(Ok(ev @ GenerationEvent::Done { .. })) => Some((Ok(ev), None)),
            Some(Ok(ev)) => Some((Ok(ev), Some(rx))),
            Some(Err(e)) => Some((Err(e), None)),
            None => Some((
                Err(ProviderError::Internal(
                    "the engine stopped before finishing the answer".into(),
                )),
                None,
            )),
        }
    })
    .boxed()
}
