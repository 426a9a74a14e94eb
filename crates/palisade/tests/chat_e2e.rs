//! Black-box: the real binary, the real model. Login, ask, stream, list, read, delete.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{error_code, sse_events, Server};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_json_sse_list_read_delete() {
    let s = Server::start(&[]);
    assert!(s
        .stdout
        .iter()
        .any(|l| l.contains("created the first admin")));
    let health: Value = s
        .client
        .get(s.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    let token = s.admin_token().await;
    let me: Value = s.get(&token, "/api/auth/me").await.json().await.unwrap();
    assert_eq!(me["username"], "admin");
    assert_eq!(me["role"], "admin");

    // JSON answer.
    let r = s
        .post(
            &token,
            "/api/chat/message",
            json!({"message": QUESTION, "temperature": 0, "max_tokens": 64}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    let content = answer["content"].as_str().unwrap();
    assert!(
        content.contains("Paris"),
        "JSON answer without Paris: {content:?}"
    );
    assert_eq!(answer["role"], "assistant");
    assert_eq!(answer["metadata"]["model"], "smollm2-135m");
    assert!(answer["metadata"]["tokens_used"].as_u64().unwrap() > 0);
    assert!(answer["metadata"]["response_time_ms"].as_u64().is_some());
    let json_session = answer["session_id"].as_str().unwrap().to_string();

    // SSE answer in a new session.
    let r = s
        .post(
            &token,
            "/api/chat/message",
            json!({"message": QUESTION, "temperature": 0, "max_tokens": 64, "stream": true}),
        )
        .await;
    let events = sse_events(r).await;
    assert_eq!(events[0]["type"], "start");
    let sse_session = events[0]["session_id"].as_str().unwrap().to_string();
    assert_ne!(sse_session, json_session);
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "token")
        .map(|e| e["content"].as_str().unwrap())
        .collect();
    assert!(text.contains("Paris"), "SSE answer without Paris: {text:?}");
    let end = events.last().unwrap();
    assert_eq!(end["type"], "end");
    let end_id = end["message_id"].as_str().unwrap();

    // A follow-up in the same session sees the earlier turns.
    let r = s
        .post(&token, "/api/chat/message", json!({"message": "Repeat the name of that city.", "session_id": sse_session, "temperature": 0, "max_tokens": 32}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let follow: Value = r.json().await.unwrap();
    assert_eq!(follow["session_id"], sse_session.as_str());
    assert!(
        follow["metadata"]["prompt_tokens"].as_u64().unwrap() > 40,
        "history not sent: {follow}"
    );

    // List.
    let list: Value = s
        .get(&token, "/api/chat/sessions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 2);
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(
        sessions[0]["id"],
        sse_session.as_str(),
        "most recently updated first"
    );
    assert_eq!(sessions[0]["message_count"], 4);
    assert_eq!(sessions[1]["title"], QUESTION);

    // Read.
    let page: Value = s
        .get(
            &token,
            &format!("/api/chat/sessions/{sse_session}/messages"),
        )
        .await
        .json()
        .await
        .unwrap();
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[0]["role"], "user");
    assert_eq!(msgs[0]["content"], QUESTION);
    assert_eq!(msgs[1]["id"], end_id);
    assert_eq!(msgs[1]["content"].as_str().unwrap(), text);
    assert_eq!(page["has_more"], false);
    // Pagination backwards.
    let older: Value = s
        .get(
            &token,
            &format!(
                "/api/chat/sessions/{sse_session}/messages?limit=2&before_id={}",
                msgs[2]["id"].as_str().unwrap()
            ),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(older["messages"].as_array().unwrap().len(), 2);
    assert_eq!(older["messages"][1]["id"], end_id);

    // Rename.
    let r = s
        .client
        .patch(s.url(&format!("/api/chat/sessions/{sse_session}")))
        .bearer_auth(&token)
        .json(&json!({"title": "Capitals"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Delete.
    let r = s
        .delete(&token, &format!("/api/chat/sessions/{json_session}"))
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s
        .get(
            &token,
            &format!("/api/chat/sessions/{json_session}/messages"),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let list: Value = s
        .get(&token, "/api/chat/sessions")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);
    assert_eq!(list["sessions"][0]["title"], "Capitals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_keeps_partial_answer() {
    let s = Server::start(&[]);
    let token = s.admin_token().await;
    let r = s
        .post(&token, "/api/chat/message", json!({"message": "Write a very long story about a dragon and a knight.", "max_tokens": 1500, "stream": true}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\"token\"").count() < 5 {
        let chunk = body.next().await.expect("stream ended early").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(body);
    let start: Value = serde_json::from_str(
        seen.lines()
            .find_map(|l| l.strip_prefix("data:"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let session = start["session_id"].as_str().unwrap().to_string();
    // The pipeline stores the partial answer once it notices the client is gone.
    let mut stored = Value::Null;
    for _ in 0..100 {
        let page: Value = s
            .get(&token, &format!("/api/chat/sessions/{session}/messages"))
            .await
            .json()
            .await
            .unwrap();
        if page["messages"].as_array().unwrap().len() == 2 {
            stored = page["messages"][1].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(stored["role"], "assistant", "partial answer not stored");
    assert_eq!(stored["metadata"]["partial"], true);
    assert_eq!(stored["metadata"]["finish_reason"], "cancelled");
    assert!(!stored["content"].as_str().unwrap().is_empty());
    // Generation was cancelled: far fewer tokens than the 1500 asked for.
    assert!(stored["metadata"]["completion_tokens"].as_u64().unwrap() < 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after() {
    let s = Server::start(&[
        ("PALISADE_MODEL__PARALLEL", "1"),
        ("PALISADE_MODEL__QUEUE_SIZE", "0"),
        // Retries before the first token end at once, while the long answer still holds the
        // slot (on a fast machine the default backoff outlasts a 1,000-token answer).
        ("PALISADE_PROVIDERS__RETRY_BACKOFF_MS", "1"),
    ]);
    let token = s.admin_token().await;
    let r = s
        .post(&token, "/api/chat/message", json!({"message": "Write a very long story about the sea.", "max_tokens": 1000, "stream": true}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    // Wait until the first request holds the only slot.
    let mut seen = String::new();
    while !seen.contains("\"token\"") {
        seen.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    let r = s
        .post(&token, "/api/chat/message", json!({"message": "Hello"}))
        .await;
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    assert_eq!(
        error_code(r, StatusCode::SERVICE_UNAVAILABLE).await,
        "overloaded"
    );
    assert!(retry
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| v >= 1));
    drop(body);
    // Once the slot frees, requests are served again.
    let mut ok = false;
    for _ in 0..50 {
        let r = s
            .post(
                &token,
                "/api/chat/message",
                json!({"message": "Hi", "max_tokens": 4}),
            )
            .await;
        if r.status() == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the slot was not freed after the client left");
}
