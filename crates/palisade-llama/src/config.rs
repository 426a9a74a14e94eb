//! Engine configuration and the errors raised while starting the engine.

use std::path::PathBuf;

/// Default context window of one conversation, in tokens.
pub const DEFAULT_CONTEXT_SIZE: u32 = 2048;
/// Default number of sequences decoded together.
pub const DEFAULT_PARALLEL: u32 = 8;
/// Default number of requests allowed to wait for a free sequence.
pub const DEFAULT_QUEUE_CAPACITY: u32 = 32;
/// Default upper bound of tokens in one decode call (prompt chunks + generated tokens).
pub const DEFAULT_BATCH_SIZE: u32 = 512;
/// Default `max_tokens` when a request gives 0.
pub const DEFAULT_MAX_TOKENS: u32 = 512;
/// Default hard cap on output tokens of one answer.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 2048;

/// How to run the embedded engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Path of the GGUF file.
    pub model_path: PathBuf,
    /// The model's public name (what clients put in `model`), e.g. `smollm2-135m`.
    pub model_name: String,
    /// Context window of one sequence (prompt + answer), in tokens.
    pub context_size: u32,
    /// Sequences generated concurrently (continuous batching slots).
    pub parallel: u32,
    /// Maximum tokens submitted to one decode call; must be at least `parallel`.
    pub batch_size: u32,
    /// CPU threads used by llama.cpp for both prompt and generation.
    pub threads: u32,
    /// Requests allowed to wait when all `parallel` slots are busy; beyond that `Overloaded`.
    pub queue_capacity: u32,
    /// Percent of the capacity (`parallel + queue_capacity`) one tenant may hold, so a flood
    /// from one tenant leaves room for the others (at least `parallel` places per tenant).
    pub tenant_share_percent: u32,
    /// `max_tokens` used when a request asks for 0.
    pub default_max_tokens: u32,
    /// Hard cap on the answer length, whatever the request asks.
    pub max_output_tokens: u32,
    /// Re-encode Q4_1/Q5_1 weights as Q8_0 once (cached) so batched decoding uses llama.cpp's
    /// GEMM kernels: ~1.35x more aggregate throughput with 8 streams, same single-stream speed,
    /// practically lossless. Default true; other weight types are always loaded as they are.
    pub convert_weights: bool,
    /// Where converted weights are cached; default `<model dir>/.palisade-converted`.
    pub converted_dir: Option<PathBuf>,
}

impl EngineConfig {
    /// A configuration with the defaults for everything but the model.
    pub fn new(model_path: impl Into<PathBuf>, model_name: impl Into<String>) -> Self {
        Self {
            model_path: model_path.into(),
            model_name: model_name.into(),
            context_size: DEFAULT_CONTEXT_SIZE,
            parallel: DEFAULT_PARALLEL,
            batch_size: DEFAULT_BATCH_SIZE,
            threads: default_threads(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            tenant_share_percent: 75,
            default_max_tokens: DEFAULT_MAX_TOKENS,
            max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            convert_weights: true,
            converted_dir: None,
        }
    }

    /// Checks the numbers are usable; called by `LlamaEngine::start`.
    pub fn validate(&self) -> Result<(), EngineError> {
        let invalid = |msg: String| Err(EngineError::InvalidConfig(msg));
        if self.model_name.trim().is_empty() {
            return invalid("model_name must not be empty".into());
        }
        if self.context_size < 64 {
            return invalid(format!(
                "context_size must be at least 64 tokens (got {})",
                self.context_size
            ));
        }
        if self.parallel == 0 || self.parallel > 256 {
            return invalid(format!(
                "parallel must be between 1 and 256 (got {})",
                self.parallel
            ));
        }
        let total = u64::from(self.context_size) * u64::from(self.parallel);
        if total > i32::MAX as u64 {
            return invalid("context_size * parallel is too large".into());
        }
        if self.batch_size < self.parallel {
            return invalid(format!(
                "batch_size ({}) must be at least parallel ({})",
                self.batch_size, self.parallel
            ));
        }
        if self.threads == 0 || self.threads > 1024 {
            return invalid(format!(
                "threads must be between 1 and 1024 (got {})",
                self.threads
            ));
        }
        if self.max_output_tokens == 0 {
            return invalid("max_output_tokens must be at least 1".into());
        }
        Ok(())
    }
}

/// The number of CPU cores available to this process (at least 1).
pub fn default_threads() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(1))
        .unwrap_or(1)
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),
    #[error("model file not found at {}", .0.display())]
    ModelNotFound(PathBuf),
    #[error("failed to initialise llama.cpp: {0}")]
    Backend(String),
    #[error("failed to load the model from {}: {detail}", path.display())]
    ModelLoad { path: PathBuf, detail: String },
    #[error("failed to create the inference context: {0}")]
    Context(String),
    #[error("failed to start the engine thread: {0}")]
    Thread(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let cfg = EngineConfig::new("/m.gguf", "m");
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.context_size, 2048);
        assert_eq!(cfg.parallel, 8);
        assert_eq!(cfg.queue_capacity, 32);
        assert!(cfg.threads >= 1);
    }

    #[test]
    fn rejects_bad_numbers() {
        let mut cfg = EngineConfig::new("/m.gguf", "m");
        cfg.batch_size = 4;
        assert!(cfg.validate().is_err());
        let mut cfg = EngineConfig::new("/m.gguf", "m");
        cfg.parallel = 0;
        assert!(cfg.validate().is_err());
        let mut cfg = EngineConfig::new("/m.gguf", " ");
        cfg.context_size = 4096;
        assert!(cfg.validate().is_err());
    }
}
