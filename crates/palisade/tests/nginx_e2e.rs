//! Black-box: Debian's nginx in front of the real binary with the shipped configuration
//! (`deploy/nginx/palisade.conf`, only its addresses and certificate paths rewritten for
//! loopback): `nginx -t` passes, and through nginx a user signs in, an answer streams over SSE
//! token by token (no buffering), a chat runs over a WebSocket, security headers arrive intact,
//! `/metrics` stays closed and spec 003's credential rate-limit zone answers 429.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::nginx::{site, start_nginx};
use common::oidc::free_port;
use common::{Server, ADMIN_PASSWORD};
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn palisade_behind_nginx() {
    let s = Server::start(&[("PALISADE_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1\"]")]);
    let upstream = s.base.trim_start_matches("https://").to_string();
    let (port, http_port) = (free_port(), free_port());
    let nginx = start_nginx(
        &site(&[&upstream], port, http_port, &s.data_dir().join("tls")),
        port,
    );
    let front = format!("https://127.0.0.1:{port}");
    let at = |p: &str| format!("{front}{p}");
    // `s.client` trusts the server's certificate, which nginx serves too.
    let c = &s.client;

    // Plain HTTP is redirected to HTTPS.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{http_port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("https://"));

    // Health, security headers from Palisade passed through, metrics closed.
    let r = c.get(at("/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", nginx.error_log());
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers().contains_key("content-security-policy"));
    assert!(r.headers().contains_key("x-request-id"));
    assert!(r
        .headers()
        .get("server")
        .is_none_or(|v| v != "nginx/1.22.1"));
    let h: Value = r.json().await.unwrap();
    assert_eq!(h["status"], "healthy");
    let r = c.get(at("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Sign in through nginx.
    let r = c
        .post(at("/api/auth/login"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    // An answer streams through nginx as it is generated: tokens arrive spread over time,
    // not in one buffered piece at the end.
    let r = c
        .post(at("/api/chat/message"))
        .bearer_auth(&token)
        .json(
            &json!({"message": "Write a short story about a lighthouse keeper.",
                      "temperature": 0, "max_tokens": 96, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = r.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        if String::from_utf8_lossy(&chunk).contains("\"token\"") {
            arrivals.push(Instant::now());
        }
    }
    assert!(text.contains("\"type\":\"end\""), "{text}");
    assert!(arrivals.len() >= 5, "{} token chunks", arrivals.len());
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread > Duration::from_millis(150),
        "tokens arrived within {spread:?}: nginx buffered the stream"
    );

    // The chat WebSocket through nginx (Origin = the front's origin).
    let r = c
        .post(at("/api/chat/ws/ticket"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ticket = r.json::<Value>().await.unwrap()["ticket"]
        .as_str()
        .unwrap()
        .to_string();
    let mut req = format!("wss://127.0.0.1:{port}/api/chat/ws?ticket={ticket}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", front.parse().unwrap());
    let tls = common::tls_to(&s, &format!("127.0.0.1:{port}")).await;
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .unwrap_or_else(|e| panic!("WebSocket through nginx: {e}\n{}", nginx.error_log()));
    let mut types = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut sent = false;
    while Instant::now() < deadline {
        let frame = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("no WebSocket message within 60 s")
            .expect("socket closed")
            .expect("socket error");
        let Message::Text(t) = frame else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        let kind = v["type"].as_str().unwrap_or("").to_string();
        types.push(kind.clone());
        if kind == "ready" && !sent {
            ws.send(Message::Text(
                json!({"type": "message", "content": "Name three colours.", "max_tokens": 24})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
            sent = true;
        }
        if kind == "message" || kind == "error" {
            break;
        }
    }
    assert_eq!(
        types.first().map(String::as_str),
        Some("ready"),
        "{types:?}"
    );
    assert!(types.iter().any(|t| t == "token"), "{types:?}");
    assert_eq!(
        types.last().map(String::as_str),
        Some("message"),
        "{types:?}"
    );

    // Spec 003's credential zone (5/min, burst 5) answers 429 before Palisade is asked.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = c
            .post(at("/api/auth/login"))
            .json(&json!({"username": "nobody", "password": "wrong-password-123"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    drop(nginx);
}
