//! Gateway overhead: the latency Palisade adds on `POST /v1/chat/completions` in front of a fast
//! OpenAI-compatible upstream. The same closed-loop client calls the upstream directly and
//! through Palisade (API-key auth, model registry, routing, the provider's SSE parsing), at
//! each concurrency, interleaved so machine drift affects both sides alike.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

type Response = hyper::Response<Full<Bytes>>;

fn answer(content_type: &'static str, body: String) -> Response {
    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// The stub upstream (plain hyper): answers every chat completion at once, streamed (SSE) or not.
async fn completion(body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if req["stream"].as_bool().unwrap_or(false) {
        let parts = [
            r#"data: {"id":"b","object":"chat.completion.chunk","created":1,"model":"stub","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}"#,
            r#"data: {"id":"b","object":"chat.completion.chunk","created":1,"model":"stub","choices":[{"index":0,"delta":{"content":" there."},"finish_reason":null}]}"#,
            r#"data: {"id":"b","object":"chat.completion.chunk","created":1,"model":"stub","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"data: {"id":"b","object":"chat.completion.chunk","created":1,"model":"stub","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#,
            "data: [DONE]",
        ];
        let text: String = parts.iter().map(|p| format!("{p}\n\n")).collect();
        return answer("text/event-stream", text);
    }
    answer(
        "application/json",
        r#"{"id":"b","object":"chat.completion","created":1,"model":"stub","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}"#.to_string(),
    )
}

/// Starts the stub on its own thread and runtime; returns its address.
pub fn start_stub() -> anyhow::Result<std::net::SocketAddr> {
    serve_stub(|req| async move {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        completion(body).await
    })
}

/// Accepts connections on a loopback port, on a thread and runtime of its own (so a stub never
/// competes with the client it measures for the client's runtime), and hands each to `serve` in
/// a task; returns the address. A failed accept (out of descriptors for a moment) waits instead
/// of spinning.
fn accept_on_thread<S, Fut>(serve: S) -> anyhow::Result<std::net::SocketAddr>
where
    S: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                return;
            };
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(tcp));
            }
        });
    });
    Ok(addr)
}

/// Serves `handler` over HTTP/1.1 on a loopback port (see [`accept_on_thread`]); returns its
/// address.
pub fn serve_stub<F, Fut, B>(handler: F) -> anyhow::Result<std::net::SocketAddr>
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    accept_on_thread(move |tcp| async move {
        let svc = hyper::service::service_fn(move |req| async move {
            Ok::<_, Infallible>(handler(req).await)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
            .await;
    })
}

/// Serves `handler` over TLS on a loopback port, HTTP/2 and HTTP/1.1 by ALPN (see
/// [`accept_on_thread`]); returns its address and the PEM of its self-signed certificate (for
/// `127.0.0.1`), for the client to trust. A client that speaks HTTP/2 (Palisade's upstream
/// client with `tls.http2`) multiplexes all its requests over one connection: the fan-out
/// scenario's streams then need no upstream socket each. One connection carries up to 100,000
/// streams.
pub fn serve_stub_tls<F, Fut, B>(handler: F) -> anyhow::Result<(std::net::SocketAddr, String)>
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])?;
    let cert_pem = ck.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let addr = accept_on_thread(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req| async move {
                Ok::<_, Infallible>(handler(req).await)
            });
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.http2().max_concurrent_streams(100_000);
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        }
    })?;
    Ok((addr, cert_pem))
}

/// Latency figures of one side at one concurrency.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub p50_us: f64,
    pub p99_us: f64,
    pub rps: f64,
    pub errors: u64,
    /// Requests answered, the warm-up included (for CPU time per request).
    pub completed: u64,
}

/// CPU time (user + system) a process has used so far, in seconds: fields 14 and 15 of
/// `/proc/PID/stat`, in USER_HZ (100 per second on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Bytes a process has caused to be written to storage so far: `write_bytes` of
/// `/proc/PID/io` (pages it dirtied in files, counted when dirtied, whichever thread of the
/// kernel later writes them back). For Palisade on SQLite: the WAL and the checkpoints.
pub fn disk_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64
}

/// The figures of a finished load: percentiles of the latencies kept, their rate over
/// `window`, and the counters.
fn figures(
    lat: &Mutex<Vec<u64>>,
    errors: &std::sync::atomic::AtomicU64,
    completed: &std::sync::atomic::AtomicU64,
    window: Duration,
) -> Figures {
    let mut all = lat.lock().map(|v| v.clone()).unwrap_or_default();
    all.sort_unstable();
    Figures {
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
        rps: all.len() as f64 / window.as_secs_f64(),
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        completed: completed.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// `concurrency` workers send requests back to back for `warm + window`; latencies of
/// requests finished inside the window count.
pub async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &Value,
    concurrency: usize,
    warm: Duration,
    window: Duration,
) -> Figures {
    let start = Instant::now();
    let from = start + warm;
    let until = from + window;
    let lat = Arc::new(Mutex::new(Vec::<u64>::with_capacity(100_000)));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let completed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.to_string();
        let key = key.map(String::from);
        let body = body.clone();
        let lat = lat.clone();
        let errors = errors.clone();
        let completed = completed.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let t = Instant::now();
                if t >= until {
                    break;
                }
                let mut req = client.post(&url).json(&body);
                if let Some(k) = &key {
                    req = req.bearer_auth(k);
                }
                let ok = match req.send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                let done = Instant::now();
                if !ok {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if t >= from && done <= until {
                    mine.push(done.duration_since(t).as_micros() as u64);
                }
            }
            if let Ok(mut all) = lat.lock() {
                all.extend(mine);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    figures(&lat, &errors, &completed, window)
}

/// Open loop at `rate` requests/s for `warm + window`: requests leave on schedule whether or
/// not earlier ones have answered (a stall is not hidden by the client waiting for it).
/// Latencies of requests scheduled inside the window count.
pub async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &Value,
    rate: u32,
    warm: Duration,
    window: Duration,
) -> Figures {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now();
    let from = start + warm;
    let until = from + window;
    let lat = Arc::new(Mutex::new(Vec::<u64>::with_capacity(
        (f64::from(rate) * window.as_secs_f64()) as usize + 16,
    )));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let completed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut sent = 0u64;
    loop {
        let scheduled = start + interval.mul_f64(sent as f64);
        if scheduled >= until {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        // Latency counts from the moment the request leaves, not from its slot: tokio's timer
        // wakes on whole milliseconds, which would add up to 1 ms to both sides. The loop
        // never waits for answers, so a slow server still meets requests on schedule.
        let issued = Instant::now();
        let mut req = client.post(url).json(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let (lat, errors, completed) = (lat.clone(), errors.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            let ok = match req.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            if !ok {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if scheduled >= from {
                if let Ok(mut v) = lat.lock() {
                    v.push(issued.elapsed().as_micros() as u64);
                }
            }
        }));
        sent += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    figures(&lat, &errors, &completed, window)
}

/// A config file for the Palisade under test: one remote model on the stub.
pub fn config_file(stub: std::net::SocketAddr) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new()?;
    write!(
        f,
        "[models.stub]\nprovider = \"openai\"\nbase_url = \"http://{stub}/v1\"\ncontext_size = 4096\n"
    )?;
    Ok(f)
}

/// Creates an API key for the admin (the benchmark's caller).
pub async fn api_key(client: &reqwest::Client, base: &str, token: &str) -> anyhow::Result<String> {
    let v: Value = client
        .post(format!("{base}/api/auth/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    v["api_key"]
        .as_str()
        .map(String::from)
        .context("creating the API key failed")
}
