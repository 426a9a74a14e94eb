//! Palisade's model providers (DESIGN.md §2, `palisade-llm`).
//!
//! - [`openai`]: any OpenAI-compatible chat-completions server (SSE streams and plain answers);
//! - [`ollama`]: Ollama's native `/api/chat` (NDJSON streams);
//! - [`router::Router`]: the `ChatProvider` the pipeline talks to. It resolves a public model
//!   name through the registry, fits the conversation into the model's window, tries the model
//!   and then its fallbacks, with retries before the first token, per-upstream circuit
//!   breakers, connect/first-token/whole-request timeouts and the optional response cache.
//!
//! Upstream errors become typed [`ProviderError`](palisade_core::provider::ProviderError)s
//! with safe messages; upstream bodies are never passed to clients.

pub mod breaker;
pub mod cache;
pub mod estimate;
pub mod ollama;
pub mod openai;
pub mod router;
pub mod upstream;

pub use router::{Router, RouterSettings};
pub use upstream::Upstream;
