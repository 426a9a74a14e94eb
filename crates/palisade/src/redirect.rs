//! The optional plain-HTTP listener of `http.redirect_listen`: every request is answered with a
//! `308 Permanent Redirect` to the same path and query on HTTPS, and nothing else is served
//! there (no API, no UI, no metrics). A request without a usable `Host` gets a 400.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Binds `addr` and serves redirects to HTTPS on `https_port`; returns the bound address.
/// Each request head must arrive within `head_timeout` (slow-header clients are cut off).
pub fn spawn(
    addr: SocketAddr,
    https_port: u16,
    head_timeout: Duration,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the redirect listener {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |headers: HeaderMap, uri: Uri| async move {
        redirect(&headers, &uri, https_port)
    });
    let mut server = axum_server::from_tcp(listener);
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout);
    tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::error!(error = %e, "the redirect listener stopped");
        }
    });
    Ok(local)
}

/// The answer to one request on the plain-HTTP listener.
fn redirect(headers: &HeaderMap, uri: &Uri, https_port: u16) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(host_name);
    let Some(host) = host else {
        let body = json!({"error": {"code": "bad_host", "message": "a Host header naming this server is required; use https://"}});
        return with_headers((StatusCode::BAD_REQUEST, axum::Json(body)).into_response());
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            with_headers((StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, v)]).into_response())
        }
        Err(_) => with_headers(StatusCode::BAD_REQUEST.into_response()),
    }
}

fn with_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The host of a `Host` header without its port: a DNS name, an IPv4 address or a bracketed
/// IPv6 address. Anything else (user info, paths, odd characters) is refused, so a crafted
/// header cannot turn the redirect into one to another path or scheme.
fn host_name(h: &str) -> Option<&str> {
    let h = h.trim();
    let host = if let Some(rest) = h.strip_prefix('[') {
        let end = rest.find(']')?;
        let inner = &rest[..end];
        let after = &rest[end + 1..];
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !port_ok
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        &h[..end + 2]
    } else {
        let name = match h.rsplit_once(':') {
            Some((n, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => n,
            Some(_) => return None,
            None => h,
        };
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with(['.', '-']);
        if !ok {
            return None;
        }
        name
    };
    Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_names_or_addresses_only() {
        assert_eq!(host_name("chat.example.com"), Some("chat.example.com"));
        assert_eq!(host_name("chat.example.com:80"), Some("chat.example.com"));
        assert_eq!(host_name("10.0.0.7:8080"), Some("10.0.0.7"));
        assert_eq!(host_name("[::1]:80"), Some("[::1]"));
        assert_eq!(host_name("[fe80::1]"), Some("[fe80::1]"));
        for bad in [
            "",
            "evil.com/path",
            "user@evil.com",
            "evil.com:80:80",
            "evil.com:",
            "[::1]x",
            "[::1",
            ".evil.com",
            "evil.com\\@x",
            "a b",
        ] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn requests_go_to_the_same_path_on_https() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("chat.example.com:80"),
        );
        let uri: Uri = "/api/models?x=1".parse().unwrap_or_default();
        let r = redirect(&h, &uri, 443);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok()),
            Some("https://chat.example.com/api/models?x=1")
        );
        let r = redirect(&h, &uri, 8443);
        assert_eq!(
            r.headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok()),
            Some("https://chat.example.com:8443/api/models?x=1")
        );
        assert_eq!(
            redirect(&HeaderMap::new(), &uri, 443).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
