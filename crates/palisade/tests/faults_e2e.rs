//! Fault tests (issue 12): what clients see when a part of the system fails, and what survives.
//! - `kill -9` of Palisade during a burst of writes, 20 times on one data dir: after each
//!   restart every message a client saw acknowledged is stored and readable, and the audit
//!   chain verifies.
//! - The database (a PostgreSQL of the test's own) stopped under load and started again:
//!   while it is down requests fail at once with a clean, typed 503, and they succeed again
//!   without restarting Palisade.
//! - Redis (a `redis-server` of the test's own) killed under load and started again: likewise.
//!
//! The model is the stub upstream (`common::stub`), so the load is the server's own work.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::own_services::{OwnPostgres, OwnRedis};
use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Sends one chat message to the stub model; `Some((session id, reply))` when it was
/// acknowledged (200), `None` on a refused or broken request.
async fn say(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    text: &str,
) -> Option<(String, String)> {
    let r = client
        .post(format!("{base}/api/chat/message"))
        .bearer_auth(token)
        .json(&json!({"message": text, "model": "cloud", "max_tokens": 16}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    Some((
        v["session_id"].as_str()?.to_string(),
        v["content"].as_str()?.to_string(),
    ))
}

/// The (role, content) pairs stored in a conversation.
async fn stored(s: &Server, token: &str, session: &str) -> Vec<(String, String)> {
    let r = s
        .get(token, &format!("/api/chat/sessions/{session}/messages"))
        .await;
    assert_eq!(r.status(), StatusCode::OK, "session {session} unreadable");
    let v: Value = r.json().await.unwrap();
    v["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    const TRIALS: usize = 20;
    const WRITERS: usize = 6;
    let (upstream, _up) = common::stub::start().await;
    let cfg = common::stub::config(&upstream, "");
    let env = [("PALISADE_CONFIG", cfg.path().to_str().unwrap())];
    let mut s = Server::start(&env);
    // marker → (session, trial) of every acknowledged message, over all trials.
    let mut acked: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut lost_in_flight = 0usize;
    // The longest wait for a trial's first acknowledgement.
    let mut first_ack = Duration::ZERO;
    for trial in 0..TRIALS {
        let admin = s.admin_token().await;
        // Everything acknowledged before this crash is still there (the trials before).
        let acked_here = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (client, base, token) = (s.client.clone(), s.base.clone(), admin.clone());
            let (acked_here, stop) = (acked_here.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut failed = 0usize;
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let marker = format!("durable-{trial}-{w}-{i}");
                    match say(&client, &base, &token, &marker).await {
                        Some((session, reply)) => {
                            assert!(reply.contains(&marker), "{reply}");
                            acked_here.lock().unwrap().push((marker, session));
                        }
                        None => {
                            // The server is gone: stop writing.
                            failed += 1;
                            break;
                        }
                    }
                }
                failed
            }));
        }
        // The burst is under way once the first message is acknowledged (a fresh server's
        // first request may take longer than the shortest delay below, on a busy machine or
        // with PostgreSQL's first connections); the crash comes at a different moment of each
        // burst after that.
        let started = Instant::now();
        while acked_here.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "trial {trial}: no message acknowledged within 30 s"
            );
            assert!(
                !writers.iter().all(|w| w.is_finished()),
                "trial {trial}: every writer stopped before any message was acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        first_ack = first_ack.max(started.elapsed());
        let delay = 100 + (trial as u64 * 97) % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        s.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            lost_in_flight += w.await.unwrap();
        }
        let here = std::mem::take(&mut *acked_here.lock().unwrap());
        assert!(!here.is_empty(), "trial {trial}: nothing was acknowledged");
        for (marker, session) in here {
            acked.insert(marker, (session, trial));
        }
        s = s.restart(&env);
        // Every acknowledged message of this trial is stored with its answer, and readable.
        let admin = s.admin_token().await;
        for (marker, (session, _)) in acked.iter().filter(|(_, (_, t))| *t == trial) {
            let messages = stored(&s, &admin, session).await;
            assert!(
                messages.contains(&("user".to_string(), marker.clone())),
                "trial {trial}: acknowledged {marker} lost: {messages:?}"
            );
            assert!(
                messages
                    .iter()
                    .any(|(role, c)| role == "assistant" && c.contains(marker.as_str())),
                "trial {trial}: the answer to {marker} lost: {messages:?}"
            );
        }
    }
    // At the end: every conversation of every trial is listed and readable, and the audit chain
    // verifies over all the crashes.
    let admin = s.admin_token().await;
    let mut sessions = std::collections::BTreeSet::new();
    let mut offset = 0;
    loop {
        let page: Value = s
            .get(
                &admin,
                &format!("/api/chat/sessions?limit=100&offset={offset}"),
            )
            .await
            .json()
            .await
            .unwrap();
        let list = page["sessions"].as_array().unwrap().clone();
        for x in &list {
            sessions.insert(x["id"].as_str().unwrap().to_string());
        }
        if list.len() < 100 {
            break;
        }
        offset += 100;
    }
    for (marker, (session, _)) in &acked {
        assert!(
            sessions.contains(session),
            "{marker}'s conversation is not listed"
        );
    }
    s.kill();
    let (code, report) = common::cli(s.data_dir(), &["audit", "verify"]);
    assert_eq!(code, 0, "{report}");
    eprintln!(
        "kill -9: {TRIALS} trials, {} acknowledged messages all stored, {lost_in_flight} requests in flight at a crash, first acknowledgement after at most {first_ack:?}",
        acked.len()
    );
}

