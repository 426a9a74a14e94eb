//! The security headers of every answer, set by one layer.
//!
//! They were ten `SetResponseHeaderLayer`s, one per header. axum applies a router's layers to
//! each route, so a route is a stack of boxed services, one per layer, and every request clones
//! its route's whole stack (and each `from_fn` middleware the stack below it) and drops the
//! clones again: ten levels of the stack for ten constant headers. This is one level, and it
//! never clones what it wraps.

use std::task::{Context, Poll};

use axum::http::{header, HeaderName, HeaderValue, Response};
use futures::future::{FutureExt, Map};
use tower::{Layer, Service};

/// Set on every answer that does not carry its own.
static HEADERS: [(HeaderName, HeaderValue); 10] = [
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    (
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    ),
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
    ),
    // The legacy XSS auditor is itself an attack surface: off, as OWASP advises.
    (
        HeaderName::from_static("x-xss-protection"),
        HeaderValue::from_static("0"),
    ),
    (
        HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static(
            "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()",
        ),
    ),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    ),
    (
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    ),
];

/// Adds [`HEADERS`] to an answer, each unless the answer already has it (the web UI's shell
/// sets a content security policy of its own, for instance).
fn add_headers<B, E>(res: Result<Response<B>, E>) -> Result<Response<B>, E> {
    res.map(|mut res| {
        let h = res.headers_mut();
        for (name, value) in &HEADERS {
            if !h.contains_key(name) {
                h.insert(name.clone(), value.clone());
            }
        }
        res
    })
}

/// The layer of [`SecurityHeaders`].
#[derive(Clone, Copy, Default)]
pub(crate) struct SecurityHeadersLayer;

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;

    fn layer(&self, inner: S) -> SecurityHeaders<S> {
        SecurityHeaders { inner }
    }
}

/// Sets the security headers on what `inner` answers.
#[derive(Clone)]
pub(crate) struct SecurityHeaders<S> {
    inner: S,
}

type Answer<B, E> = Result<Response<B>, E>;

impl<S, Req, B> Service<Req> for SecurityHeaders<S>
where
    S: Service<Req, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Map<S::Future, fn(Answer<B, S::Error>) -> Answer<B, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner
            .call(req)
            .map(add_headers::<B, S::Error> as fn(_) -> _)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[tokio::test]
    async fn sets_every_header_and_keeps_an_answers_own() {
        let svc = tower::service_fn(|own: bool| async move {
            let mut r = Response::new(());
            if own {
                r.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static("default-src 'self'"),
                );
            }
            Ok::<_, Infallible>(r)
        });
        let mut svc = SecurityHeadersLayer.layer(svc);
        let plain = svc.call(false).await.unwrap();
        for (name, value) in &HEADERS {
            assert_eq!(plain.headers().get(name), Some(value), "{name}");
        }
        assert_eq!(plain.headers().len(), HEADERS.len());
        let own = svc.call(true).await.unwrap();
        assert_eq!(
            own.headers().get(header::CONTENT_SECURITY_POLICY).unwrap(),
            "default-src 'self'"
        );
        assert_eq!(own.headers().len(), HEADERS.len());
    }
}
