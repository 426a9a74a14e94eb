//! The chat-history read path (`GET /api/chat/sessions/{id}/messages`) on PostgreSQL and Redis,
//! served by one replica and by two replicas sharing the database, measured side by side in one
//! run (rounds alternate). Each request pays for what production pays: the JWT and the session
//! checked against the database, the revocation check and the rate limit in Redis, the page
//! read under row-level security and its messages decrypted.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{admin_token, start_in, Args, Server};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS: &str = "redis://127.0.0.1:6379/4";
/// Concurrent clients (closed loop).
const CLIENTS: usize = 32;
/// Turns stored in the conversation read back (two messages each).
const TURNS: usize = 10;

/// A database of the benchmark's own, dropped afterwards.
pub(crate) struct Database {
    server: String,
    name: String,
}

impl Database {
    pub(crate) fn create(server: &str) -> anyhow::Result<Database> {
        let name = format!(
            "palisade_bench_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
        );
        psql(server, &format!("CREATE DATABASE {name}"))?;
        Ok(Database {
            server: server.to_string(),
            name,
        })
    }

    pub(crate) fn url(&self) -> String {
        let (head, tail) = self.server.split_once('?').unwrap_or((&self.server, ""));
        let base = head.rsplit_once('/').map_or(head, |(b, _)| b);
        let query = if tail.is_empty() {
            String::new()
        } else {
            format!("?{tail}")
        };
        format!("{base}/{}{query}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            &self.server,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

pub(crate) fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .context("psql (scripts/setup --test installs postgresql-client)")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether something listens at the `host:port` of `url`.
pub(crate) fn answers(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5432")
    };
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

struct Figures {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `CLIENTS` clients read the conversation back to back for `window`, client i on replica
/// `i % bases.len()`.
async fn closed_loop(
    client: &reqwest::Client,
    bases: &[&str],
    token: &str,
    session: &str,
    window: Duration,
) -> anyhow::Result<Figures> {
    let done = AtomicU64::new(0);
    let latencies = Mutex::new(Vec::new());
    let until = Instant::now() + window;
    let workers = (0..CLIENTS).map(|i| {
        let url = format!(
            "{}/api/chat/sessions/{session}/messages",
            bases[i % bases.len()]
        );
        let (done, latencies) = (&done, &latencies);
        async move {
            let mut mine = Vec::new();
            while Instant::now() < until {
                let t0 = Instant::now();
                let r = client.get(&url).bearer_auth(token).send().await?;
                if r.status() != reqwest::StatusCode::OK {
                    bail!("history read answered {}", r.status());
                }
                let _ = r.bytes().await?;
                mine.push(t0.elapsed().as_secs_f64() * 1000.0);
                done.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut l) = latencies.lock() {
                l.extend(mine);
            }
            anyhow::Ok(())
        }
    });
    let start = Instant::now();
    futures::future::try_join_all(workers).await?;
    let secs = start.elapsed().as_secs_f64();
    let mut l = latencies.into_inner().unwrap_or_default();
    l.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Figures {
        per_s: done.load(Ordering::Relaxed) as f64 / secs,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the scenario; `None` (with a note) when PostgreSQL or Redis does not answer and the
/// scenario was not asked for by name (`required`).
pub async fn run(args: &Args, required: bool) -> anyhow::Result<Option<Value>> {
    let server = std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| PG.to_string());
    if !answers(&server) || !answers(REDIS) {
        if required {
            bail!("the history scenario needs PostgreSQL ({server}) and Redis ({REDIS})");
        }
        println!("\nhistory read: skipped (needs PostgreSQL at {server} and Redis at {REDIS})");
        return Ok(None);
    }
    let (rounds, window) = if args.quick {
        (2u32, Duration::from_secs(3))
    } else {
        (3, Duration::from_secs(6))
    };
    let db = Database::create(&server)?;
    let url = db.url();
    let env = [
        ("PALISADE_STORE__URL", url.as_str()),
        ("PALISADE_REDIS__URL", REDIS),
    ];
    let a = start_in(&args.server, 2, tempfile::tempdir()?, &env)?;
    let token = admin_token(&a).await?;
    // One conversation of TURNS short turns (one generated token each).
    let mut session = Value::Null;
    for i in 0..TURNS {
        let mut body = json!({"message": format!("Note number {i}."), "max_tokens": 1});
        if !session.is_null() {
            body["session_id"] = session.clone();
        }
        let r: Value = a
            .client
            .post(format!("{}/api/chat/message", a.base))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        session = r["session_id"].clone();
    }
    let session = session
        .as_str()
        .context("no session id from the chat answer")?
        .to_string();
    // Replica B: a copy of A's data dir (keys, certificate), the same database and Redis.
    let dir_b = tempfile::tempdir()?;
    copy_dir(a._dir.path(), dir_b.path())?;
    let b: Server = start_in(&args.server, 2, dir_b, &env)?;
    let client = a.client.clone();
    // Warm both (connections, pools, caches).
    closed_loop(
        &client,
        &[&a.base, &b.base],
        &token,
        &session,
        Duration::from_millis(700),
    )
    .await?;
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        one.push(closed_loop(&client, &[&a.base], &token, &session, window).await?);
        two.push(closed_loop(&client, &[&a.base, &b.base], &token, &session, window).await?);
    }
    let summary = |f: &[Figures]| {
        (
            median(f.iter().map(|x| x.per_s).collect()),
            median(f.iter().map(|x| x.p50_ms).collect()),
            median(f.iter().map(|x| x.p99_ms).collect()),
        )
    };
    let (one_s, one_p50, one_p99) = summary(&one);
    let (two_s, two_p50, two_p99) = summary(&two);
    let ratio = if one_s > 0.0 { two_s / one_s } else { 0.0 };
    println!(
        "\nhistory read ({} messages per page, {CLIENTS} clients, PostgreSQL + Redis, medians of {rounds} rounds of {} s)",
        TURNS * 2,
        window.as_secs()
    );
    println!("| replicas | req/s | p50 ms | p99 ms |");
    println!("|---:|---:|---:|---:|");
    println!("| 1 | {one_s:.0} | {one_p50:.2} | {one_p99:.2} |");
    println!("| 2 | {two_s:.0} | {two_p50:.2} | {two_p99:.2} |");
    println!("2 replicas / 1: {ratio:.2}x (same cores as the client and PostgreSQL here)");
    drop(b);
    drop(a);
    drop(db);
    Ok(Some(json!({
        "messages_per_page": TURNS * 2,
        "clients": CLIENTS,
        "one_replica": {"req_per_s": one_s, "p50_ms": one_p50, "p99_ms": one_p99},
        "two_replicas": {"req_per_s": two_s, "p50_ms": two_p50, "p99_ms": two_p99},
        "ratio": ratio,
    })))
}
