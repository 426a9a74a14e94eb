//! The model registry, remote providers and the OpenAI-compatible `/v1` API, end to end: the
//! real binary with the embedded model plus remote models served by a local OpenAI-compatible
//! upstream (`common::stub`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;

use common::{error_code, Server};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A config file with remote models on the stub upstream.
fn config(upstream: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        r#"
[models.remote]
provider = "openai"
upstream_model = "stub-large"
base_url = "{upstream}/ok/v1"
api_key = "env::STUB_UPSTREAM_KEY"
trust_zone = "external"
context_size = 8192
description = "a remote model"

[models.primary]
provider = "openai"
base_url = "{upstream}/fail500/v1"
fallback = ["remote"]
max_retries = 1

[models.slow]
provider = "openai"
base_url = "{upstream}/stall/v1"
max_retries = 0
timeouts = {{ connect_ms = 1000, first_token_ms = 700, request_ms = 10000 }}

[models.half]
provider = "openai"
base_url = "{upstream}/stall-after/v1"
max_retries = 0
timeouts = {{ connect_ms = 1000, first_token_ms = 700, request_ms = 10000 }}

[models.admins-only]
provider = "openai"
base_url = "{upstream}/ok/v1"
roles = ["admin"]

[providers]
retry_backoff_ms = 10
"#
    )
    .unwrap();
    f
}

async fn start(upstream: &str) -> (Server, tempfile::NamedTempFile) {
    let cfg = config(upstream);
    let path = cfg.path().to_str().unwrap().to_string();
    let s = Server::start(&[
        ("PALISADE_CONFIG", path.as_str()),
        ("STUB_UPSTREAM_KEY", "sk-stub"),
    ]);
    (s, cfg)
}

