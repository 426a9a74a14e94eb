//! Measures decode throughput: one stream alone, then 8 concurrent streams, and their ratio.
//!
//! `cargo run -p palisade-llama --release --example throughput [-- MODEL.gguf [TOKENS]]`
//! (model defaults to `$PALISADE_TEST_MODEL` or the default model path).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use palisade_core::provider::{
    ChatProvider, GenerationEvent, GenerationParams, GenerationRequest, PromptMessage, Role,
};
use palisade_llama::provision::{default_model_path, DEFAULT_MODEL_NAME};
use palisade_llama::{EngineConfig, LlamaEngine};

const TOPICS: [&str; 8] = [
    "a dragon who learns to cook",
    "a lighthouse keeper on a stormy island",
    "a robot exploring an abandoned city",
    "two friends crossing a desert",
    "a detective in Victorian London",
    "a ship lost in the Arctic",
    "a child who can talk to trees",
    "a musician travelling through Europe",
];

/// Per-stream timing: first token, end, tokens.
struct Run {
    tokens: u32,
    first: Instant,
    end: Instant,
}

async fn one(engine: Arc<LlamaEngine>, topic: &str, max_tokens: u32) -> Run {
    let req = GenerationRequest {
        model: DEFAULT_MODEL_NAME.into(),
        messages: vec![PromptMessage {
            role: Role::User,
            content: format!("Write a long story about {topic}."),
        }],
        params: GenerationParams {
            // Greedy by default; `BENCH_TEMPERATURE=0.8` measures the sampler chain too.
            temperature: std::env::var("BENCH_TEMPERATURE")
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0.0),
            max_tokens,
            ..GenerationParams::default()
        },
        request_id: "bench".into(),
        cache_scope: None,
        tenant: None,
        canary: None,
    };
    let mut s = engine.generate(req).await.unwrap();
    let mut first = None;
    let mut tokens = 0;
    while let Some(ev) = s.next().await {
        match ev.unwrap() {
            GenerationEvent::Text(_) => {
                first.get_or_insert_with(Instant::now);
            }
            GenerationEvent::Done { usage, .. } => tokens = usage.completion_tokens,
        }
    }
    let end = Instant::now();
    Run {
        tokens,
        first: first.unwrap_or(end),
        end,
    }
}

/// (aggregate decode tok/s after the first token, wall-clock tok/s including prompt, tokens)
async fn measure(engine: &Arc<LlamaEngine>, streams: usize, max_tokens: u32) -> (f64, f64, u32) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|i| tokio::spawn(one(engine.clone(), TOPICS[i % TOPICS.len()], max_tokens)))
        .collect();
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await.unwrap());
    }
    let total: u32 = runs.iter().map(|r| r.tokens).sum();
    let first = runs.iter().map(|r| r.first).max().unwrap();
    let end = runs.iter().map(|r| r.end).max().unwrap();
    // Decode rate: tokens generated after every stream had its first token, over that window.
    let decoded: f64 = runs
        .iter()
        .map(|r| {
            let span = r.end.saturating_duration_since(r.first).as_secs_f64();
            let per_tok = span / f64::from(r.tokens.saturating_sub(1).max(1));
            let after = r.end.saturating_duration_since(first).as_secs_f64();
            (after / per_tok.max(1e-9)).min(f64::from(r.tokens))
        })
        .sum();
    let window = end
        .saturating_duration_since(first)
        .max(Duration::from_micros(1));
    let wall = end.duration_since(start).as_secs_f64();
    (
        decoded / window.as_secs_f64(),
        f64::from(total) / wall,
        total,
    )
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = if std::env::var_os("TOKIO_CT").is_some() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(run());
}

async fn run() {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .map(Into::into)
        .or_else(|| std::env::var_os("PALISADE_TEST_MODEL").map(Into::into))
        .unwrap_or_else(default_model_path);
    let max_tokens: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(128);
    let mut cfg = EngineConfig::new(model, DEFAULT_MODEL_NAME);
    // PALISADE_NO_CONVERT=1 measures the model's own weights (no Q8_0 re-encoding).
    cfg.convert_weights = std::env::var_os("PALISADE_NO_CONVERT").is_none();
    if let Some(t) = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
    {
        cfg.threads = t;
    }
    println!(
        "model {} | convert_weights {} | parallel {} | threads {} | ctx/seq {} | max_tokens {max_tokens}",
        cfg.model_path.display(),
        cfg.convert_weights,
        cfg.parallel,
        cfg.threads,
        cfg.context_size
    );
    let engine = tokio::task::spawn_blocking(move || LlamaEngine::start(cfg))
        .await
        .unwrap()
        .expect("engine starts");

    // Warm-up (page in weights, allocate buffers).
    measure(&engine, 1, 16).await;

    let (d1, w1, n1) = measure(&engine, 1, max_tokens).await;
    println!("1 stream : {n1:4} tokens | decode {d1:7.1} tok/s | wall {w1:7.1} tok/s");
    let (d8, w8, n8) = measure(&engine, 8, max_tokens).await;
    println!("8 streams: {n8:4} tokens | decode {d8:7.1} tok/s | wall {w8:7.1} tok/s (aggregate)");
    println!(
        "ratio 8/1: decode {:.2}x | wall {:.2}x",
        d8 / d1.max(1e-9),
        w8 / w1.max(1e-9)
    );
    engine.shutdown();
}
