//! Instructions per request (`--scenario gateway-instructions`): the gateway scenario's request
//! through Palisade (HTTPS, API-key auth, limits, guard, audit, usage, the stub upstream), with
//! the server run under valgrind's callgrind, which counts the instructions every thread of the
//! server executes in user space. The count is the same from run to run of one build whatever
//! else the machine does, where req/s and CPU time on a shared VM move by ±30%: a change to the
//! request's path is measured here before its wall-clock figures can tell it from noise.
//!
//! What it does not see: time in the kernel (system calls, loopback TCP, page faults, context
//! switches), waiting, and the disk. Background tasks (the audit search's copy, the WAL
//! checkpointer) run by wall-clock time, and the server is ~50x slower under valgrind, so they
//! weigh more per request here than at full speed: their share is given apart, and the
//! request's own path is the rest. SHA-256 runs in software under valgrind (no SHA
//! extensions), so the audit chain's HMACs count several times what they cost natively.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::gateway;

/// Runs `callgrind_control <flag> <pid>` and waits for the server to act on it.
fn control(flag: &str, pid: u32) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running callgrind_control (Debian: apt-get install valgrind)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {flag} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The newest callgrind dump in `dir` (files `callgrind.out.N`): its path and its total of
/// instructions (the `totals:` or `summary:` line).
fn newest_total(dir: &Path) -> anyhow::Result<(PathBuf, u64)> {
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('.').next())
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, path));
            }
        }
    }
    let (_, path) = best.context("callgrind wrote no dump")?;
    let text = std::fs::read_to_string(&path)?;
    let total = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .with_context(|| format!("no total in {}", path.display()))?;
    Ok((path, total))
}

/// Instructions spent in the server's background work during a dump, from
/// `callgrind_annotate`'s inclusive counts: the audit search's copy task and the statements of
/// sqlx's SQLite threads (the WAL checkpointer; no request's statement runs there on this
/// path). Both run by wall-clock time, so valgrind's slowness inflates them per request.
fn background(dump: &Path) -> u64 {
    let Ok(out) = Command::new("callgrind_annotate")
        .arg("--inclusive=yes")
        .arg(dump)
        .output()
    else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    for marker in [
        "audit_index::spawn_audit_indexer::{{closure}} [",
        "ExecuteIter as core::iter::traits::iterator::Iterator>::next [",
    ] {
        if let Some(n) = text
            .lines()
            .find(|l| l.contains(marker))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.replace(',', "").parse::<u64>().ok())
        {
            total += n;
        }
    }
    total
}

/// Sends `n` requests from `concurrency` workers (each its share, back to back); fails on any
/// error answer.
async fn fixed_count(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    concurrency: usize,
    n: usize,
) -> anyhow::Result<()> {
    let body = Arc::new(body.clone());
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let share = n / concurrency + usize::from(w < n % concurrency);
        let (client, url, key, body) = (
            client.clone(),
            url.to_string(),
            key.to_string(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&*body)
                    .send()
                    .await?;
                let status = r.status();
                r.bytes().await?;
                anyhow::ensure!(status.is_success(), "Palisade answered {status}");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub async fn run(server: &PathBuf, quick: bool) -> anyhow::Result<Value> {
    let version = Command::new("valgrind")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .context("valgrind is needed for this scenario (Debian: apt-get install valgrind)")?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let stub = gateway::start_stub()?;
    let cfg = gateway::config_file(stub)?;
    let cfg_path = cfg.path().to_string_lossy().to_string();
    let dumps = tempfile::tempdir()?;
    let wrapper = vec![
        "valgrind".to_string(),
        "--tool=callgrind".to_string(),
        // Start-up (migrations, the admin's Argon2 hash, the TLS certificate) is not counted
        // and runs faster uninstrumented.
        "--instr-atstart=no".to_string(),
        format!(
            "--callgrind-out-file={}",
            dumps.path().join("callgrind.out").display()
        ),
    ];
    let started = Instant::now();
    let s = crate::start_wrapped(
        &wrapper,
        server,
        1,
        tempfile::tempdir()?,
        &[("PALISADE_CONFIG", cfg_path.as_str())],
    )?;
    let pid = s.child.id();
    let token = crate::admin_token(&s).await?;
    let key = gateway::api_key(&s.client, &s.base, &token).await?;
    let body = json!({"model": "stub", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16});
    let url = format!("{}/v1/chat/completions", s.base);
    println!();
    println!(
        "gateway instructions per request ({version} callgrind, all of the server's threads, user space; server up in {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    control("--instr=on", pid)?;
    // Warm-up: caches, the first batches.
    fixed_count(&s.client, &url, &key, &body, 4, 64).await?;
    println!("| load | requests | seconds | M instructions / request | of which background | request path |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let loads: &[(usize, usize)] = if quick {
        &[(1, 200), (64, 640)]
    } else {
        &[(1, 500), (64, 1920)]
    };
    let keep = Path::new("bench/results");
    let mut rows = Vec::new();
    for &(c, n) in loads {
        // The client's connections for this concurrency are opened (TLS handshakes) before
        // counting starts: the count is of requests on open connections, as in a steady load.
        fixed_count(&s.client, &url, &key, &body, c, 2 * c).await?;
        control("--zero", pid)?;
        let t = Instant::now();
        fixed_count(&s.client, &url, &key, &body, c, n).await?;
        let secs = t.elapsed().as_secs_f64();
        control(&format!("--dump=c{c}"), pid)?;
        let (path, total) = newest_total(dumps.path())?;
        let per = total as f64 / n as f64;
        let bg = background(&path) as f64 / n as f64;
        println!(
            "| c={c} | {n} | {secs:.1} | {:.3} | {:.3} | {:.3} |",
            per / 1e6,
            bg / 1e6,
            (per - bg) / 1e6
        );
        // Kept for `callgrind_annotate` (where the instructions went).
        let kept = keep.join(format!("gateway.callgrind.c{c}"));
        if keep.is_dir() {
            std::fs::copy(&path, &kept)?;
        }
        rows.push(json!({
            "load": format!("c={c}"),
            "requests": n,
            "seconds": secs,
            "instructions_per_request": per,
            "background_instructions_per_request": bg,
            "request_path_instructions_per_request": per - bg,
        }));
    }
    if keep.is_dir() {
        println!("(the dumps: bench/results/gateway.callgrind.c*; `callgrind_annotate --inclusive=yes FILE` shows where they went)");
    }
    Ok(json!({"valgrind": version, "rows": rows}))
}
