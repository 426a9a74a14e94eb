//! Capacity and size limits with the real model: bounded queue (Overloaded), FIFO admission,
//! cancelled queued requests, history truncation, context overflow, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use palisade_core::provider::{ChatProvider, FinishReason, GenerationEvent, ProviderError};

const LONG: &str = "Write a very long story about a lighthouse keeper.";

#[tokio::test]
async fn overload_queue_and_fifo() {
    let mut cfg = config();
    cfg.parallel = 1;
    cfg.queue_capacity = 1;
    cfg.context_size = 1024;
    let e = start(cfg);

    let a = e
        .generate(request(vec![user(LONG)], greedy(64)))
        .await
        .unwrap();
    let b = e
        .generate(request(vec![user(LONG)], greedy(16)))
        .await
        .unwrap();
    let c = e.generate(request(vec![user("hi")], greedy(8))).await;
    match c {
        Err(ProviderError::Overloaded { retry_after_secs }) => {
            assert!((1..=60).contains(&retry_after_secs))
        }
        other => panic!("expected Overloaded, got {:?}", other.map(|_| ())),
    }
    assert_eq!(e.stats().in_flight, 2);

    // FIFO: the queued request only starts once the first finished; it then completes too.
    let b_task = tokio::spawn(collect(b));
    let first = collect(a).await.unwrap();
    assert!(first.usage.completion_tokens > 0);
    let second = b_task.await.unwrap().unwrap();
    assert_eq!(second.finish_reason, FinishReason::Length);
    assert_eq!(second.usage.completion_tokens, 16);
    wait_until(10, || e.stats().in_flight == 0).await;

    // A queued request whose caller left is discarded and its place freed.
    let a = e
        .generate(request(vec![user(LONG)], greedy(200)))
        .await
        .unwrap();
    let b = e
        .generate(request(vec![user(LONG)], greedy(200)))
        .await
        .unwrap();
    wait_until(10, || e.stats().queued == 1).await;
    drop(b);
    wait_until(10, || e.stats().in_flight == 1 && e.stats().queued == 0).await;
    let c = e
        .generate(request(vec![user("Say hello.")], greedy(8)))
        .await
        .unwrap();
    drop(a);
    let c = collect(c).await.unwrap();
    assert!(c.usage.completion_tokens > 0);
    wait_until(10, || e.stats().in_flight == 0 && e.stats().active == 0).await;
    e.shutdown();
}

#[tokio::test]
async fn history_truncation_and_context_overflow() {
    let mut cfg = config();
    cfg.parallel = 2;
    cfg.context_size = 256;
    let e = start(cfg);
    assert_eq!(e.models()[0].context_size, 256);

    let mut msgs = vec![system("You are a concise assistant.")];
    for i in 0..12 {
        msgs.push(user(&format!(
            "Question {i}: tell me something about the number {i} and why it matters."
        )));
        msgs.push(assistant(&format!(
            "The number {i} is interesting because it appears in many places in mathematics."
        )));
    }
    msgs.push(user("What is the capital of France?"));
    let a = ask(&e, msgs, greedy(32)).await.unwrap();
    assert!(a.truncated_turns > 0, "nothing truncated");
    assert!(
        a.truncated_turns % 2 == 0,
        "history should restart at a user turn"
    );
    assert!(a.usage.prompt_tokens + 32 <= 256);
    assert!(a.text.contains("Paris"), "{:?}", a.text);

    // A single message that cannot fit even alone.
    let huge = "lorem ipsum dolor sit amet ".repeat(200);
    match e
        .generate(request(vec![system("Be brief."), user(&huge)], greedy(32)))
        .await
    {
        Err(ProviderError::ContextOverflow { tokens, limit }) => {
            assert!(tokens > limit, "{tokens} <= {limit}");
            assert!(limit < 256);
        }
        other => panic!("expected ContextOverflow, got {:?}", other.map(|_| ())),
    }

    // A large max_tokens is capped so prompt + answer fit the context: ends with Length.
    let count = "Count from 1 to 1000, separated by commas.";
    let a = ask(&e, vec![user(count)], greedy(10_000)).await.unwrap();
    assert_eq!(a.finish_reason, FinishReason::Length);
    assert_eq!(a.usage.prompt_tokens + a.usage.completion_tokens, 256);
    wait_until(10, || e.stats().in_flight == 0).await;
}

#[tokio::test]
async fn shutdown_ends_streams_and_refuses_new_work() {
    let mut cfg = config();
    cfg.parallel = 1;
    cfg.context_size = 512;
    let e = start(cfg);
    let mut s = e
        .generate(request(vec![user(LONG)], greedy(400)))
        .await
        .unwrap();
    // Wait for the first token so the request is active.
    let first = s.next().await.unwrap().unwrap();
    assert!(matches!(first, GenerationEvent::Text(_)));
    e.shutdown();
    assert!(!e.is_ready());
    let mut ended_with_error = false;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .unwrap()
    {
        if let Err(err) = item {
            assert!(matches!(err, ProviderError::Unavailable(_)), "{err:?}");
            ended_with_error = true;
        }
    }
    assert!(ended_with_error);
    let err = e.generate(request(vec![user("hi")], greedy(4))).await.err();
    assert!(matches!(err, Some(ProviderError::Unavailable(_))));
}

#[test]
fn missing_model_is_a_clear_error() {
    let cfg = palisade_llama::EngineConfig::new("/nonexistent/model.gguf", "m");
    let err = palisade_llama::LlamaEngine::start(cfg).unwrap_err();
    assert!(
        err.to_string()
            .contains("model file not found at /nonexistent/model.gguf"),
        "{err}"
    );
}

#[tokio::test]
async fn weights_conversion_is_cached_and_optional() {
    let dir = tempfile::tempdir().unwrap();
    let converted = |d: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut cfg = config();
    cfg.parallel = 1;
    cfg.context_size = 256;
    cfg.converted_dir = Some(dir.path().to_path_buf());
    let e = start(cfg.clone());
    let files = converted(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(".q8_0.gguf"), "{files:?}");
    let a = ask(&e, vec![user("What is the capital of France?")], greedy(24))
        .await
        .unwrap();
    assert!(a.text.contains("Paris"), "{:?}", a.text);
    e.shutdown();
    // Reused, not redone.
    let before = std::fs::metadata(dir.path().join(&files[0]))
        .unwrap()
        .modified()
        .unwrap();
    let e = start(cfg.clone());
    e.shutdown();
    let after = std::fs::metadata(dir.path().join(&files[0]))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(converted(dir.path()), files);

    // Disabled: the model is used as is and nothing is written.
    let dir2 = tempfile::tempdir().unwrap();
    cfg.convert_weights = false;
    cfg.converted_dir = Some(dir2.path().to_path_buf());
    let e = start(cfg);
    let a = ask(&e, vec![user("What is the capital of France?")], greedy(24))
        .await
        .unwrap();
    assert!(a.text.contains("Paris"), "{:?}", a.text);
    assert!(converted(dir2.path()).is_empty());
}
