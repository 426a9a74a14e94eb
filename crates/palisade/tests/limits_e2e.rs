//! Request limits end to end: per user on the chat API and on `/v1`, per tenant, the
//! `RateLimit-*` and `Retry-After` headers, and the per-IP limit of the credential routes that a
//! forged `X-Forwarded-For` does not escape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Server, ADMIN_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn per_user_and_per_tenant_request_limits() {
    let s = Server::start(&[
        ("PALISADE_LIMITS__CHAT_PER_USER", "3/min"),
        ("PALISADE_LIMITS__API_PER_USER", "2/min"),
        ("PALISADE_LIMITS__REQUESTS_PER_TENANT", "8/min"),
    ]);
    let admin = s.admin_token().await;
    let (_, alice, _) = s.new_user(&admin, "alice", "user", None).await;
    let (_, bob, _) = s.new_user(&admin, "bob", "user", None).await;

    // Chat API: three requests a minute for alice (an invalid body still counts: it reached the
    // route), each answer saying how many are left.
    for left in [2, 1, 0] {
        let r = s
            .post(&alice, "/api/chat/message", json!({"message": ""}))
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(header(&r, "ratelimit-limit"), Some(3));
        assert_eq!(header(&r, "ratelimit-remaining"), Some(left));
        assert!(header(&r, "ratelimit-reset").unwrap() <= 60);
    }
    let r = s
        .post(&alice, "/api/chat/message", json!({"message": "hi"}))
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = header(&r, "retry-after").unwrap();
    assert!((1..=20).contains(&wait), "Retry-After {wait}");
    assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limited");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("chat requests per user") && msg.contains("try again in"),
        "{msg}"
    );
    // Bob is another user: his own budget.
    let r = s
        .post(&bob, "/api/chat/message", json!({"message": ""}))
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(header(&r, "ratelimit-remaining"), Some(2));
    // Reading is not limited.
    let r = s.get(&alice, "/api/chat/sessions").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "ratelimit-limit"), None);

    // /v1: its own budget (two a minute), an OpenAI-shaped 429.
    for _ in 0..2 {
        let r = s
            .post(
                &bob,
                "/v1/chat/completions",
                json!({"model": "smollm2-135m"}),
            )
            .await;
        // No messages: refused by the route (OpenAI's 400), after the limit counted it.
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(header(&r, "ratelimit-limit"), Some(2));
    }
    let r = s
        .post(
            &bob,
            "/v1/chat/completions",
            json!({"model": "smollm2-135m"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&r, "retry-after").is_some());
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error");

    // The tenant: 8 a minute over all its users. So far 3 + 1 + 2 (+ the refused ones, which
    // charged nothing) = 6; the admin's two more reach it, the next is refused as the tenant's.
    for _ in 0..2 {
        let r = s
            .post(&admin, "/api/chat/message", json!({"message": ""}))
            .await;
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "admin within the tenant's budget"
        );
    }
    let r = s
        .post(&admin, "/api/chat/message", json!({"message": ""}))
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("your organisation"));
}

#[tokio::test]
async fn a_forged_forwarded_for_does_not_escape_the_per_ip_limit() {
    let s = Server::start(&[("PALISADE_AUTH__IP_LIMIT_PER_MINUTE", "5")]);
    let mut statuses = Vec::new();
    for i in 0..7 {
        let r = s
            .client
            .post(s.url("/api/auth/login"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .header("x-real-ip", format!("198.51.100.{i}"))
            .header("forwarded", format!("for=192.0.2.{i}"))
            .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(statuses[6], StatusCode::TOO_MANY_REQUESTS);
}