async fn v1(s: &Server, key: &str, body: Value) -> reqwest::Response {
    s.client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_listing_and_role_restrictions() {
    let (upstream, _up) = common::stub::start().await;
    let (s, _cfg) = start(&upstream).await;
    assert!(s.stdout.iter().any(|l| l.contains("/v1")), "{:?}", s.stdout);
    let admin = s.admin_token().await;
    let (_, user, _) = s.new_user(&admin, "rita", "user", None).await;

    let models: Value = s.get(&user, "/api/models").await.json().await.unwrap();
    let names: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "smollm2-135m", "the default comes first");
    assert!(names.contains(&"remote") && names.contains(&"primary"));
    assert!(!names.contains(&"admins-only"), "{names:?}");
    let remote = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "remote")
        .unwrap();
    assert_eq!(remote["trust_zone"], "external");
    assert_eq!(remote["provider"], "openai");
    assert_eq!(remote["context_size"], 8192);
    // Nothing about the upstream leaks to users.
    let text = models.to_string();
    assert!(!text.contains("base_url") && !text.contains("STUB_UPSTREAM_KEY"));

    let admin_models: Value = s.get(&admin, "/api/models").await.json().await.unwrap();
    assert!(admin_models.to_string().contains("admins-only"));

    // The same list in OpenAI's shape.
    let listed: Value = s.get(&user, "/v1/models").await.json().await.unwrap();
    assert_eq!(listed["object"], "list");
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["object"] == "model" && m["id"] != "admins-only"));
    let r = s.get(&user, "/v1/models/admins-only").await;
    assert_eq!(
        error_code(r, StatusCode::NOT_FOUND).await,
        "model_not_found"
    );
    let one: Value = s
        .get(&user, "/v1/models/remote")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "remote");

    // Using a model the role may not use.
    let r = v1(
        &s,
        &user,
        json!({"model": "admins-only", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "model_not_allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_models_fallback_and_timeouts_end_to_end() {
    let (upstream, up) = common::stub::start().await;
    let (s, _cfg) = start(&upstream).await;
    let admin = s.admin_token().await;

    // A remote model through /v1, not streamed, with the request id passed upstream.
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(&admin)
        .header("x-request-id", "trace-abc-123")
        .json(&json!({"model": "remote", "messages": [{"role": "user", "content": "ping"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["model"], "remote");
    assert_eq!(c["choices"][0]["message"]["content"], "echo: ping");
    assert_eq!(c["usage"]["prompt_tokens"], 17);
    assert!(up
        .request_ids
        .lock()
        .unwrap()
        .contains(&"trace-abc-123".to_string()));
    let sent = up.bodies.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent["model"], "stub-large");
    assert_eq!(
        sent["messages"][0]["role"], "system",
        "server system prompt first"
    );

    // The primary answers 500: the fallback answers and the metadata says so.
    let r = v1(
        &s,
        &admin,
        json!({"model": "primary", "messages": [{"role": "user", "content": "who answers?"}]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["model"], "remote");
    assert_eq!(c["palisade"]["fallback_from"], "primary");
    assert_eq!(c["choices"][0]["message"]["content"], "echo: who answers?");
    assert_eq!(up.hits("fail500"), 2, "one try and one retry");
    // The chat API records it on the stored message too.
    let m: Value = s
        .post(
            &admin,
            "/api/chat/message",
            json!({"message": "again", "model": "primary"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(m["metadata"]["model"], "remote");
    assert_eq!(m["metadata"]["fallback_from"], "primary");

    // The upstream stalls before the first token: a clean 504, nothing of the upstream shown.
    let t = std::time::Instant::now();
    let r = v1(
        &s,
        &admin,
        json!({"model": "slow", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "model_timeout");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(t.elapsed() < std::time::Duration::from_secs(5));

    // The upstream stalls after a token: the stream ends with a clean error event.
    let r = v1(
        &s,
        &admin,
        json!({"model": "half", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), r.text())
        .await
        .expect("the stream must end")
        .unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert!(events.iter().any(|e| e.contains("partial")), "{text}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "model_timeout", "{text}");
    assert!(!text.contains("[DONE]"));

    // The same through the chat API's SSE.
    let r = s
        .post(
            &admin,
            "/api/chat/message",
            json!({"message": "hi", "model": "half", "stream": true}),
        )
        .await;
    let events = common::sse_events(r).await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "error", "{events:?}");
    assert_eq!(last["code"], "model_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_contract_and_errors() {
    let (upstream, _up) = common::stub::start().await;
    let (s, _cfg) = start(&upstream).await;
    let admin = s.admin_token().await;
    let (_, user, _) = s.new_user(&admin, "omar", "user", None).await;

    // Streaming with usage, against the embedded model.
    let r = v1(&s, &user, json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Say hello."}],
        "stream": true, "stream_options": {"include_usage": true},
        "max_completion_tokens": 8, "temperature": 0, "seed": 1, "stop": ["\n\n"], "user": "omar-42"
    })).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let ids: std::collections::BTreeSet<&str> =
        chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one id for the whole stream");
    let usage = &chunks.last().unwrap()["usage"];
    assert!(chunks.last().unwrap()["choices"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 8);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
    assert!(finish == "stop" || finish == "length", "{finish}");

    // Content parts are accepted.
    let r = v1(&s, &user, json!({"model": "remote", "messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]}]})).await;
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["choices"][0]["message"]["content"], "echo: parts");

    // Clear 400s for what is not supported, in OpenAI's error shape.
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for (body, code) in [
        (
            json!({"model": "remote", "messages": msgs, "n": 2}),
            "unsupported_parameter",
        ),
        (
            json!({"model": "remote", "messages": msgs, "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "unsupported_parameter",
        ),
        (
            json!({"model": "remote", "messages": msgs, "frobnicate": true}),
            "unknown_parameter",
        ),
        (
            json!({"model": "remote", "messages": msgs, "stream_options": {"include_usage": true}}),
            "invalid_parameter",
        ),
        (
            json!({"model": "remote", "messages": [{"role": "wizard", "content": "hi"}]}),
            "invalid_role",
        ),
        (
            json!({"model": "remote", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "unsupported_content",
        ),
        (json!({"model": "remote", "messages": []}), "empty_message"),
        (
            json!({"model": "remote", "messages": msgs, "max_tokens": 0}),
            "invalid_max_tokens",
        ),
        (
            json!({"model": "remote", "messages": msgs, "temperature": 7}),
            "invalid_temperature",
        ),
        (
            json!({"model": "remote", "messages": [{"role": "user", "content": "x".repeat(20_000)}]}),
            "context_length_exceeded",
        ),
        (json!({"messages": msgs}), "invalid_request"),
    ] {
        let r = v1(&s, &user, body.clone()).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {v}");
        assert_eq!(v["error"]["code"], code, "{body} -> {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"].get("param").is_some());
    }
    // Unknown model: 404 as OpenAI answers it.
    let r = v1(&s, &user, json!({"model": "gpt-99", "messages": msgs})).await;
    assert_eq!(
        error_code(r, StatusCode::NOT_FOUND).await,
        "model_not_found"
    );
    // System messages need `chat:system_prompt`: the plain user role lacks it.
    let r = v1(&s, &user, json!({"model": "remote", "messages": [{"role": "system", "content": "be evil"}, {"role": "user", "content": "hi"}]})).await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "system_prompt_not_allowed"
    );
    let r = v1(&s, &admin, json!({"model": "remote", "messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]})).await;
    assert_eq!(r.status(), StatusCode::OK);
    // No or a wrong credential: 401 in the same shape.
    let r = v1(
        &s,
        "pk_notakey",
        json!({"model": "remote", "messages": msgs}),
    )
    .await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["type"], "authentication_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_decide_whether_v1_conversations_are_stored() {
    let (upstream, _up) = common::stub::start().await;
    let (s, _cfg) = start(&upstream).await;
    let admin = s.admin_token().await;
    let (_, user, _) = s.new_user(&admin, "kim", "user", None).await;
    let key = |store: bool| {
        let s = &s;
        let user = user.clone();
        async move {
            let r = s
                .post(
                    &user,
                    "/api/auth/api-keys",
                    json!({"name": format!("k{store}"), "store_conversations": store}),
                )
                .await;
            assert_eq!(r.status(), StatusCode::CREATED);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["store_conversations"], store);
            v["api_key"].as_str().unwrap().to_string()
        }
    };
    let keeping = key(true).await;
    let stateless = key(false).await;
    let msgs = json!([{"role": "user", "content": "remember me"}]);
    for k in [&stateless, &keeping] {
        let r = v1(&s, k, json!({"model": "remote", "messages": msgs})).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = v1(
        &s,
        &keeping,
        json!({"model": "remote", "messages": msgs, "stream": true}),
    )
    .await;
    let _ = r.text().await.unwrap();
    // Stored asynchronously once the answer is complete.
    let mut sessions = Value::Null;
    for _ in 0..50 {
        sessions = s
            .get(&user, "/api/chat/sessions")
            .await
            .json()
            .await
            .unwrap();
        let stored_answers = sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["message_count"] == 2)
            .count();
        if stored_answers == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let list = sessions["sessions"].as_array().unwrap();
    assert_eq!(
        list.len(),
        2,
        "only the storing key's two calls: {sessions}"
    );
    assert!(list.iter().all(|x| x["title"] == "remember me"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_change_the_registry_without_restart_and_it_persists() {
    let (upstream, _up) = common::stub::start().await;
    let (s, cfg) = start(&upstream).await;
    let admin = s.admin_token().await;
    let (_, user, _) = s.new_user(&admin, "lena", "user", None).await;
    let put = |token: String, name: &'static str, body: Value| {
        let s = &s;
        async move {
            s.client
                .put(s.url(&format!("/api/admin/models/{name}")))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let spec = json!({"provider": "openai", "base_url": format!("{upstream}/ok/v1"), "upstream_model": "new-up", "description": "added live"});
    // Users may not change it.
    let r = put(user.clone(), "fresh", spec.clone()).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Inline secrets are refused, and not echoed.
    let mut bad = spec.clone();
    bad["api_key"] = json!("sk-live-very-secret");
    let r = put(admin.clone(), "fresh", bad).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(!text.contains("sk-live-very-secret"));
    // Unknown fields and unknown fallbacks are refused.
    let mut bad = spec.clone();
    bad["colour"] = json!("red");
    assert_eq!(
        put(admin.clone(), "fresh", bad).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let mut bad = spec.clone();
    bad["fallback"] = json!(["ghost"]);
    assert_eq!(
        put(admin.clone(), "fresh", bad).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );

    let r = put(admin.clone(), "fresh", spec.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let saved: Value = r.json().await.unwrap();
    assert_eq!(saved["source"], "admin");
    // Usable at once.
    let models: Value = s.get(&user, "/api/models").await.json().await.unwrap();
    assert!(models.to_string().contains("added live"));
    let r = v1(
        &s,
        &user,
        json!({"model": "fresh", "messages": [{"role": "user", "content": "new?"}]}),
    )
    .await;
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["choices"][0]["message"]["content"], "echo: new?");
    // Delete a configured model; the default cannot be deleted.
    let r = s.delete(&admin, "/api/admin/models/half").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s.delete(&admin, "/api/admin/models/smollm2-135m").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = s.delete(&admin, "/api/admin/models/ghost").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let all: Value = s
        .get(&admin, "/api/admin/models")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = all["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"fresh") && !names.contains(&"half"),
        "{names:?}"
    );
    assert!(s.get(&user, "/api/admin/models").await.status() == StatusCode::FORBIDDEN);

    // Persisted: a restart keeps both changes.
    let path = cfg.path().to_str().unwrap().to_string();
    let s = s.restart(&[
        ("PALISADE_CONFIG", path.as_str()),
        ("STUB_UPSTREAM_KEY", "sk-stub"),
    ]);
    let admin = s.admin_token().await;
    let all: Value = s
        .get(&admin, "/api/admin/models")
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = all["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"fresh") && !names.contains(&"half"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_answers_come_from_the_cache_per_tenant() {
    let (upstream, up) = common::stub::start().await;
    let cfg = config(&upstream);
    let path = cfg.path().to_str().unwrap().to_string();
    let s = Server::start(&[
        ("PALISADE_CONFIG", path.as_str()),
        ("STUB_UPSTREAM_KEY", "sk-stub"),
        ("PALISADE_CACHE__ENABLED", "true"),
    ]);
    let admin = s.admin_token().await;
    let body = json!({"model": "remote", "temperature": 0, "messages": [{"role": "user", "content": "cache me"}]});
    let first: Value = v1(&s, &admin, body.clone()).await.json().await.unwrap();
    let second: Value = v1(&s, &admin, body.clone()).await.json().await.unwrap();
    assert_eq!(
        first["choices"][0]["message"]["content"],
        second["choices"][0]["message"]["content"]
    );
    assert!(first.get("palisade").is_none() || first["palisade"]["cached"] == false);
    assert_eq!(second["palisade"]["cached"], true);
    assert_eq!(up.hits("ok"), 1);
    // Another tenant does not share the entry.
    let t: Value = s
        .post(&admin, "/api/admin/tenants", json!({"name": "other-co"}))
        .await
        .json()
        .await
        .unwrap();
    let tid = t["id"].as_str().unwrap();
    let (_, other, _) = s.new_user(&admin, "olga", "user", Some(tid)).await;
    let third: Value = v1(&s, &other, body.clone()).await.json().await.unwrap();
    assert!(third.get("palisade").is_none() || third["palisade"]["cached"] == false);
    assert_eq!(up.hits("ok"), 2);
    let stats: Value = s
        .get(&admin, "/api/admin/cache")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["backend"], "memory");
    assert_eq!(stats["hits"], 1);
    assert_eq!(stats["misses"], 2);
    // Streamed requests replay the cached answer too.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let r = v1(&s, &admin, stream_body).await;
    let mut text = String::new();
    let mut bytes = r.bytes_stream();
    while let Some(b) = bytes.next().await {
        text.push_str(&String::from_utf8_lossy(&b.unwrap()));
    }
    assert!(
        text.contains("\"cached\":true") && text.contains("echo: cache me"),
        "{text}"
    );
    assert_eq!(up.hits("ok"), 2);
}
