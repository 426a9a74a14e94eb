//! Engine throughput through the HTTP API: decode tokens/s of one SSE stream, and the aggregate
//! of N concurrent streams on the same model, measured side by side in one run.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Palisade engine benchmark (through the HTTP API)")]
struct Args {
    /// The palisade binary to start.
    #[arg(long)]
    server: PathBuf,
    /// Fewer rounds and tokens (CI).
    #[arg(long)]
    quick: bool,
    /// Concurrent streams of the batched scenario.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Fail when aggregate(N) / single < this.
    #[arg(long, default_value_t = 1.8)]
    min_ratio: f64,
    /// Write the figures here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

const PASSWORD: &str = "bench-admin-password";
const PROMPTS: &[&str] = &[
    "Write a long, detailed story about a dragon who learns to paint.",
    "Write a long essay about the history of the Roman Empire.",
    "Describe, in great detail, a journey across the Sahara desert.",
    "Write a long story about a robot who wants to become a chef.",
    "Explain in detail how airplanes fly, with many examples.",
    "Write a long story about two friends sailing around the world.",
    "Describe in detail the life of a medieval blacksmith.",
    "Write a long fairy tale about a princess who becomes an astronomer.",
];

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    base: String,
    client: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(bin: &PathBuf, streams: usize) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("PALISADE_ADMIN_PASSWORD", PASSWORD)
        .env("PALISADE_MODEL__PARALLEL", streams.to_string())
        .env("PALISADE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting palisade")?;
    let out = child.stdout.take().context("no stdout")?;
    let mut base = None;
    for line in BufReader::new(out).lines() {
        let line = line?;
        if let Some((_, url)) = line.split_once("listening on ") {
            base = Some(url.trim().to_string());
            break;
        }
    }
    let base = base.context("server exited before listening")?;
    let cert = std::fs::read(dir.path().join("tls/cert.pem"))?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert)?)
        .timeout(Duration::from_secs(600))
        .build()?;
    Ok(Server {
        child,
        _dir: dir,
        base,
        client,
    })
}

/// One streamed answer: tokens produced, time to first token, time to the end.
#[derive(Debug, Clone, Copy)]
struct Run {
    tokens: u64,
    ttft: Duration,
    total: Duration,
}

async fn stream_once(
    s: &Server,
    token: &str,
    prompt: &str,
    max_tokens: u32,
    seed: u32,
) -> anyhow::Result<Run> {
    let t0 = Instant::now();
    let r = s
        .client
        .post(format!("{}/api/chat/message", s.base))
        .bearer_auth(token)
        .json(
            &json!({"message": prompt, "stream": true, "max_tokens": max_tokens,
                      "temperature": 0.8, "seed": seed}),
        )
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("chat request failed: {}", r.status());
    }
    let mut body = r.bytes_stream();
    let mut buf = String::new();
    let mut ttft = None;
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            let v: Value = serde_json::from_str(data.trim())?;
            match v["type"].as_str() {
                Some("token") if ttft.is_none() => ttft = Some(t0.elapsed()),
                Some("end") => {
                    return Ok(Run {
                        tokens: v["metadata"]["completion_tokens"].as_u64().unwrap_or(0),
                        ttft: ttft.unwrap_or_default(),
                        total: t0.elapsed(),
                    })
                }
                Some("error") => bail!("stream error: {v}"),
                _ => {}
            }
        }
    }
    bail!("stream ended without an end event")
}

/// Runs `n` concurrent streams; returns (aggregate tokens/s, runs).
async fn concurrent(
    s: &Server,
    token: &str,
    n: usize,
    max_tokens: u32,
    round: u32,
) -> anyhow::Result<(f64, Vec<Run>)> {
    let t0 = Instant::now();
    let futs = (0..n).map(|i| {
        stream_once(
            s,
            token,
            PROMPTS[i % PROMPTS.len()],
            max_tokens,
            round * 100 + i as u32,
        )
    });
    let runs = futures::future::try_join_all(futs).await?;
    let wall = t0.elapsed().as_secs_f64();
    let tokens: u64 = runs.iter().map(|r| r.tokens).sum();
    Ok((tokens as f64 / wall, runs))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (rounds, max_tokens) = if args.quick { (2u32, 192u32) } else { (3, 256) };
    let s = start(&args.server, args.streams)?;
    let login: Value = s
        .client
        .post(format!("{}/api/auth/login", s.base))
        .json(&json!({"username": "admin", "password": PASSWORD}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .context("login failed")?
        .to_string();

    // Warm-up: page the model in, fill caches.
    stream_once(&s, &token, PROMPTS[0], 32, 1).await?;

    let mut single = Vec::new();
    let mut batched = Vec::new();
    let mut ttft_single = Vec::new();
    let mut ttft_batched = Vec::new();
    let mut tokens_batched = Vec::new();
    // Interleave the scenarios so drift on the machine affects both alike.
    for round in 0..rounds {
        let (tps1, r1) = concurrent(&s, &token, 1, max_tokens, round).await?;
        single.push(tps1);
        ttft_single.extend(r1.iter().map(|r| r.ttft.as_secs_f64() * 1000.0));
        let (tpsn, rn) = concurrent(&s, &token, args.streams, max_tokens, round).await?;
        batched.push(tpsn);
        ttft_batched.extend(rn.iter().map(|r| r.ttft.as_secs_f64() * 1000.0));
        tokens_batched.extend(rn.iter().map(|r| r.tokens as f64));
        let total_ms: Vec<u128> = rn.iter().map(|r| r.total.as_millis()).collect();
        eprintln!(
            "round {}: 1 stream {:.1} tok/s | {} streams {:.1} tok/s (per-stream ms {:?})",
            round + 1,
            tps1,
            args.streams,
            tpsn,
            total_ms
        );
    }
    let s1 = median(single);
    let sn = median(batched);
    let ratio = if s1 > 0.0 { sn / s1 } else { 0.0 };
    let ttft1 = median(ttft_single);
    let ttftn = median(ttft_batched);
    println!();
    println!("engine throughput through POST /api/chat/message (SSE), model smollm2-135m, {max_tokens} max tokens, median of {rounds}");
    println!("| scenario | tokens/s | median TTFT ms |");
    println!("|---|---:|---:|");
    println!("| 1 stream | {s1:.1} | {ttft1:.0} |");
    println!(
        "| {} streams (aggregate) | {sn:.1} | {ttftn:.0} |",
        args.streams
    );
    println!(
        "ratio {}-stream aggregate / single: {ratio:.2}x (required >= {:.2}x)",
        args.streams, args.min_ratio
    );
    println!(
        "mean tokens per batched stream: {:.0}",
        tokens_batched.iter().sum::<f64>() / tokens_batched.len().max(1) as f64
    );

    if let Some(out) = &args.out {
        let doc = json!({
            "engine_throughput": {
                "model": "smollm2-135m",
                "max_tokens": max_tokens,
                "rounds": rounds,
                "single_stream_tokens_per_s": s1,
                "concurrent_streams": args.streams,
                "aggregate_tokens_per_s": sn,
                "ratio": ratio,
                "ttft_ms_single_median": ttft1,
                "ttft_ms_concurrent_median": ttftn,
            }
        });
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(out, serde_json::to_string_pretty(&doc)?)?;
    }
    if ratio < args.min_ratio {
        bail!(
            "aggregate of {} streams is only {ratio:.2}x the single stream (need {:.2}x)",
            args.streams,
            args.min_ratio
        );
    }
    Ok(())
}
