//! Black-box: bad input, authentication and isolation between users, against the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{error_code, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn session_count(s: &Server, token: &str) -> u64 {
    let v: Value = s
        .get(token, "/api/chat/sessions")
        .await
        .json()
        .await
        .unwrap();
    v["total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_changes_nothing() {
    let s = Server::start(&[]);
    let token = s.admin_token().await;
    let r = s
        .post(
            &token,
            "/api/chat/message",
            json!({"message": "Say hi.", "max_tokens": 8}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let session = r.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let messages_before: Value = s
        .get(&token, &format!("/api/chat/sessions/{session}/messages"))
        .await
        .json()
        .await
        .unwrap();
    let url = s.url("/api/chat/message");

    // Malformed JSON.
    let r = s
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"message\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_json");
    // Wrong content type.
    let r = s
        .client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("{\"message\":\"hi\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await,
        "unsupported_media_type"
    );
    // Wrong field types.
    let r = s
        .post(&token, "/api/chat/message", json!({"message": 42}))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_body"
    );
    // Oversized body (over the 256 KiB limit).
    // The server answers 413 as soon as it sees the Content-Length and closes the connection;
    // a client still writing the rest may lose that answer to the race, so try a few times.
    // Its own client: the connection the server closes must not go back into the shared pool.
    let big = "x".repeat(400 * 1024);
    let mut answer = None;
    for _ in 0..5 {
        let sent = s
            .no_redirect_client()
            .post(s.url("/api/chat/message"))
            .bearer_auth(&token)
            .json(&json!({"message": big}))
            .send()
            .await;
        if let Ok(r) = sent {
            answer = Some(r);
            break;
        }
    }
    let r = answer.expect("no answer to the oversized body in 5 attempts");
    assert_eq!(
        error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await,
        "payload_too_large"
    );
    // Empty and whitespace-only message.
    for m in ["", "   \n "] {
        let r = s
            .post(&token, "/api/chat/message", json!({"message": m}))
            .await;
        assert_eq!(
            error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
            "empty_message"
        );
    }
    // 100 kB message: within the body limit, over the message limit.
    let r = s
        .post(
            &token,
            "/api/chat/message",
            json!({"message": "y".repeat(100_000)}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "message_too_long"
    );
    // Unknown session, invalid UUID.
    let unknown = "01890a5d-ac96-774b-bcce-b302099a8057";
    let r = s
        .post(
            &token,
            "/api/chat/message",
            json!({"message": "hi", "session_id": unknown}),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = s
        .post(
            &token,
            "/api/chat/message",
            json!({"message": "hi", "session_id": "nope"}),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_id");
    let r = s
        .get(&token, "/api/chat/sessions/not-a-uuid/messages")
        .await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_id");
    let r = s
        .get(&token, &format!("/api/chat/sessions/{unknown}/messages"))
        .await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = s
        .delete(&token, &format!("/api/chat/sessions/{unknown}"))
        .await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    // max_tokens negative, zero, huge; other parameters out of range.
    for (body, code) in [
        (
            json!({"message": "hi", "max_tokens": -5}),
            "invalid_max_tokens",
        ),
        (
            json!({"message": "hi", "max_tokens": 0}),
            "invalid_max_tokens",
        ),
        (
            json!({"message": "hi", "max_tokens": 1_000_000_000_000i64}),
            "invalid_max_tokens",
        ),
        (
            json!({"message": "hi", "temperature": 9.5}),
            "invalid_temperature",
        ),
        (json!({"message": "hi", "top_p": 0}), "invalid_top_p"),
        (json!({"message": "hi", "model": "gpt-99"}), "unknown_model"),
        (json!({"message": "hi", "stop": ["", "x"]}), "invalid_stop"),
    ] {
        let r = s.post(&token, "/api/chat/message", body).await;
        assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, code);
    }
    let r = s
        .post(
            &token,
            "/api/chat/message",
            json!({"message": "hi", "max_tokens": "lots"}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_body"
    );
    // Bad query parameters.
    let r = s.get(&token, "/api/chat/sessions?limit=abc").await;
    assert_eq!(
        error_code(r, StatusCode::BAD_REQUEST).await,
        "invalid_query"
    );
    let r = s.get(&token, "/api/chat/sessions?limit=1000").await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_limit"
    );
    let r = s.get(&token, "/api/chat/sessions?sort=name").await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_sort"
    );
    // Expired, garbled and missing tokens.
    for bad in [
        "garbage",
        "a.b.c",
        "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.eyJzdWIiOiJ4In0.",
    ] {
        let r = s
            .client
            .get(s.url("/api/chat/sessions"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_token"
        );
    }
    let r = s
        .client
        .get(s.url("/api/chat/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "unauthenticated"
    );
    // Unknown route and wrong method still answer in the error shape.
    let r = s.get(&token, "/api/nothing-here").await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = s
        .client
        .put(s.url("/api/chat/message"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r, StatusCode::METHOD_NOT_ALLOWED).await,
        "method_not_allowed"
    );

    // Nothing changed, and the server still serves.
    assert_eq!(session_count(&s, &token).await, 1);
    let messages_after: Value = s
        .get(&token, &format!("/api/chat/sessions/{session}/messages"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(messages_before, messages_after);
    let r = s
        .post(
            &token,
            "/api/chat/message",
            json!({"message": "Say hi.", "max_tokens": 4, "session_id": session}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_touch_each_others_sessions() {
    let s = Server::start(&[("PALISADE_AUTH__REGISTRATION", "open")]);
    let admin = s.admin_token().await;
    // A registers through the API; B is created with the CLI.
    let r = s.post_public("/api/auth/register", json!({"username": "alice", "password": "amber-violin-orbit-5521", "email": "alice@example.com"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["role"], "user");
    let r = s
        .post_public(
            "/api/auth/register",
            json!({"username": "alice", "password": "silver-canyon-thimble-42"}),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "conflict");
    let mut child = common::command_in(s.data_dir())
        .args([
            "user",
            "create",
            "--username",
            "bob",
            "--role",
            "user",
            "--password-stdin",
            "--data-dir",
        ])
        .arg(s.data_dir())
        .env("PALISADE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"copper-meadow-lantern-8734\n")
        .unwrap();
    assert!(child.wait().unwrap().success());

    let a = s.login("alice", "amber-violin-orbit-5521").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let b = s.login("bob", "copper-meadow-lantern-8734").await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .post(
            &a,
            "/api/chat/message",
            json!({"message": "My secret plan is X.", "max_tokens": 8}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let sid = r.json::<Value>().await.unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();

    // B sees nothing of A's: list, read, continue, rename, delete all answer as if absent.
    assert_eq!(session_count(&s, &b).await, 0);
    assert_eq!(session_count(&s, &admin).await, 0);
    let r = s
        .get(&b, &format!("/api/chat/sessions/{sid}/messages"))
        .await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = s
        .post(
            &b,
            "/api/chat/message",
            json!({"message": "hi", "session_id": sid}),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = s
        .client
        .patch(s.url(&format!("/api/chat/sessions/{sid}")))
        .bearer_auth(&b)
        .json(&json!({"title": "pwned"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = s.delete(&b, &format!("/api/chat/sessions/{sid}")).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    // A's session is intact.
    let page: Value = s
        .get(&a, &format!("/api/chat/sessions/{sid}/messages"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    let list: Value = s.get(&a, "/api/chat/sessions").await.json().await.unwrap();
    assert_eq!(list["sessions"][0]["title"], "My secret plan is X.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refresh_logout() {
    let s = Server::start(&[]);
    // Registration is closed by default.
    let r = s
        .post_public(
            "/api/auth/register",
            json!({"username": "mallory", "password": "mallory-is-here-1234567"}),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "disabled");

    // Wrong password and unknown user answer identically.
    let wrong = s
        .post_public(
            "/api/auth/login",
            json!({"username": "admin", "password": "not-the-password"}),
        )
        .await;
    let unknown = s
        .post_public(
            "/api/auth/login",
            json!({"username": "nobody", "password": "not-the-password"}),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.text().await.unwrap(), unknown.text().await.unwrap());

    let t = s.login("admin", common::ADMIN_PASSWORD).await;
    assert_eq!(t["token_type"], "bearer");
    assert_eq!(t["expires_in"], 900);
    assert_eq!(
        s.get(t["access_token"].as_str().unwrap(), "/api/auth/me")
            .await
            .status(),
        StatusCode::OK
    );
    let refresh1 = t["refresh_token"].as_str().unwrap();
    // The access token is an EdDSA JWT whose key is in the JWKS.
    let jwks: Value = s
        .client
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "EdDSA");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");

    // Refresh with the body form rotates the token.
    let r = s
        .post_public("/api/auth/refresh", json!({"refresh_token": refresh1}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t2: Value = r.json().await.unwrap();
    let refresh2 = t2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh2, refresh1);
    // Spec 003 form: Authorization: Bearer <refresh_token>.
    let r = s
        .client
        .post(s.url("/api/auth/refresh"))
        .bearer_auth(&refresh2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let refresh3 = r.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    // Reusing a rotated token revokes the whole family.
    let r = s
        .post_public("/api/auth/refresh", json!({"refresh_token": refresh1}))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    let r = s
        .post_public("/api/auth/refresh", json!({"refresh_token": refresh3}))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );

    // Logout ends the access token and the refresh family.
    let t = s.login("admin", common::ADMIN_PASSWORD).await;
    let access = t["access_token"].as_str().unwrap();
    let refresh = t["refresh_token"].as_str().unwrap();
    assert_eq!(s.get(access, "/api/auth/me").await.status(), StatusCode::OK);
    let r = s
        .client
        .post(s.url("/api/auth/logout"))
        .bearer_auth(access)
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s.get(access, "/api/auth/me").await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    let r = s
        .post_public("/api/auth/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    // Every response carries a request id and security headers.
    let r = s.client.get(s.url("/healthz")).send().await.unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}
