//! OpenTelemetry trace export: the spans every crate makes (`http.request`, `guard.input`,
//! `llm.generate`, `upstream.request`, `db.query`) go to an OTLP/HTTP collector (protobuf) in
//! batches, when `[telemetry] otlp_endpoint` names one. Built with the `otlp` cargo feature (on
//! by default); a build without it refuses the setting instead of ignoring it.
//!
//! Only spans are exported, never log events: span fields are names, routes, ids, counts and
//! outcomes, never message content, headers or secrets. A request joins its caller's trace
//! (W3C `traceparent`), and calls to upstream models carry the trace on
//! (`palisade_core::trace`).

use palisade_config::TelemetryConfig;
use tracing_subscriber::registry::LookupSpan;

/// A layer of the process's subscriber.
pub type BoxedLayer<S> = Box<dyn tracing_subscriber::Layer<S> + Send + Sync>;

/// The exporter while it runs; [`Traces::shutdown`] sends the last batch.
pub struct Traces {
    #[cfg(feature = "otlp")]
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

#[cfg(feature = "otlp")]
mod export {
    use std::collections::HashMap;
    use std::time::Duration;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry::KeyValue;
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{
        BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
    };
    use opentelemetry_sdk::Resource;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;

    use super::*;

    /// W3C Trace Context in and out.
    struct W3c(TraceContextPropagator);

    impl palisade_core::trace::Propagation for W3c {
        fn adopt(&self, header: &dyn Fn(&str) -> Option<String>, span: &tracing::Span) {
            let mut found: HashMap<String, String> = HashMap::new();
            for name in self.0.fields() {
                if let Some(v) = header(name) {
                    found.insert(name.to_string(), v);
                }
            }
            if found.is_empty() {
                return;
            }
            span.set_parent(self.0.extract(&found));
        }

        fn outgoing(&self) -> Vec<(&'static str, String)> {
            let mut out: HashMap<String, String> = HashMap::new();
            self.0
                .inject_context(&tracing::Span::current().context(), &mut out);
            out.into_iter()
                .filter_map(|(k, v)| match k.as_str() {
                    "traceparent" => Some(("traceparent", v)),
                    "tracestate" => Some(("tracestate", v)),
                    _ => None,
                })
                .collect()
        }
    }

    pub fn layer<S>(cfg: &TelemetryConfig) -> anyhow::Result<Option<(BoxedLayer<S>, Traces)>>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let Some(url) = cfg.traces_url() else {
            return Ok(None);
        };
        let headers: HashMap<String, String> = cfg
            .resolved_headers()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .into_iter()
            .collect();
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(cfg.timeout_secs))
            .with_headers(headers)
            .build()
            .map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: {e}"))?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_millis(cfg.export_interval_ms))
            .with_max_queue_size(cfg.queue_size)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("palisade");
        palisade_core::trace::install(Box::new(W3c(TraceContextPropagator::new())));
        // Palisade's own spans down to debug (the queries), nothing of other crates, no events.
        let only_ours = tracing_subscriber::filter::filter_fn(|m| {
            m.is_span() && m.target().starts_with("palisade") && *m.level() <= tracing::Level::DEBUG
        });
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(only_ours)
            .boxed();
        Ok(Some((layer, Traces { provider })))
    }

    pub async fn shutdown(t: Traces) {
        let provider = t.provider;
        // The batch thread posts with a blocking client: flush off the async workers.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// The trace export layer of `cfg`, or `None` when no collector is named.
pub fn layer<S>(cfg: &TelemetryConfig) -> anyhow::Result<Option<(BoxedLayer<S>, Traces)>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    #[cfg(feature = "otlp")]
    {
        export::layer(cfg)
    }
    #[cfg(not(feature = "otlp"))]
    {
        match cfg.otlp_endpoint {
            Some(_) => anyhow::bail!(
                "telemetry.otlp_endpoint: this build has no trace export (build with the `otlp` cargo feature)"
            ),
            None => Ok(None),
        }
    }
}

impl Traces {
    /// Sends what is still queued and stops the exporter.
    pub async fn shutdown(self) {
        #[cfg(feature = "otlp")]
        export::shutdown(self).await;
    }
}
