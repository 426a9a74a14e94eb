//! HTTP measurements and the Prometheus scrape route: spec 003's `http_requests_total`,
//! `http_request_duration_seconds` and `active_websocket_connections`, open answer streams,
//! refusals at a limit, and `GET /metrics` on the main port behind its own bearer token.
//!
//! Values go through the `metrics` facade; the binary installs the exporter and hands this
//! crate a [`MetricsEndpoint`] that renders them. The route label is the matched route pattern
//! (`/api/chat/sessions/{id}`), never the raw path, so ids and probes cannot grow the series.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::error::{ApiError, ErrorCode};
use crate::AppState;

/// Renders the current values in the Prometheus text format.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// `GET /metrics` on the main listener: open only to a caller holding `token`.
pub struct MetricsEndpoint {
    token: String,
    render: Render,
}

impl MetricsEndpoint {
    /// `token`: the bearer a scraper must send (`metrics.token`).
    pub fn new(token: String, render: Render) -> MetricsEndpoint {
        MetricsEndpoint { token, render }
    }

    /// True when `header` is `Bearer <token>` (compared in constant time).
    pub fn admits(&self, header: Option<&HeaderValue>) -> bool {
        let Some(given) = header
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        !self.token.is_empty() && bool::from(given.as_bytes().ct_eq(self.token.as_bytes()))
    }

    /// A scrape's answer: the values, or 401 without the right bearer (on either listener).
    pub fn answer(&self, headers: &HeaderMap) -> Response {
        if !self.admits(headers.get(header::AUTHORIZATION)) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the metrics need the bearer token of `metrics.token`",
            )
            .into_response();
        }
        exposition(&self.render)
    }
}

/// The body of a scrape, with Prometheus' content type.
pub fn exposition(render: &Render) -> Response {
    let mut res = (render)().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

/// `GET /metrics`: 404 unless `metrics.token` is set (the route does not exist then), 401
/// without the right bearer.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    responses((status = 200, description = "Prometheus exposition (only on the metrics listener, or with its bearer token)", content_type = "text/plain", body = String)),
    security(("metrics_token" = []))
)]
pub async fn scrape(State(s): State<AppState>, headers: HeaderMap) -> Response {
    match &s.metrics {
        Some(endpoint) => endpoint.answer(&headers),
        None => ApiError::not_found().into_response(),
    }
}

/// Who made a request, as the authentication middleware found them (for the access log).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub tenant: String,
}

/// Middleware (outermost of the routes): counts every answer by method, route pattern and
/// status, times it (to the response head; a stream's body is measured by its own gauges),
/// counts refusals at a limit by the limit's code, and writes one access-log line (target
/// `palisade::access`: request id, method, route pattern, status, duration, user and tenant
/// ids; never the query string, a body or a header value).
pub async fn track(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    // A cheap handle (shared bytes), read only if the access log is on.
    let request_id = req.headers().get("x-request-id").cloned();
    // The request's span: the root of its trace, or a child of the caller's when trace export
    // is on and the request names one (`traceparent`). No content, no query string.
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {endpoint}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = %endpoint,
        request_id = request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let headers = req.headers();
        palisade_core::trace::adopt(
            &|name| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            },
            &span,
        );
    }
    let res = next.run(req).instrument(span.clone()).await;
    let status = res.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let caller = res.extensions().get::<Caller>();
    tracing::info!(
        target: "palisade::access",
        request_id = request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        method,
        route = %endpoint,
        status = status.as_u16(),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        user_id = caller.map_or("", |c| c.user.as_str()),
        tenant_id = caller.map_or("", |c| c.tenant.as_str()),
        "request"
    );
    metrics::counter!(
        "http_requests_total",
        "method" => method,
        "endpoint" => endpoint.clone(),
        "status" => status.as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!(
        "http_request_duration_seconds",
        "method" => method,
        "endpoint" => endpoint
    )
    .record(started.elapsed().as_secs_f64());
    if status == StatusCode::TOO_MANY_REQUESTS {
        // Request-rate refusals are counted by the limits middleware, with the limit's name.
        match res.extensions().get::<ErrorCode>().map(|c| c.0) {
            Some("rate_limited") => {}
            code => rejected(code.unwrap_or("other")),
        }
    }
    res
}

fn method_label(m: &axum::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// A request refused at the limit named `limit`.
pub fn rejected(limit: &str) {
    metrics::counter!("palisade_rate_limit_rejections_total", "limit" => limit.to_string())
        .increment(1);
}

/// Holds one unit of a gauge while it lives: an open answer stream (`transport` = `sse`,
/// `openai_sse`) or a WebSocket.
pub struct Open {
    gauge: metrics::Gauge,
}

impl Open {
    /// An answer streamed over `transport`.
    pub fn stream(transport: &'static str) -> Open {
        Open::hold(metrics::gauge!("palisade_active_streams", "transport" => transport))
    }

    /// Spec 003's `active_websocket_connections`.
    pub fn websocket() -> Open {
        Open::hold(metrics::gauge!("active_websocket_connections"))
    }

    fn hold(gauge: metrics::Gauge) -> Open {
        gauge.increment(1.0);
        Open { gauge }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_opens_the_metrics() {
        let e = MetricsEndpoint::new("s3cret-token".into(), Arc::new(String::new));
        let ok = HeaderValue::from_static("Bearer s3cret-token");
        assert!(e.admits(Some(&ok)));
        for bad in [
            "Bearer s3cret-toke",
            "Bearer ",
            "s3cret-token",
            "Basic s3cret-token",
        ] {
            assert!(!e.admits(Some(&HeaderValue::from_static(bad))), "{bad}");
        }
        assert!(!e.admits(None));
        let empty = MetricsEndpoint::new(String::new(), Arc::new(String::new));
        assert!(!empty.admits(Some(&HeaderValue::from_static("Bearer "))));
    }
}