/// What one request of a load loop saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Ok,
    /// A JSON error: status and `error.code`.
    Error(u16, String),
    /// Not a typed JSON error (a bare status, a broken body, a timeout).
    Untyped(String),
}

async fn seen(r: Result<reqwest::Response, reqwest::Error>) -> Seen {
    match r {
        Err(e) => Seen::Untyped(format!("transport: {e}")),
        Ok(r) if r.status().is_success() => Seen::Ok,
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            match r.json::<Value>().await {
                Ok(v) => match v["error"]["code"].as_str() {
                    Some(code) if status != 503 || retry_after => {
                        Seen::Error(status, code.to_string())
                    }
                    Some(code) => Seen::Untyped(format!("{status} {code} without Retry-After")),
                    None => Seen::Untyped(format!("{status} {v}")),
                },
                Err(e) => Seen::Untyped(format!("{status} body: {e}")),
            }
        }
    }
}

/// Load of reads and writes from `workers` loops until `stop`; every outcome with the time it
/// came, and the longest single request.
fn load(
    s: &Server,
    token: &str,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(Instant, Duration, Seen)>>> {
    (0..workers)
        .map(|w| {
            let (client, base, token, stop) =
                (s.client.clone(), s.base.clone(), token.to_string(), stop.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let req = if (i + w).is_multiple_of(2) {
                        client
                            .get(format!("{base}/api/chat/sessions"))
                            .bearer_auth(&token)
                    } else {
                        client
                            .post(format!("{base}/api/chat/message"))
                            .bearer_auth(&token)
                            .json(&json!({"message": format!("Please summarise note {w}-{i} in one line."), "model": "cloud",
                                          "max_tokens": 8}))
                    };
                    let r = req.timeout(Duration::from_secs(15)).send().await;
                    let what = seen(r).await;
                    out.push((t, t.elapsed(), what));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                out
            })
        })
        .collect()
}

async fn outcomes(
    handles: Vec<tokio::task::JoinHandle<Vec<(Instant, Duration, Seen)>>>,
) -> Vec<(Instant, Duration, Seen)> {
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_by_key(|(t, _, _)| *t);
    all
}

