//! Distributed tracing hooks. Every crate makes plain `tracing` spans (the request, the guard,
//! the model call, each query). When the binary exports traces (cargo feature `otlp` and
//! `[telemetry] otlp_endpoint`), it installs a [`Propagation`]: a request then joins its
//! caller's trace (W3C `traceparent`), and calls to upstream models carry the trace on. Without
//! one both are no-ops, and no adapter names a tracing backend.

use std::sync::OnceLock;

/// How trace context crosses process boundaries.
pub trait Propagation: Send + Sync + 'static {
    /// Makes `span` a child of the trace named by the incoming request's headers (`header`
    /// reads one by its lower-case name), if they name one.
    fn adopt(&self, header: &dyn Fn(&str) -> Option<String>, span: &tracing::Span);
    /// The headers that carry the current span's trace to an upstream.
    fn outgoing(&self) -> Vec<(&'static str, String)>;
}

static HOOK: OnceLock<Box<dyn Propagation>> = OnceLock::new();

/// Installs the process's propagation (the first call wins). True when this one was installed.
pub fn install(p: Box<dyn Propagation>) -> bool {
    HOOK.set(p).is_ok()
}

/// See [`Propagation::adopt`].
pub fn adopt(header: &dyn Fn(&str) -> Option<String>, span: &tracing::Span) {
    if let Some(h) = HOOK.get() {
        h.adopt(header, span);
    }
}

/// See [`Propagation::outgoing`]; empty when traces are not exported.
pub fn outgoing() -> Vec<(&'static str, String)> {
    HOOK.get().map(|h| h.outgoing()).unwrap_or_default()
}
