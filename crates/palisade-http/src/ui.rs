//! The web UI: static ES modules, styles and vendored libraries embedded in the binary at
//! build time (`crates/palisade-http/ui/`), served under `/` and `/ui/` with a strict
//! Content-Security-Policy: scripts and styles from this origin only, nothing inline, no
//! plugins, no framing, no `<base>`. The UI talks only to the public API.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

#[derive(rust_embed::Embed)]
#[folder = "ui/"]
#[exclude = "*.map"]
struct Assets;

/// The policy of every UI response. `img-src data:` is for the TOTP QR code drawn locally;
/// model answers cannot load images from elsewhere.
pub const UI_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" | "webmanifest" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = Assets::get(path) else {
        return ApiError::not_found().into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, content_type(path))],
            file.data.into_owned(),
        )
            .into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(UI_CSP),
    );
    // Revalidated on every load (cheap with the ETag), so an upgrade is picked up at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
    );
    res
}

/// `GET /`: the application shell.
#[utoipa::path(
    get,
    path = "/",
    tag = "ui",
    responses((status = 200, description = "The web UI", content_type = "text/html", body = String)),
    security(())
)]
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /ui/{*path}`: scripts, styles, icons and vendored libraries.
#[utoipa::path(
    get,
    path = "/ui/{path}",
    tag = "ui",
    params(("path" = String, Path, description = "Asset path")),
    responses((status = 200, description = "A web UI asset", content_type = "application/octet-stream", body = String)),
    security(())
)]
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    if path.split('/').any(|seg| seg.is_empty() || seg == "..") {
        return ApiError::not_found().into_response();
    }
    serve(&path, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_and_modules_are_embedded() {
        for f in ["index.html", "app.css", "js/main.js", "js/api.js"] {
            assert!(Assets::get(f).is_some(), "{f}");
        }
        assert_eq!(content_type("js/main.js"), "text/javascript; charset=utf-8");
        // No inline script or style in the shell (the CSP would block them anyway).
        let html = Assets::get("index.html")
            .map(|f| f.data.into_owned())
            .unwrap_or_default();
        let html = String::from_utf8_lossy(&html);
        assert!(!html.contains("<script>") && !html.contains("style="));
        assert!(!html.contains("<style"));
    }
}
