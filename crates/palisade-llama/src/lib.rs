//! The embedded llama.cpp engine of Palisade: loads a GGUF model once, serves many concurrent
//! conversations with continuous batching on one dedicated thread, and provisions the default
//! model.
//!
//! The server uses [`LlamaEngine`] through the [`palisade_core::provider::ChatProvider`] trait
//! and [`provision`] to install models.

mod config;
mod convert;
mod engine;
mod logging;
mod prompt;
pub mod provision;
mod sampling;
mod scheduler;
mod shared;
pub mod text;

pub use config::{
    default_threads, EngineConfig, EngineError, DEFAULT_BATCH_SIZE, DEFAULT_CONTEXT_SIZE,
    DEFAULT_MAX_OUTPUT_TOKENS, DEFAULT_MAX_TOKENS, DEFAULT_PARALLEL, DEFAULT_QUEUE_CAPACITY,
};
pub use engine::{EngineStats, LlamaEngine};
