//! Streaming fan-out: N SSE streams and M WebSockets held open at once through Palisade, each
//! receiving a slow answer (one token a second from a stub upstream that never ends on its
//! own), with the full pipeline on (TLS, auth, limits, guard on every token, audit, storage).
//! Reported: errors, time to first token percentiles, and Palisade's resident memory per open
//! stream (VmRSS with every stream open, less VmRSS before, over N).
//!
//! The stub upstream speaks HTTP/2 over TLS (ALPN), as hosted model APIs do: Palisade's upstream
//! client multiplexes every stream over one connection, so each stream needs one socket, the
//! client's. The file-descriptor limit is raised first (`prlimit`, up to the hard limit; as
//! root, beyond it).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::{admin_token, start, Server};

/// Time between two words of the stub's answers.
const GAP: Duration = Duration::from_secs(1);

/// The first frame of every answer, at once.
const OPENING: &str = "Once upon a time, in a harbour town where the fog came in every evening, \
    there lived a lighthouse keeper who kept a notebook of every ship that passed. One winter a \
    ship came by that was in no register at all, and this is the story of what he found. ";

fn chunk(text: &str) -> Bytes {
    let v = json!({"id": "f", "object": "chat.completion.chunk", "created": 1, "model": "stub",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    Bytes::from(format!("data: {v}\n\n"))
}

/// A stub upstream whose streamed answers trickle out one word per [`GAP`] for ten minutes (the
/// client ends them). Runs on its own thread, over TLS with HTTP/2; returns its address and
/// certificate (PEM).
fn start_slow_stub() -> anyhow::Result<(std::net::SocketAddr, String)> {
    crate::gateway::serve_stub_tls(|req| async move {
        let _ = req.into_body().collect().await;
        let words = futures::stream::unfold(0u32, |i| async move {
            if i > 0 {
                tokio::time::sleep(GAP).await;
            }
            (i < 600).then(|| {
                // The first frame is a whole opening paragraph, longer than the output guard's
                // hold-back window: time to first token then measures Palisade, not the window
                // at one word a second.
                let text = if i == 0 {
                    OPENING.to_string()
                } else {
                    format!("w{i} ")
                };
                let frame = hyper::body::Frame::data(chunk(&text));
                (Ok::<_, Infallible>(frame), i + 1)
            })
        });
        let mut r = hyper::Response::new(StreamBody::new(words));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        r
    })
}

/// Raises this process's descriptor limit (inherited by the server it starts) to `want`;
/// returns the limit in force.
fn raise_nofile(want: u64) -> u64 {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={want}:{want}")])
        .stderr(std::process::Stdio::null())
        .status();
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// The server's resident memory, kB.
fn rss_kb(s: &Server) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", s.child.id()))
        .ok()
        .and_then(|st| {
            st.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// What the open streams report back.
#[derive(Default)]
struct Tally {
    ttft_ms: Mutex<Vec<f64>>,
    open: AtomicU64,
    errors: AtomicU64,
    tokens: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn fail(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock() {
            f.get_or_insert(why);
        }
    }
}

/// Resolves once the streams are released.
async fn released(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|r| *r).await.is_ok();
}

/// One SSE stream: open, wait for the first token, then keep reading until `release`.
async fn sse_stream(
    s: &Conn,
    token: &str,
    tally: &Tally,
    release: &tokio::sync::watch::Receiver<bool>,
    mut opening: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let t0 = Instant::now();
    let r = s
        .client
        .post(format!("{}/api/chat/message", s.base))
        .bearer_auth(token)
        .json(
            &json!({"message": "Tell me a long story.", "model": "slow", "stream": true,
                      "max_tokens": 4000}),
        )
        .send()
        .await;
    let r = match r {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return tally.fail(format!("status {}", r.status())),
        Err(e) => return tally.fail(format!("request: {e}")),
    };
    let mut body = r.bytes_stream();
    let mut release = release.clone();
    let mut first = true;
    loop {
        let next = tokio::select! {
            n = body.next() => n,
            _ = released(&mut release) => return,
        };
        match next {
            Some(Ok(b)) => {
                let text = String::from_utf8_lossy(&b);
                let tokens = text.matches("\"type\":\"token\"").count() as u64;
                if tokens > 0 {
                    if first {
                        first = false;
                        tally.open.fetch_add(1, Ordering::Relaxed);
                        opening.take();
                        if let Ok(mut t) = tally.ttft_ms.lock() {
                            t.push(t0.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    tally.tokens.fetch_add(tokens, Ordering::Relaxed);
                }
                if text.contains("\"type\":\"error\"") || text.contains("\"type\":\"end\"") {
                    return tally.fail(format!("the stream ended early: {text}"));
                }
            }
            Some(Err(e)) => return tally.fail(format!("stream: {e}")),
            None => return tally.fail("the stream closed early".into()),
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn ws_open(s: &Conn, tls: &tokio_rustls::TlsConnector, token: &str) -> anyhow::Result<Ws> {
    let ticket: Value = s
        .client
        .post(format!("{}/api/chat/ws/ticket", s.base))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    let ticket = ticket["ticket"].as_str().context("no ticket")?;
    let addr = s.base.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let stream = tls.connect(name, tcp).await?;
    let url = format!("wss://{addr}/api/chat/ws?ticket={ticket}");
    let (ws, _) = tokio_tungstenite::client_async(url.into_client_request()?, stream).await?;
    Ok(ws)
}

/// One WebSocket: open, ask, wait for the first token, then keep reading until `release`.
async fn ws_stream(
    s: &Conn,
    tls: &tokio_rustls::TlsConnector,
    token: &str,
    tally: &Tally,
    release: &tokio::sync::watch::Receiver<bool>,
    mut opening: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let t0 = Instant::now();
    let mut ws = match ws_open(s, tls, token).await {
        Ok(ws) => ws,
        Err(e) => return tally.fail(format!("websocket: {e}")),
    };
    let ask = json!({"type": "message", "content": "Tell me a long story.", "model": "slow",
                     "max_tokens": 4000});
    if let Err(e) = ws.send(Message::Text(ask.to_string().into())).await {
        return tally.fail(format!("websocket send: {e}"));
    }
    let mut release = release.clone();
    let mut first = true;
    loop {
        let next = tokio::select! {
            n = ws.next() => n,
            _ = released(&mut release) => {
                let _ = ws.close(None).await;
                return;
            }
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                if t.contains("\"type\":\"token\"") {
                    if first {
                        first = false;
                        tally.open.fetch_add(1, Ordering::Relaxed);
                        opening.take();
                        if let Ok(mut v) = tally.ttft_ms.lock() {
                            v.push(t0.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    tally.tokens.fetch_add(1, Ordering::Relaxed);
                } else if t.contains("\"type\":\"error\"") || t.contains("\"type\":\"end\"") {
                    return tally.fail(format!("the answer ended early: {t}"));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return tally.fail(format!("websocket: {e}")),
            None => return tally.fail("the websocket closed early".into()),
        }
    }
}

/// Opens `n` streams of one transport (at most `ramp` opening at a time), holds them until all
/// have their first token (or `deadline`), measures, then releases them. The figures.
async fn hold(
    s: &Server,
    token: &str,
    transport: &str,
    n: usize,
    tls: &tokio_rustls::TlsConnector,
) -> anyhow::Result<Value> {
    let base_kb = rss_kb(s);
    let tally = Arc::new(Tally::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let opening = Arc::new(tokio::sync::Semaphore::new(200));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = opening.clone().acquire_owned().await?;
        let (t, rx, tls) = (tally.clone(), rx.clone(), tls.clone());
        let conn = Conn {
            client: s.client.clone(),
            base: s.base.clone(),
        };
        let (token, sse) = (token.to_string(), transport == "sse");
        tasks.push(tokio::spawn(async move {
            if sse {
                sse_stream(&conn, &token, &t, &rx, Some(permit)).await
            } else {
                ws_stream(&conn, &tls, &token, &t, &rx, Some(permit)).await
            }
        }));
        if tally.errors.load(Ordering::Relaxed) > (n as u64 / 100).max(10) {
            break;
        }
    }
    // Every stream has its first token (or failed).
    let deadline = Instant::now() + Duration::from_secs(180);
    while tally.open.load(Ordering::Relaxed) + tally.errors.load(Ordering::Relaxed) < n as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp = started.elapsed();
    // Held for a few token gaps with every stream open: tokens keep flowing to all of them.
    let tokens_before = tally.tokens.load(Ordering::Relaxed);
    tokio::time::sleep(GAP * 3).await;
    let flowing = tally.tokens.load(Ordering::Relaxed) - tokens_before;
    let open_kb = rss_kb(s);
    let open = tally.open.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    let _ = tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let mut ttft = tally.ttft_ms.lock().map(|v| v.clone()).unwrap_or_default();
    ttft.sort_by(|a, b| a.total_cmp(b));
    let per_stream_kb = open_kb.saturating_sub(base_kb) as f64 / (open.max(1) as f64);
    let first_error = tally.first_error.lock().ok().and_then(|e| e.clone());
    println!(
        "  {transport:>9} {n:>6} asked, {open:>6} open, {errors:>4} errors; TTFT p50 {:.0} / p95 {:.0} / p99 {:.0} ms; \
         opened in {:.1} s; {:.0} tokens/s to all; server RSS {} -> {} MB = {per_stream_kb:.1} kB per stream",
        percentile(&ttft, 0.5),
        percentile(&ttft, 0.95),
        percentile(&ttft, 0.99),
        ramp.as_secs_f64(),
        flowing as f64 / (GAP * 3).as_secs_f64(),
        base_kb / 1024,
        open_kb / 1024,
    );
    if let Some(e) = &first_error {
        println!("    first error: {e}");
    }
    Ok(json!({
        "asked": n, "open": open, "errors": errors,
        "ttft_ms": {"p50": percentile(&ttft, 0.5), "p95": percentile(&ttft, 0.95),
                    "p99": percentile(&ttft, 0.99)},
        "open_seconds": ramp.as_secs_f64(),
        "tokens_per_s_all_streams": flowing as f64 / (GAP * 3).as_secs_f64(),
        "server_rss_mb": {"before": base_kb / 1024, "open": open_kb / 1024},
        "kb_per_stream": per_stream_kb,
        "first_error": first_error,
    }))
}

/// What a stream task needs of the server (the process stays with the caller).
struct Conn {
    client: reqwest::Client,
    base: String,
}

/// A TLS connector that trusts the server's self-signed certificate (for the WebSockets).
fn server_tls(s: &Server) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let pem = std::fs::read(s._dir.path().join("tls/cert.pem"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c?)?;
    }
    let tls_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls_cfg)))
}

/// Runs the scenario: `sse` streams on one server, then `ws` WebSockets on a fresh one.
pub async fn run(bin: &std::path::PathBuf, sse: usize, ws: usize) -> anyhow::Result<Value> {
    // Per stream: the client's socket in this process and the accepted one in Palisade's (the
    // upstream streams share one HTTP/2 connection), plus a margin for everything else.
    let need = (sse.max(ws) + 2048) as u64;
    let limit = raise_nofile(need * 2);
    let scale = |n: usize| {
        if limit >= need {
            n
        } else {
            (limit.saturating_sub(2048) as usize).min(n)
        }
    };
    let (sse, ws) = (scale(sse), scale(ws));
    if limit < need {
        println!("  (descriptor limit {limit}: scaled down to {sse} SSE / {ws} WebSockets)");
    }
    let (stub, stub_cert) = start_slow_stub()?;
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("stub-ca.pem");
    std::fs::write(&ca, stub_cert)?;
    let cfg = dir.path().join("fanout.toml");
    std::fs::write(
        &cfg,
        format!(
            "[models.slow]\nprovider = \"openai\"\nbase_url = \"https://{stub}/v1\"\n\
             trust_zone = \"internal\"\nmax_tokens = 4000\n\
             tls = {{ ca_cert = {ca:?}, ca_only = true, http2 = true }}\n\
             timeouts = {{ connect_ms = 5000, first_token_ms = 120000, request_ms = 3600000 }}\n"
        ),
    )?;
    let cfg = cfg.to_string_lossy().to_string();
    let mut figures = serde_json::Map::new();
    // Each transport on a server of its own: closing thousands of streams at once is not part
    // of what is measured (each closed stream stores its partial answer and audits it, for
    // seconds), and the upstream connection's HTTP/2 reset-flood protection ends it when that
    // many streams are cancelled within a second (docs/configuration.md, `tls.http2`).
    for (transport, n) in [("sse", sse), ("websocket", ws)] {
        if n == 0 {
            continue;
        }
        let s = start(bin, 4, &[("PALISADE_CONFIG", cfg.as_str())])?;
        let token = admin_token(&s).await?;
        let tls = server_tls(&s)?;
        // Warm-up: a few streams first, so allocator pools, caches and the upstream
        // connection are in the baseline.
        hold(&s, &token, "sse", 20, &tls).await?;
        figures.insert(
            transport.into(),
            hold(&s, &token, transport, n, &tls).await?,
        );
    }
    let errors: u64 = figures
        .values()
        .map(|v| v["errors"].as_u64().unwrap_or(0))
        .sum();
    if errors > 0 {
        bail!("{errors} streams failed in the fan-out");
    }
    Ok(Value::Object(figures))
}
