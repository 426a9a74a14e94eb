//! Black-box: HTTP hardening of the real binary. Security headers on every answer (200, 401,
//! 404, 405, a 503 from a dead upstream), request ids kept or replaced, CORS for configured
//! origins only (preflight, refused and `null` origins), and slow clients cut off (a slow
//! request head, a TLS handshake that never comes) while others are served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::Server;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOWED: &str = "https://chat.example.test";

fn config() -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        r#"
[http]
cors_origins = ["{ALLOWED}"]
header_read_timeout_secs = 2

[models.down]
provider = "openai"
base_url = "http://127.0.0.1:1/v1"
trust_zone = "internal"
"#
    )
    .unwrap();
    f
}

fn assert_hardened(h: &HeaderMap, what: &str) {
    let get = |name: &str| {
        h.get(name)
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    assert!(
        get("strict-transport-security").contains("max-age="),
        "{what}"
    );
    let csp = get("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert_eq!(get("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
    assert_eq!(get("x-xss-protection"), "0", "{what}");
    assert!(get("permissions-policy").contains("camera=()"), "{what}");
    assert_eq!(get("cross-origin-opener-policy"), "same-origin", "{what}");
    assert!(!get("x-request-id").is_empty(), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_request_ids_cors_and_slow_clients() {
    let cfg = config();
    let s = Server::start(&[
        ("PALISADE_CONFIG", cfg.path().to_str().unwrap()),
        ("PALISADE_LOG", "warn,palisade::access=info"),
    ]);
    let admin = s.admin_token().await;

    // Security headers on success, refusals and errors alike.
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_hardened(r.headers(), "200");
    let r = s.client.get(s.url("/api/auth/me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_hardened(r.headers(), "401");
    let r = s.get(&admin, "/api/no-such-route").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_hardened(r.headers(), "404");
    let r = s
        .client
        .delete(s.url("/healthz"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_hardened(r.headers(), "405");
    let r = s
        .post(
            &admin,
            "/api/chat/message",
            json!({"message": "hello", "model": "down"}),
        )
        .await;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_hardened(r.headers(), "5xx");
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("127.0.0.1:1"),
        "an upstream address leaked: {body}"
    );

    // A plausible request id comes back as sent; anything else is replaced.
    let r = s
        .client
        .get(s.url("/healthz"))
        .header("x-request-id", "trace-42.abc:7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-42.abc:7");
    // The access log names it, with the route pattern, status and the caller's ids.
    let r = s
        .client
        .get(s.url("/api/auth/me?secret=query-must-not-be-logged"))
        .bearer_auth(&admin)
        .header("x-request-id", "trace-43")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let me: serde_json::Value = r.json().await.unwrap();
    let uid = me["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = s.log();
    let line = |id: &str| {
        log.lines()
            .find(|l| l.contains("palisade::access") && l.contains(id))
            .unwrap_or_else(|| panic!("no access line for {id}:\n{log}"))
            .to_string()
    };
    let health = line("trace-42.abc:7");
    assert!(
        health.contains("/healthz") && health.contains("200"),
        "{health}"
    );
    let me_line = line("trace-43");
    assert!(
        me_line.contains("/api/auth/me") && me_line.contains(&uid),
        "{me_line}"
    );
    assert!(!log.contains("query-must-not-be-logged"));
    assert!(!log.contains(&admin), "a token reached the log");
    for bad in ["has space", "<script>", &"x".repeat(200)] {
        let r = s
            .client
            .get(s.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "{id}");
    }

    // CORS: the configured origin may call the API with a bearer token; others, and the
    // `null` origin of sandboxed documents, get nothing a browser would accept.
    let preflight = |origin: &str| {
        s.client
            .request(reqwest::Method::OPTIONS, s.url("/api/chat/message"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let r = preflight(ALLOWED).await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], ALLOWED);
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let allowed_headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    assert!(h.get("access-control-allow-credentials").is_none());
    assert_hardened(h, "preflight");
    for refused in [
        "https://evil.example.test",
        "null",
        "https://chat.example.test.evil.test",
    ] {
        let r = preflight(refused).await.unwrap();
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{refused} was allowed"
        );
    }
    let r = s
        .client
        .get(s.url("/api/auth/me"))
        .bearer_auth(&admin)
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], ALLOWED);
    assert!(r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase()
        .contains("x-request-id"));
    let r = s
        .client
        .get(s.url("/api/auth/me"))
        .bearer_auth(&admin)
        .header("origin", "https://evil.example.test")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    // Spec 003's health routes: the short one is public, the detailed one for platform admins.
    let r = s.client.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h: serde_json::Value = r.json().await.unwrap();
    assert_eq!(h["status"], "healthy");
    assert!(h["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(h.get("components").is_none());
    let r = s
        .client
        .get(s.url("/health/detailed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (_, user, _) = s.new_user(&admin, "hardening-user", "user", None).await;
    let r = s.get(&user, "/health/detailed").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s.get(&admin, "/health/detailed").await;
    assert_eq!(r.status(), StatusCode::OK);
    let d: serde_json::Value = r.json().await.unwrap();
    assert_eq!(d["status"], "healthy", "{d}");
    assert_eq!(d["components"]["database"]["status"], "healthy", "{d}");
    assert!(
        d["components"]["database"]["response_time_ms"].is_u64(),
        "{d}"
    );
    assert_eq!(d["components"]["model"]["status"], "healthy", "{d}");
    assert!(
        d["components"]["memory"]["used_mb"].as_u64().unwrap() > 0,
        "{d}"
    );
    assert!(d["version"].is_string());
    // Slow clients: one sends its request head a byte a second, another opens TCP and never
    // speaks TLS. Both are cut off after the 2 s bound; a normal client is served meanwhile.
    let mut slow = common::tls_stream(&s).await;
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let drip = async {
        for b in b"X-Slow: 1234567890\r\n".iter().cycle().take(30) {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
        (started.elapsed(), buf)
    };
    let mute = async {
        let addr = s.base.trim_start_matches("https://").to_string();
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let at = Instant::now();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("a silent client is never cut off")
            .unwrap_or(0);
        (at.elapsed(), n)
    };
    let served = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = s.client.get(s.url("/healthz")).send().await.unwrap();
        r.status()
    };
    let ((slow_after, answer), (mute_after, mute_read), status) = tokio::join!(drip, mute, served);
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("200 OK"),
        "the slow request was served: {text}"
    );
    assert!(
        slow_after < Duration::from_secs(6),
        "the slow client held on for {slow_after:?}"
    );
    assert_eq!(mute_read, 0);
    assert!(
        mute_after >= Duration::from_millis(1500) && mute_after < Duration::from_secs(6),
        "{mute_after:?}"
    );
    drop(s);

    // Without `http.cors_origins`, no origin is allowed.
    let plain = Server::start(&[]);
    let r = plain
        .client
        .request(reqwest::Method::OPTIONS, plain.url("/api/chat/message"))
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
