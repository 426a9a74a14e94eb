//! The history API with a large store: `messages` messages (100,000 by default) written through
//! the chat API (stub upstream, so the store holds exactly what production writes: encrypted
//! content, audit rows, usage), then an open-loop load at a fixed rate (1,000 requests/s by
//! default) alternating the session list (`GET /api/chat/sessions?limit=50`) and a message page
//! of a random conversation (`GET /api/chat/sessions/{id}/messages?limit=50`). Latency is
//! measured from the scheduled send time, so a slow server cannot hide queueing (no
//! coordinated omission). On SQLite, and on PostgreSQL when one answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::history::{answers, Database};
use crate::{admin_token, start, Server};

/// Turns per conversation (two messages each).
const TURNS: usize = 100;
/// Conversations written at once while seeding.
const WRITERS: usize = 16;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Writes `conversations` conversations of [`TURNS`] turns; their ids.
async fn seed(s: &Server, token: &str, conversations: usize) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(Mutex::new(Vec::with_capacity(conversations)));
    let writers = (0..WRITERS).map(|_| {
        let (next, ids) = (next.clone(), ids.clone());
        async move {
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed) as usize;
                if c >= conversations {
                    return anyhow::Ok(());
                }
                let mut session: Option<String> = None;
                for t in 0..TURNS {
                    let mut body = json!({"message": format!("Please tell me a fun fact about the numbers {t} and {c}."),
                                          "model": "stub", "max_tokens": 16});
                    if let Some(id) = &session {
                        body["session_id"] = json!(id);
                    }
                    let r = s
                        .client
                        .post(format!("{}/api/chat/message", s.base))
                        .bearer_auth(token)
                        .json(&body)
                        .send()
                        .await?;
                    // A turn the guard happens to refuse is skipped (nothing stored).
                    if r.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY {
                        continue;
                    }
                    if !r.status().is_success() {
                        bail!("seeding: {}", r.status());
                    }
                    if session.is_none() {
                        let v: Value = r.json().await?;
                        session = v["session_id"].as_str().map(String::from);
                    }
                }
                if let (Some(id), Ok(mut ids)) = (session, ids.lock()) {
                    ids.push(id);
                }
            }
        }
    });
    futures::future::try_join_all(writers).await?;
    let ids = ids.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(ids)
}

/// Open loop at `rate` requests/s for `window`: (list latencies, page latencies, errors, sent).
async fn open_loop(
    s: &Server,
    token: &str,
    ids: &[String],
    rate: u32,
    window: Duration,
) -> (Vec<f64>, Vec<f64>, u64, u64) {
    let list = Arc::new(Mutex::new(Vec::new()));
    let page = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tasks = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    while start.elapsed() < window {
        let scheduled = start + interval.mul_f64(sent as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        // xorshift: which conversation to read.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let (url, into) = if sent.is_multiple_of(2) {
            (
                format!("{}/api/chat/sessions?limit=50", s.base),
                list.clone(),
            )
        } else {
            let id = &ids[(seed % ids.len() as u64) as usize];
            (
                format!("{}/api/chat/sessions/{id}/messages?limit=50", s.base),
                page.clone(),
            )
        };
        let (client, token, errors) = (s.client.clone(), token.to_string(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let ok = match client.get(&url).bearer_auth(&token).send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            if ok {
                if let Ok(mut v) = into.lock() {
                    v.push(scheduled.elapsed().as_secs_f64() * 1000.0);
                }
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
        sent += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    let take = |v: &Arc<Mutex<Vec<f64>>>| {
        let mut v = v.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    (
        take(&list),
        take(&page),
        errors.load(Ordering::Relaxed),
        sent,
    )
}

/// One backend: seed, warm, measure.
async fn backend(
    bin: &std::path::PathBuf,
    name: &str,
    env: &[(&str, &str)],
    messages: usize,
    rate: u32,
    window: Duration,
    settle_url: Option<&str>,
) -> anyhow::Result<Value> {
    let stub = crate::gateway::start_stub()?;
    let cfg = crate::gateway::config_file(stub)?;
    let cfg_path = cfg.path().to_string_lossy().to_string();
    let mut all_env = vec![("PALISADE_CONFIG", cfg_path.as_str())];
    all_env.extend_from_slice(env);
    let s = start(bin, 4, &all_env)?;
    let token = admin_token(&s).await?;
    let conversations = (messages / (2 * TURNS)).max(1);
    let t0 = Instant::now();
    let ids = seed(&s, &token, conversations).await?;
    let seeded = t0.elapsed();
    if ids.is_empty() {
        bail!("no conversation was stored");
    }
    let written = conversations * TURNS * 2;
    // A store in its steady state, not one that just took a burst of writes: on PostgreSQL the
    // planner's statistics are fresh (autovacuum's ANALYZE would have run) and the burst's WAL
    // is checkpointed, so neither lands inside the measured window.
    if let Some(url) = settle_url {
        crate::history::psql(url, "VACUUM ANALYZE")?;
        crate::history::psql(url, "CHECKPOINT")?;
    }
    // Warm the connection pool and caches at the same rate.
    let _ = open_loop(&s, &token, &ids, rate, Duration::from_secs(1)).await;
    let (list, page, errors, sent) = open_loop(&s, &token, &ids, rate, window).await;
    let achieved = sent as f64 / window.as_secs_f64();
    println!(
        "  {name:>10}: {written} messages in {} conversations (written in {:.0} s, {:.0} turns/s); \
         {achieved:.0} req/s: list p50 {:.2} / p95 {:.2} / p99 {:.2} ms, page p50 {:.2} / p95 {:.2} / p99 {:.2} ms, {errors} errors",
        ids.len(),
        seeded.as_secs_f64(),
        (written / 2) as f64 / seeded.as_secs_f64(),
        percentile(&list, 0.5),
        percentile(&list, 0.95),
        percentile(&list, 0.99),
        percentile(&page, 0.5),
        percentile(&page, 0.95),
        percentile(&page, 0.99),
    );
    let figures = |v: &[f64]| {
        json!({"p50_ms": percentile(v, 0.5), "p95_ms": percentile(v, 0.95),
               "p99_ms": percentile(v, 0.99), "requests": v.len()})
    };
    Ok(json!({
        "messages": written, "conversations": ids.len(),
        "seed_seconds": seeded.as_secs_f64(),
        "rate_asked": rate, "rate_sent": achieved, "errors": errors,
        "session_list": figures(&list), "message_page": figures(&page),
    }))
}

/// The scenario on SQLite, then on PostgreSQL (127.0.0.1:5432 or `TEST_POSTGRES_URL`) when
/// one answers.
pub async fn run(
    bin: &std::path::PathBuf,
    messages: usize,
    rate: u32,
    window: Duration,
) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    out.insert(
        "sqlite".into(),
        backend(bin, "SQLite", &[], messages, rate, window, None).await?,
    );
    let server = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    if answers(&server) {
        let db = Database::create(&server).context("a database for the benchmark")?;
        let url = db.url();
        out.insert(
            "postgres".into(),
            backend(
                bin,
                "PostgreSQL",
                &[("PALISADE_STORE__URL", url.as_str())],
                messages,
                rate,
                window,
                Some(&url),
            )
            .await?,
        );
    } else {
        println!("  (no PostgreSQL at {server}: SQLite only)");
    }
    Ok(Value::Object(out))
}
