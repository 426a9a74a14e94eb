//! Real OpenAI clients and servers: the official `openai` Python SDK talks to Palisade's `/v1`,
//! and Palisade's OpenAI provider talks to llama.cpp's own OpenAI-compatible server
//! (`llama-cpp-python[server]`) running the same GGUF. Both come from the venv built by
//! `tests-fixtures/python/setup` (which `scripts/test` runs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The venv's python (`OPENAI_SDK_PYTHON` overrides it).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("OPENAI_SDK_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    let p = cache.join("palisade/venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run tests-fixtures/python/setup (scripts/test does)",
        p.display()
    );
    p
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests-fixtures/python")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_uses_palisade() {
    let s = Server::start(&[]);
    let admin = s.admin_token().await;
    let (_, user, _) = s.new_user(&admin, "sdkuser", "user", None).await;
    let r = s
        .post(&user, "/api/auth/api-keys", json!({"name": "sdk"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let key: Value = r.json().await.unwrap();
    let key = key["api_key"].as_str().unwrap().to_string();
    let cert = s.data_dir().join("tls/cert.pem");
    let out = tokio::task::spawn_blocking({
        let base = s.url("/v1");
        move || {
            Command::new(python())
                .arg(fixture("openai_sdk_check.py"))
                .args([
                    base.as_str(),
                    key.as_str(),
                    cert.to_str().unwrap(),
                    "smollm2-135m",
                ])
                .stderr(Stdio::inherit())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "the SDK script failed");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("openai SDK {}", v["sdk_version"]);
    assert_eq!(v["models"], json!(["smollm2-135m"]));
    let plain = &v["plain"];
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["model"], "smollm2-135m");
    assert_eq!(plain["role"], "assistant");
    assert!(!plain["content"].as_str().unwrap().is_empty());
    assert!(plain["completion_tokens"].as_u64().unwrap() <= 12);
    assert!(plain["prompt_tokens"].as_u64().unwrap() > 0);
    let stream = &v["stream"];
    assert!(!stream["text"].as_str().unwrap().is_empty());
    assert!(stream["chunks"].as_u64().unwrap() >= 3);
    assert!(stream["usage"]["completion_tokens"].as_u64().unwrap() <= 16);
    assert!(stream["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert!(stream["finish_reason"] == "stop" || stream["finish_reason"] == "length");
    assert_eq!(v["bad_key"]["class"], "AuthenticationError", "{v}");
    assert_eq!(v["bad_key"]["status"], 401);
    assert_eq!(v["unknown_model"]["class"], "NotFoundError", "{v}");
    assert_eq!(v["unknown_model"]["code"], "model_not_found");
    assert_eq!(v["oversized"]["class"], "BadRequestError", "{v}");
    assert_eq!(v["oversized"]["code"], "context_length_exceeded");
    assert_eq!(v["n_2"]["class"], "BadRequestError");
}

/// llama.cpp's server on a free port; killed on drop.
struct LlamaCppServer(std::process::Child);

impl Drop for LlamaCppServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn palisade_fronts_the_llama_cpp_openai_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let model = common::model_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let child = Command::new(python())
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(&model)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--n_ctx",
            "2048",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting llama_cpp.server");
    let _guard = LlamaCppServer(child);
    let upstream = format!("http://127.0.0.1:{port}/v1");
    let probe = reqwest::Client::new();
    let mut up = false;
    for _ in 0..120 {
        if probe
            .get(format!("{upstream}/models"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(up, "llama_cpp.server did not come up");

    let mut cfg = tempfile::NamedTempFile::new().unwrap();
    write!(
        cfg,
        "[models.llamacpp]\nprovider = \"openai\"\nupstream_model = \"smollm2\"\nbase_url = \"{upstream}\"\ncontext_size = 2048\nmax_tokens = 256\n"
    )
    .unwrap();
    let path = cfg.path().to_str().unwrap().to_string();
    let s = Server::start(&[("PALISADE_CONFIG", path.as_str())]);
    let admin = s.admin_token().await;

    // Not streamed: the upstream's usage comes through.
    let r = s
        .post(&admin, "/v1/chat/completions", json!({"model": "llamacpp", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["model"], "llamacpp");
    assert!(!c["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    assert!(c["usage"]["completion_tokens"].as_u64().unwrap() <= 8);
    // Palisade always streams upstream; llama.cpp's server ignores `include_usage`, so the
    // prompt tokens are estimated and the completion tokens counted.
    assert!(c["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    // Streamed, through the chat API, stored with its metadata.
    let r = s
        .post(&admin, "/api/chat/message", json!({"message": "Name a colour.", "model": "llamacpp", "max_tokens": 8, "stream": true}))
        .await;
    let events = common::sse_events(r).await;
    assert!(
        events.iter().filter(|e| e["type"] == "token").count() >= 1,
        "{events:?}"
    );
    let end = events.last().unwrap();
    assert_eq!(end["type"], "end", "{events:?}");
    assert_eq!(end["metadata"]["model"], "llamacpp");
    assert!(end["metadata"]["completion_tokens"].as_u64().unwrap() <= 8);
}