/// Waits (up to 30 s) until `path` answers 200 again.
async fn recovers(s: &Server, token: &str, path: &str) -> Duration {
    let started = Instant::now();
    loop {
        let r = s.get(token, path).await;
        if r.status() == StatusCode::OK {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{path} did not recover: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_fails_cleanly_and_recovers() {
    // It always runs on a PostgreSQL of its own: once is enough.
    if common::skip_on_postgres("the test runs its own PostgreSQL in the SQLite pass") {
        return;
    }
    let pg = OwnPostgres::start();
    let (upstream, _up) = common::stub::start().await;
    let cfg = common::stub::config(&upstream, "");
    let url = pg.url();
    let s = Server::start(&[
        ("PALISADE_CONFIG", cfg.path().to_str().unwrap()),
        ("PALISADE_STORE__URL", url.as_str()),
        // Fail fast while the database is away rather than holding requests.
        ("PALISADE_STORE__ACQUIRE_TIMEOUT_SECS", "2"),
    ]);
    let admin = s.admin_token().await;
    assert!(say(&s.client, &s.base, &admin, "before the outage")
        .await
        .is_some());

    let (requests, back_after) = outage_under_load(&s, &admin, "the database", |up| {
        if up {
            pg.start_again()
        } else {
            pg.stop("fast")
        }
    })
    .await;
    // Writes work again, the answer is stored, and nothing was left half-written: the audit
    // chain verifies and readiness is back.
    let (session, _) = say(&s.client, &s.base, &admin, "after the outage marker")
        .await
        .expect("a chat after the database came back");
    assert!(stored(&s, &admin, &session)
        .await
        .contains(&("user".to_string(), "after the outage marker".to_string())));
    let r = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!s.log().contains("panicked"), "{}", s.log());
    let mut verify = common::command_in(s.data_dir());
    let out = verify
        .args(["audit", "verify", "--data-dir"])
        .arg(s.data_dir())
        .env("PALISADE_STORE__URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("database restart: {requests} requests, back {back_after:?} after the start");
}

/// Takes `what` away (`set_up(false)`) for 5 s under load from 4 clients, with readiness saying
/// 503 meanwhile, brings it back (`set_up(true)`) and checks the outage with [`check_outage`]. Returns how many
/// requests the clients made and how long after `up` service came back.
async fn outage_under_load(
    s: &Server,
    admin: &str,
    what: &str,
    mut set_up: impl FnMut(bool),
) -> (usize, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = load(s, admin, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let down_at = Instant::now();
    set_up(false);
    // Down for a while, under load; readiness says so.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "{what} is away"
    );
    // Away longer than the database's acquire timeout (2 s) plus a request's start: a request
    // that starts inside the outage runs into it rather than outlasting it. (With the hot
    // reads a request touches the database only for its own work, not to authenticate, so it
    // waits on the pool instead of failing on a broken connection at once.)
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let up_at = Instant::now();
    set_up(true);
    let back_after = recovers(s, admin, "/api/chat/sessions").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let all = outcomes(handles).await;
    check_outage(&all, down_at, up_at, what);
    (all.len(), back_after)
}

/// The requests of a load that saw an outage: every answer was a success or a typed error
/// (503 with `Retry-After` for the outage), none hung, the outage was seen, and after it the
/// server answered again.
fn check_outage(all: &[(Instant, Duration, Seen)], down_at: Instant, up_at: Instant, what: &str) {
    let mut kinds: BTreeMap<Seen, usize> = BTreeMap::new();
    for (_, _, k) in all {
        *kinds.entry(k.clone()).or_default() += 1;
    }
    eprintln!("{what} outage: {kinds:?}");
    if std::env::var("FAULTS_TRACE").is_ok() {
        for (t, took, k) in all {
            let at = t.saturating_duration_since(down_at).as_millis() as i64
                - down_at.saturating_duration_since(*t).as_millis() as i64;
            eprintln!("  at {at} ms took {} ms: {k:?}", took.as_millis());
        }
    }
    for (_, took, k) in all {
        assert!(
            !matches!(k, Seen::Untyped(_)),
            "an untyped failure while {what} was away: {k:?} ({kinds:?})"
        );
        if let Seen::Error(status, code) = k {
            assert!(
                *status == 503 || *status == 429,
                "{status} {code} while {what} was away ({kinds:?})"
            );
        }
        assert!(
            *took < Duration::from_secs(10),
            "a request hung for {took:?} while {what} was away"
        );
    }
    let during = all
        .iter()
        .filter(|(t, _, _)| *t > down_at + Duration::from_millis(300) && *t < up_at);
    assert!(
        during
            .clone()
            .any(|(_, _, k)| matches!(k, Seen::Error(503, _))),
        "no request saw {what} gone ({kinds:?})"
    );
    assert!(
        all.iter().any(|(t, _, k)| *t > up_at && *k == Seen::Ok),
        "nothing succeeded after {what} came back ({kinds:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_load_fails_cleanly_and_recovers() {
    let mut redis = OwnRedis::start();
    let (upstream, _up) = common::stub::start().await;
    let cfg = common::stub::config(&upstream, "");
    let url = redis.url();
    let s = Server::start(&[
        ("PALISADE_CONFIG", cfg.path().to_str().unwrap()),
        ("PALISADE_REDIS__URL", url.as_str()),
    ]);
    let admin = s.admin_token().await;
    assert!(say(&s.client, &s.base, &admin, "before the outage")
        .await
        .is_some());

    let (requests, back_after) = outage_under_load(&s, &admin, "Redis", |up| {
        if up {
            redis.start_again()
        } else {
            redis.kill()
        }
    })
    .await;
    // The restarted Redis holds nothing: tokens issued before still work (revocations live in
    // the database too), a chat works, readiness is back.
    assert!(say(&s.client, &s.base, &admin, "after the outage")
        .await
        .is_some());
    let r = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!s.log().contains("panicked"), "{}", s.log());
    eprintln!("Redis restart: {requests} requests, back {back_after:?} after the start");
}
