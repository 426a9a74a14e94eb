//! What every remote provider implements, and the HTTP plumbing they share.

use std::time::Duration;

use palisade_core::provider::{GenerationParams, GenerationStream, PromptMessage, ProviderError};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use tracing::Instrument;

/// One call to an upstream, after routing and context fitting.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// The model id the upstream expects.
    pub model: String,
    pub messages: Vec<PromptMessage>,
    pub params: GenerationParams,
    /// Sent as `X-Request-Id`.
    pub request_id: String,
}

/// An upstream's address, parsed once: each request clones the parsed URL instead of parsing
/// the text again (reqwest parses a `&str` on every call, host name processing included).
#[derive(Debug, Clone)]
pub struct Endpoint {
    text: String,
    /// `None` when the text is no URL: the request then fails as reqwest reports it.
    parsed: Option<reqwest::Url>,
}

impl Endpoint {
    pub fn new(text: String) -> Self {
        let parsed = reqwest::Url::parse(&text).ok();
        Self { text, parsed }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A remote model server.
#[async_trait::async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// Sends the request and returns the answer's events. Errors before the answer starts
    /// (connection refused, an error status) are returned here.
    async fn start(&self, req: &UpstreamRequest) -> Result<GenerationStream, ProviderError>;
}

/// TLS material of one upstream beyond the public roots, already read from its files.
#[derive(Default)]
pub struct TlsMaterial {
    /// PEM CA certificates trusted in addition to the public roots...
    pub ca_pem: Option<Vec<u8>>,
    /// ...or instead of them.
    pub ca_only: bool,
    /// A client identity: the PEM certificate chain followed by the PEM private key.
    pub identity_pem: Option<Vec<u8>>,
    /// Offer HTTP/2 by ALPN (one shared connection); HTTP/1.1 only otherwise.
    pub http2: bool,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The identity holds a private key: only its presence is shown.
        f.debug_struct("TlsMaterial")
            .field("ca", &self.ca_pem.is_some())
            .field("ca_only", &self.ca_only)
            .field("identity", &self.identity_pem.is_some())
            .field("http2", &self.http2)
            .finish()
    }
}

/// An HTTP client for one upstream: TCP_NODELAY (Nagle would add ~40 ms per stream), the
/// model's connect timeout, pooled keep-alive connections, HTTP/1.1.
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    http_client_with(connect_timeout, &TlsMaterial::default())
}

/// [`http_client`] with a private CA and/or a client certificate (mutual TLS), and HTTP/2 when
/// `tls.http2` is set: offered by ALPN, every request multiplexed over one connection, pinged
/// every 30 s so a dead peer is noticed (10 s to answer).
pub fn http_client_with(
    connect_timeout: Duration,
    tls: &TlsMaterial,
) -> Result<reqwest::Client, ProviderError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")));
    builder = if tls.http2 {
        builder
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
    } else {
        builder.http1_only()
    };
    if let Some(pem) = &tls.ca_pem {
        // Parse errors are not passed on: they could quote the file.
        let certs = reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default();
        if certs.is_empty() {
            return Err(ProviderError::Internal(
                "the upstream CA file holds no PEM certificate".into(),
            ));
        }
        if tls.ca_only {
            builder = builder.tls_built_in_root_certs(false);
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    if let Some(pem) = &tls.identity_pem {
        let identity = reqwest::Identity::from_pem(pem).map_err(|_| {
            ProviderError::Internal(
                "the upstream client certificate and key are not a PEM certificate and key".into(),
            )
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| ProviderError::Internal(format!("building the HTTP client: {e}")))
}

/// A transport failure as a provider error (retryable ones are `Unavailable`/`Timeout`).
pub fn transport_error(what: &str, e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout(format!("{what}: timed out"))
    } else if e.is_connect() {
        ProviderError::Unavailable(format!("{what}: cannot connect"))
    } else {
        ProviderError::Unavailable(format!("{what}: transport error ({e})"))
    }
}

/// An upstream error status as a provider error. The upstream's body is never passed on: only
/// its status (and, for logs, its error code when it sends one in JSON).
pub fn status_error(
    what: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> ProviderError {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            e.get("code")
                .or_else(|| e.get("type"))
                .and_then(|c| c.as_str())
                .map(|s| s.chars().take(64).collect::<String>())
        })
        .unwrap_or_default();
    let detail = format!("{what}: upstream answered {status} {code}");
    match status.as_u16() {
        429 => {
            let retry_after_secs = headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(5)
                .clamp(1, 3600);
            tracing::warn!(%detail, "upstream rate limit");
            ProviderError::Overloaded { retry_after_secs }
        }
        400 | 413 | 422 => {
            tracing::warn!(%detail, "upstream refused the request");
            ProviderError::InvalidRequest("the model refused the request".into())
        }
        // Wrong credentials or a misconfigured model: an operator problem, not worth a retry.
        401 | 403 | 404 => ProviderError::Internal(detail),
        408 | 504 => ProviderError::Timeout(detail),
        _ => ProviderError::Unavailable(detail),
    }
}

/// POSTs a JSON request with the request id and the bearer key; an error status becomes a
/// typed error (see [`status_error`]).
pub async fn post_json<B: serde::Serialize + ?Sized>(
    http: &reqwest::Client,
    what: &str,
    url: &Endpoint,
    api_key: Option<&str>,
    request_id: &str,
    body: &B,
) -> Result<reqwest::Response, ProviderError> {
    let span = tracing::debug_span!(
        "upstream.request",
        otel.kind = "client",
        upstream = what,
        http.request.method = "POST",
        http.response.status_code = tracing::field::Empty,
    );
    let call = match &url.parsed {
        Some(u) => http.post(u.clone()),
        None => http.post(url.as_str()),
    };
    let mut call = call.header("x-request-id", request_id).json(body);
    // The trace goes on to the upstream (another Palisade node, a gateway) when traces are
    // exported: the headers name this request's span.
    for (name, value) in span.in_scope(palisade_core::trace::outgoing) {
        call = call.header(name, value);
    }
    if let Some(key) = api_key {
        call = call.bearer_auth(key);
    }
    let res = call
        .send()
        .instrument(span.clone())
        .await
        .map_err(|e| transport_error(what, &e))?;
    let status = res.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_success() {
        return Ok(res);
    }
    let headers = res.headers().clone();
    let body = error_body(res, 4096).await;
    Err(status_error(what, status, &headers, &body))
}

/// Reads at most `limit` bytes of an error body (for the error code only).
async fn error_body(res: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut res = res;
    while out.len() < limit {
        match res.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c[..c.len().min(limit - out.len())]),
            _ => break,
        }
    }
    out
}
