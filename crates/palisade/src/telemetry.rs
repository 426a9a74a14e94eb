//! Prometheus metrics: installs the exporter behind the `metrics` facade the libraries record
//! into, describes every family, and serves `GET /metrics` on the listener of `metrics.listen`
//! (the main port's `/metrics` is `palisade-http`'s, behind `metrics.token`). Nothing is
//! installed or exposed unless `[metrics]` asks for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use palisade_config::Config;
use palisade_http::telemetry::{exposition, MetricsEndpoint, Render};

/// Latency buckets (seconds) for every `*_seconds` histogram: 1 ms to 2 min.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Generation speed buckets (tokens per second).
const RATES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// What `[metrics]` turned on.
pub struct Metrics {
    /// The bearer-guarded scrape (set when `metrics.token` is): the main port's `/metrics`, and
    /// the separate listener's too.
    pub endpoint: Option<Arc<MetricsEndpoint>>,
    render: Render,
}

/// Installs the recorder when `[metrics]` names a listener or a token; `None` otherwise (every
/// recording is then a no-op).
pub fn install(cfg: &Config) -> anyhow::Result<Option<Metrics>> {
    let token = cfg.metrics.resolved_token()?;
    if cfg.metrics.listen.is_none() && token.is_none() {
        return Ok(None);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_per_second".into()), RATES))
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    // Histograms are kept as buckets that the exporter folds in from time to time.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let render: Render = Arc::new(move || handle.render());
    Ok(Some(Metrics {
        endpoint: token.map(|t| Arc::new(MetricsEndpoint::new(t, render.clone()))),
        render,
    }))
}

impl Metrics {
    /// Starts the listener of `metrics.listen`; returns its address (for the start-up banner).
    pub fn serve_listener(&self, cfg: &Config) -> anyhow::Result<Option<SocketAddr>> {
        let Some(addr) = cfg.metrics.listen_addr()? else {
            return Ok(None);
        };
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the metrics listener {addr}"))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let gate = Arc::new(Gate {
            render: self.render.clone(),
            endpoint: self.endpoint.clone(),
        });
        let app = axum::Router::new()
            .route("/metrics", get(scrape))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .with_state(gate);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
        Ok(Some(local))
    }
}

/// The separate listener's access rule: with `metrics.token` set, the bearer is needed there
/// too; without it (a loopback address, see config validation) the listener is open.
struct Gate {
    render: Render,
    endpoint: Option<Arc<MetricsEndpoint>>,
}

async fn scrape(State(g): State<Arc<Gate>>, headers: HeaderMap) -> Response {
    match &g.endpoint {
        Some(e) => e.answer(&headers),
        None => exposition(&g.render),
    }
}

/// Help texts, and the families that must show from the first scrape (a zero is information:
/// "no audit sink error yet" is different from "not measured").
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "http_requests_total",
        "HTTP answers by method, route and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "time to the response head, by method and route"
    );
    describe_gauge!(
        "active_websocket_connections",
        "open chat WebSockets on this replica"
    );
    describe_gauge!(
        "palisade_active_streams",
        "answers streaming over SSE, by transport"
    );
    describe_counter!(
        "chat_messages_total",
        "stored chat messages by role and model"
    );
    describe_histogram!(
        "llm_response_time_seconds",
        Unit::Seconds,
        "model requests from admission to the end of the answer"
    );
    describe_histogram!(
        "palisade_llm_time_to_first_token_seconds",
        Unit::Seconds,
        "model requests from admission to the first event of the answer"
    );
    describe_histogram!(
        "palisade_llm_tokens_per_second",
        "generation speed of each answer (completion tokens per second after the first)"
    );
    describe_counter!(
        "palisade_llm_tokens_total",
        "tokens by model and kind (prompt, completion)"
    );
    describe_counter!(
        "palisade_llm_requests_total",
        "model requests by model and outcome"
    );
    describe_gauge!(
        "palisade_engine_queue_depth",
        "requests waiting for a slot of the local engine"
    );
    describe_gauge!(
        "palisade_engine_active_sequences",
        "sequences the local engine is decoding"
    );
    describe_histogram!(
        "palisade_engine_queue_wait_seconds",
        Unit::Seconds,
        "time requests waited for a slot of the local engine"
    );
    describe_counter!(
        "palisade_guard_findings_total",
        "content guard findings by stage, category and the action taken"
    );
    describe_counter!(
        "palisade_guard_blocks_total",
        "requests and answers the guard refused, by stage"
    );
    describe_counter!(
        "palisade_rate_limit_rejections_total",
        "requests refused at a limit, by limit"
    );
    describe_counter!(
        "palisade_cache_requests_total",
        "response cache lookups by result"
    );
    describe_histogram!(
        "db_query_duration_seconds",
        Unit::Seconds,
        "database operations by query type"
    );
    describe_histogram!(
        "palisade_redis_command_duration_seconds",
        Unit::Seconds,
        "Redis round trips by operation"
    );
    describe_counter!("palisade_audit_events_total", "audit events recorded");
    describe_counter!(
        "palisade_audit_sink_errors_total",
        "audit batches that could not be recorded, by sink"
    );
    describe_counter!(
        "palisade_jobs_total",
        "background job attempts by kind and outcome"
    );
    describe_counter!(
        "palisade_jobs_dead_letters_total",
        "jobs that failed their last attempt"
    );
    for sink in ["database", "mirror"] {
        metrics::counter!("palisade_audit_sink_errors_total", "sink" => sink).absolute(0);
    }
    metrics::counter!("palisade_audit_events_total").absolute(0);
    metrics::gauge!("active_websocket_connections").set(0.0);
    metrics::gauge!("palisade_engine_queue_depth").set(0.0);
    metrics::gauge!("palisade_engine_active_sequences").set(0.0);
}
