//! The cost of a limit decision, in process: one request's admission (request rate, token
//! reservation, compute pre-check, stream slot) and its settlement (tokens given back, compute
//! charged, stream released, in one call), on the in-memory backend and on Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_limits::{Adjust, Backend, Check, Decision, Dimension, MemoryBackend, RedisBackend};
use serde_json::{json, Value};

fn checks(user: usize) -> Vec<Check> {
    let c = |dim: Dimension, amount: u64, secs: u64, cost: u64| Check {
        key: format!("u:bench-{user}:{}:{secs}", dim.as_str()),
        dimension: dim,
        amount,
        period: Duration::from_secs(secs),
        cost,
    };
    // Budgets large enough that millions of requests a second never exhaust them (a refusal
    // would end the run): 10^12 a month is 2 µs of window per token.
    vec![
        c(Dimension::Requests, 1_000_000_000, 1, 1),
        c(Dimension::Tokens, 1_000_000_000_000, 30 * 86_400, 600),
        c(Dimension::ComputeMs, 1_000_000_000_000, 30 * 86_400, 0),
        c(Dimension::Concurrent, 1_000_000, 0, 1),
    ]
}

/// One request: admit, then settle (200 of 600 tokens used, 50 ms compute, stream freed).
/// `split`: settle with one call per counter (as before settlement was batched), for the
/// side-by-side comparison.
async fn request(b: &dyn Backend, cs: &[Check], split: bool) -> anyhow::Result<()> {
    match b.acquire(cs, None).await? {
        Decision::Allowed(_) => {}
        d => anyhow::bail!("the benchmark's limits refused a request: {d:?}"),
    }
    let settle = |i: usize, amount: u64, charge: bool| Adjust {
        check: cs[i].clone(),
        amount,
        charge,
    };
    if split {
        b.release(&cs[1], 400, None).await?;
        b.charge(&cs[2], 50, None).await?;
        b.release(&cs[3], 1, None).await?;
        return Ok(());
    }
    // As the server settles: one call (one round trip on Redis).
    b.adjust(
        &[
            settle(1, 400, false),
            settle(2, 50, true),
            settle(3, 1, false),
        ],
        None,
    )
    .await?;
    Ok(())
}

/// Sequential requests for `window`: microseconds per request.
async fn sequential(
    b: Arc<dyn Backend>,
    window: Duration,
    split: bool,
) -> anyhow::Result<(f64, u64)> {
    let cs = checks(0);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        for _ in 0..64 {
            request(b.as_ref(), &cs, split).await?;
        }
        n += 64;
    }
    Ok((start.elapsed().as_secs_f64() * 1e6 / n as f64, n))
}

/// `tasks` concurrent callers (distinct users) for `window`: requests per second.
async fn concurrent(
    b: Arc<dyn Backend>,
    tasks: usize,
    window: Duration,
    split: bool,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let b = b.clone();
        handles.push(tokio::spawn(async move {
            let cs = checks(t + 1);
            let mut n = 0u64;
            while start.elapsed() < window {
                request(b.as_ref(), &cs, split).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(quick: bool) -> anyhow::Result<Value> {
    let window = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    println!();
    println!("limit decisions in process: one request = admit (request rate, 600-token reservation, compute pre-check, stream slot) + settle (400 tokens back, 50 ms compute, stream freed); {}s windows", window.as_secs());
    println!(
        "| backend | µs per request (1 caller) | requests/s (1 caller) | requests/s (16 callers) |"
    );
    println!("|---|---:|---:|---:|");
    let mut out = serde_json::Map::new();
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("palisade:bench:{}:", std::process::id());
    let redis: Option<Arc<dyn Backend>> =
        match RedisBackend::connect_with_prefix(&url, &prefix).await {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                println!("| redis | unavailable ({e}) | | |");
                None
            }
        };
    let runs = [
        ("memory", memory.clone(), false),
        ("memory, settled in 3 calls", memory, true),
    ]
    .into_iter()
    .chain(redis.into_iter().flat_map(|r| {
        [
            ("redis", r.clone(), false),
            ("redis, settled in 3 calls", r, true),
        ]
    }));
    for (name, b, split) in runs {
        let (us, _) = sequential(b.clone(), window, split).await?;
        let rps16 = concurrent(b, 16, window, split).await?;
        println!(
            "| {name} | {us:.2} | {:.0} | {rps16:.0} |",
            1e6 / us.max(f64::MIN_POSITIVE)
        );
        out.insert(
            name.into(),
            json!({"us_per_request": us, "requests_per_s_1": 1e6 / us.max(f64::MIN_POSITIVE),
                "requests_per_s_16": rps16}),
        );
    }
    Ok(Value::Object(out))
}
