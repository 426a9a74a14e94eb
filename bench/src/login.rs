//! Login throughput: `POST /api/auth/login` with the right password, closed loop at concurrency
//! 1 and 4, so the cost of Argon2id (the password hash, deliberately slow) is visible next to
//! everything else a login does (the session, refresh token and audit rows).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{start, PASSWORD};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub async fn run(bin: &std::path::PathBuf, window: Duration) -> anyhow::Result<Value> {
    let s = start(
        bin,
        4,
        &[("PALISADE_AUTH__IP_LIMIT_PER_MINUTE", "10000000")],
    )?;
    let mut out = serde_json::Map::new();
    for concurrency in [1usize, 4] {
        let until = Instant::now() + window;
        let workers = (0..concurrency).map(|_| {
            let s = &s;
            async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < until {
                    let t = Instant::now();
                    let r = s
                        .client
                        .post(format!("{}/api/auth/login", s.base))
                        .json(&json!({"username": "admin", "password": PASSWORD}))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }
        });
        let results = futures::future::join_all(workers).await;
        let mut lat: Vec<f64> = results.iter().flat_map(|(l, _)| l.clone()).collect();
        let errors: u64 = results.iter().map(|(_, e)| e).sum();
        lat.sort_by(|a, b| a.total_cmp(b));
        let per_s = lat.len() as f64 / window.as_secs_f64();
        println!(
            "  concurrency {concurrency}: {per_s:.1} logins/s, p50 {:.1} ms, p99 {:.1} ms, {errors} errors",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        out.insert(
            format!("concurrency_{concurrency}"),
            json!({"logins_per_s": per_s, "p50_ms": percentile(&lat, 0.5),
                   "p99_ms": percentile(&lat, 0.99), "errors": errors}),
        );
    }
    Ok(Value::Object(out))
}
