//! The router and both wire protocols against a local HTTP upstream that misbehaves on demand:
//! OpenAI-style SSE answers (good, failing, stalling, garbage, rate limited) and recorded
//! Ollama NDJSON exchanges (see `fixtures/ollama/README.md`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::HeaderMap;
use hyper::StatusCode;
use palisade_core::models::{ModelRegistry, ModelRegistryRepository, StoredModel};
use palisade_core::provider::{
    ChatProvider, FinishReason, GenerationEvent, GenerationParams, GenerationRequest,
    PromptMessage, ProviderError, Role, RoutedStream,
};
use palisade_core::CoreResult;
use palisade_llm::cache::ResponseCache;
use palisade_llm::{Router, RouterSettings};
use palisade_types::models::{ModelSpec, ModelTimeouts, ProviderKind};
use serde_json::Value;

#[derive(Default)]
struct Stub {
    hits: Mutex<HashMap<String, usize>>,
    last_body: Mutex<HashMap<String, Value>>,
    last_headers: Mutex<HashMap<String, HeaderMap>>,
}

impl Stub {
    fn hits(&self, k: &str) -> usize {
        self.hits.lock().unwrap().get(k).copied().unwrap_or(0)
    }
    fn body(&self, k: &str) -> Value {
        self.last_body
            .lock()
            .unwrap()
            .get(k)
            .cloned()
            .unwrap_or(Value::Null)
    }
    fn header(&self, k: &str, h: &str) -> Option<String> {
        self.last_headers
            .lock()
            .unwrap()
            .get(k)
            .and_then(|m| m.get(h))
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
type Response = hyper::Response<Body>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn streamed(
    s: impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + Sync + 'static,
) -> Body {
    BodyExt::boxed(StreamBody::new(s.map(|r| r.map(Frame::data))))
}

fn respond(status: StatusCode, content_type: Option<&str>, body: Body) -> Response {
    let mut r = hyper::Response::new(body);
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, ct.parse().unwrap());
    }
    r
}

fn chunk(content: &str) -> String {
    format!(
        "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":null}}]}}\n\n",
        serde_json::to_string(content).unwrap()
    )
}

const FINISH: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"up\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13}}\n\n";

fn sse(parts: Vec<String>, then_stall: bool) -> Response {
    let items = futures::stream::iter(
        parts
            .into_iter()
            .map(|p| Ok::<Bytes, Infallible>(Bytes::from(p))),
    );
    let body = if then_stall {
        streamed(items.chain(futures::stream::pending()))
    } else {
        streamed(items)
    };
    respond(StatusCode::OK, Some("text/event-stream"), body)
}

async fn openai(stub: Arc<Stub>, mode: String, headers: HeaderMap, body: Bytes) -> Response {
    *stub.hits.lock().unwrap().entry(mode.clone()).or_default() += 1;
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    stub.last_body
        .lock()
        .unwrap()
        .insert(mode.clone(), parsed.clone());
    stub.last_headers
        .lock()
        .unwrap()
        .insert(mode.clone(), headers);
    let ok = || {
        vec![
            chunk("Hello"),
            chunk(" world"),
            FINISH.to_string(),
            USAGE.to_string(),
            "data: [DONE]\n\n".to_string(),
        ]
    };
    match mode.as_str() {
        "ok" | "ok2" => {
            if parsed["stream"] == Value::Bool(false) {
                return respond(
                    StatusCode::OK,
                    Some("application/json"),
                    full(
                        r#"{"id":"c1","object":"chat.completion","created":1,"model":"up","choices":[{"index":0,"message":{"role":"assistant","content":"Hello world"},"finish_reason":"length"}],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13}}"#,
                    ),
                );
            }
            sse(ok(), false)
        }
        "nousage" => sse(
            vec![
                chunk("one"),
                chunk(" two"),
                chunk(" three"),
                FINISH.into(),
                "data: [DONE]\n\n".into(),
            ],
            false,
        ),
        "fail500" => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("application/json"),
            full(
                r#"{"error":{"message":"db password hunter2 leaked in a stack trace","type":"server_error","code":"boom"}}"#,
            ),
        ),
        "rate" => {
            let mut r = respond(
                StatusCode::TOO_MANY_REQUESTS,
                None,
                full(r#"{"error":{"message":"slow down","type":"rate_limit"}}"#),
            );
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, "7".parse().unwrap());
            r
        }
        "auth" => respond(
            StatusCode::UNAUTHORIZED,
            None,
            full(
                r#"{"error":{"message":"bad key sk-123","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            ),
        ),
        "stall" => sse(vec![], true),
        "stall-after" => sse(vec![chunk("partial")], true),
        "garbage" => sse(vec!["data: {not json at all\n\n".into()], false),
        "close-mid" => sse(vec![chunk("Hel")], false),
        _ => respond(StatusCode::NOT_FOUND, None, full(Bytes::new())),
    }
}

const OLLAMA_STREAM: &str = include_str!("fixtures/ollama/chat_stream.ndjson");
const OLLAMA_LENGTH: &str = include_str!("fixtures/ollama/chat_length.ndjson");
const OLLAMA_MIDSTREAM: &str = include_str!("fixtures/ollama/chat_midstream_error.ndjson");
const OLLAMA_NOT_FOUND: &str = include_str!("fixtures/ollama/chat_not_found.json");

async fn ollama(stub: Arc<Stub>, mode: String, headers: HeaderMap, body: Bytes) -> Response {
    let key = format!("ollama-{mode}");
    *stub.hits.lock().unwrap().entry(key.clone()).or_default() += 1;
    stub.last_body.lock().unwrap().insert(
        key.clone(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    );
    stub.last_headers.lock().unwrap().insert(key, headers);
    let ndjson = |s: &'static str| {
        // Deliver line by line, as Ollama does.
        let lines: Vec<Result<Bytes, Infallible>> = s
            .split_inclusive('\n')
            .map(|l| Ok(Bytes::from(l.to_string())))
            .collect();
        respond(
            StatusCode::OK,
            Some("application/x-ndjson"),
            streamed(futures::stream::iter(lines)),
        )
    };
    match mode.as_str() {
        "ok" => ndjson(OLLAMA_STREAM),
        "length" => ndjson(OLLAMA_LENGTH),
        "midstream" => ndjson(OLLAMA_MIDSTREAM),
        _ => respond(
            StatusCode::NOT_FOUND,
            Some("application/json"),
            full(OLLAMA_NOT_FOUND),
        ),
    }
}

/// Routes `/{mode}/v1/chat/completions` and `/ollama/{mode}/api/chat`.
async fn route(stub: Arc<Stub>, req: hyper::Request<hyper::body::Incoming>) -> Response {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["ollama", mode, "api", "chat"] => ollama(stub, mode.to_string(), headers, body).await,
        [mode, "v1", "chat", "completions"] => openai(stub, mode.to_string(), headers, body).await,
        _ => respond(StatusCode::NOT_FOUND, None, full(Bytes::new())),
    }
}

async fn start_stub() -> (String, Arc<Stub>) {
    let stub = Arc::new(Stub::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = stub.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let stub = shared.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let stub = stub.clone();
                    async move { Ok::<_, Infallible>(route(stub, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), stub)
}

/// What the TLS stub saw: TCP connections accepted, and the HTTP version of each request.
#[derive(Default)]
struct TlsSeen {
    connections: std::sync::atomic::AtomicUsize,
    versions: Mutex<Vec<hyper::Version>>,
}

/// [`start_stub`] over TLS, offering HTTP/2 and HTTP/1.1 by ALPN as hosted model APIs do.
/// Returns the base URL, the stub, what it saw, and the file of its certificate (for
/// `tls.ca_cert`).
async fn start_tls_stub() -> (String, Arc<Stub>, Arc<TlsSeen>, tempfile::NamedTempFile) {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let mut cert_file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut cert_file, ck.cert.pem().as_bytes()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let stub = Arc::new(Stub::default());
    let seen = Arc::new(TlsSeen::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shared, seen_by_server) = (stub.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            seen_by_server
                .connections
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (stub, seen, acceptor) = (shared.clone(), seen_by_server.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let (stub, seen) = (stub.clone(), seen.clone());
                    seen.versions.lock().unwrap().push(req.version());
                    async move { Ok::<_, Infallible>(route(stub, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (
        format!("https://127.0.0.1:{}", addr.port()),
        stub,
        seen,
        cert_file,
    )
}

#[derive(Default)]
struct MemRepo(Mutex<Vec<StoredModel>>);

#[async_trait::async_trait]
impl ModelRegistryRepository for MemRepo {
    async fn list_models(&self) -> CoreResult<Vec<StoredModel>> {
        Ok(self.0.lock().unwrap().clone())
    }
    async fn put_model(&self, m: &StoredModel) -> CoreResult<()> {
        let mut v = self.0.lock().unwrap();
        v.retain(|x| x.name != m.name);
        v.push(m.clone());
        Ok(())
    }
}

fn openai_spec(base: &str, name: &str, mode: &str) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        provider: ProviderKind::Openai,
        upstream_model: format!("upstream-{name}"),
        base_url: Some(format!("{base}/{mode}/v1")),
        context_size: 4096,
        max_retries: 1,
        timeouts: ModelTimeouts {
            connect_ms: 1000,
            first_token_ms: 400,
            request_ms: 5000,
        },
        ..ModelSpec::default()
    }
}

async fn router_with(specs: Vec<ModelSpec>, settings: RouterSettings) -> Router {
    let default = specs[0].name.clone();
    let registry = ModelRegistry::load(
        specs,
        default,
        vec!["admin".into(), "user".into()],
        Arc::new(MemRepo::default()),
    )
    .await
    .unwrap();
    let resolver: palisade_llm::router::SecretResolver = Arc::new(|r: &str| {
        r.strip_prefix("env::")
            .and_then(|n| std::env::var(n).ok())
            .ok_or_else(|| "unset".to_string())
    });
    Router::new(Arc::new(registry), None, resolver, settings)
}

fn fast() -> RouterSettings {
    RouterSettings {
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(300),
        retry_backoff: Duration::from_millis(10),
    }
}

fn request(model: &str) -> GenerationRequest {
    GenerationRequest {
        model: model.into(),
        messages: vec![
            PromptMessage {
                role: Role::System,
                content: "be brief".into(),
            },
            PromptMessage {
                role: Role::User,
                content: "hello".into(),
            },
        ],
        params: GenerationParams::default(),
        request_id: "req-123".into(),
        cache_scope: Some("tenant-a".into()),
        tenant: None,
        canary: None,
    }
}

/// Collects text and the final event (or the error that ended the stream).
async fn drain(
    mut r: RoutedStream,
) -> (String, Result<(FinishReason, u32, u32, u32), ProviderError>) {
    let mut text = String::new();
    while let Some(ev) = r.stream.next().await {
        match ev {
            Ok(GenerationEvent::Text(t)) => text.push_str(&t),
            Ok(GenerationEvent::Done {
                finish_reason,
                usage,
                truncated_turns,
            }) => {
                return (
                    text,
                    Ok((
                        finish_reason,
                        usage.prompt_tokens,
                        usage.completion_tokens,
                        truncated_turns,
                    )),
                )
            }
            Err(e) => return (text, Err(e)),
        }
    }
    (text, Err(ProviderError::Internal("no end".into())))
}

#[tokio::test]
async fn openai_stream_with_usage_request_id_and_credentials() {
    let (base, stub) = start_stub().await;
    std::env::set_var("PALISADE_TEST_UPSTREAM_KEY", "sk-test-upstream");
    let spec = ModelSpec {
        api_key: Some("env::PALISADE_TEST_UPSTREAM_KEY".into()),
        ..openai_spec(&base, "gpt", "ok")
    };
    let router = router_with(vec![spec], fast()).await;
    let mut req = request("gpt");
    req.params.seed = Some(7);
    req.params.stop = vec!["END".into()];
    req.params.max_tokens = 99;
    let r = router.generate_routed(req).await.unwrap();
    assert_eq!(r.model, "gpt");
    assert!(r.fallback_from.is_none() && !r.cached);
    let (text, end) = drain(r).await;
    assert_eq!(text, "Hello world");
    assert_eq!(end.unwrap(), (FinishReason::Stop, 11, 2, 0));
    // What went upstream: the upstream id, every parameter, the request id, the key.
    let body = stub.body("ok");
    assert_eq!(body["model"], "upstream-gpt");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["max_tokens"], 99);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["stop"][0], "END");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "hello");
    // Sampling values go out as written (0.7, not 0.699999988079071 from a widened f32).
    assert_eq!(body["temperature"], serde_json::json!(0.7));
    assert_eq!(body["top_p"], serde_json::json!(0.95));
    assert_eq!(
        stub.header("ok", "x-request-id").as_deref(),
        Some("req-123")
    );
    assert_eq!(
        stub.header("ok", "authorization").as_deref(),
        Some("Bearer sk-test-upstream")
    );
}

#[tokio::test]
async fn openai_plain_answers_are_understood() {
    use palisade_llm::Upstream;
    let (base, stub) = start_stub().await;
    let up = palisade_llm::openai::OpenAiUpstream::new(
        &format!("{base}/ok/v1"),
        None,
        Duration::from_secs(1),
    )
    .unwrap()
    .non_streaming();
    let mut s = up
        .start(&palisade_llm::upstream::UpstreamRequest {
            model: "m".into(),
            messages: request("m").messages,
            params: GenerationParams::default(),
            request_id: "r".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        s.next().await.unwrap().unwrap(),
        GenerationEvent::Text("Hello world".into())
    );
    match s.next().await.unwrap().unwrap() {
        GenerationEvent::Done {
            finish_reason,
            usage,
            ..
        } => {
            assert_eq!(finish_reason, FinishReason::Length);
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11, 2));
        }
        other => panic!("{other:?}"),
    }
    // A plain request asks for no stream options, and unset parameters are left out.
    let body = stub.body("ok");
    assert_eq!(body["stream"], false);
    let sent = body.as_object().unwrap();
    for absent in ["stream_options", "seed", "stop"] {
        assert!(!sent.contains_key(absent), "{absent} sent: {body}");
    }
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn usage_is_estimated_when_the_upstream_gives_none() {
    let (base, _stub) = start_stub().await;
    let router = router_with(vec![openai_spec(&base, "m", "nousage")], fast()).await;
    let (text, end) = drain(router.generate_routed(request("m")).await.unwrap()).await;
    assert_eq!(text, "one two three");
    let (_, prompt, completion, _) = end.unwrap();
    assert_eq!(completion, 3);
    assert!(prompt > 0);
}

#[tokio::test]
async fn a_failing_primary_falls_back_and_says_so() {
    let (base, stub) = start_stub().await;
    let primary = ModelSpec {
        fallback: vec!["backup".into()],
        ..openai_spec(&base, "primary", "fail500")
    };
    let backup = openai_spec(&base, "backup", "ok");
    let router = router_with(vec![primary, backup], fast()).await;
    let r = router.generate_routed(request("primary")).await.unwrap();
    assert_eq!(r.model, "backup");
    assert_eq!(r.fallback_from.as_deref(), Some("primary"));
    let (text, end) = drain(r).await;
    assert_eq!(text, "Hello world");
    assert!(end.is_ok());
    // One try plus `max_retries` retries before giving up on the primary.
    assert_eq!(stub.hits("fail500"), 2);

    // A primary that is down altogether (nothing listens) falls back too.
    let down = ModelSpec {
        base_url: Some("http://127.0.0.1:9/v1".into()),
        fallback: vec!["backup".into()],
        ..openai_spec(&base, "down", "ok")
    };
    let router = router_with(vec![down, openai_spec(&base, "backup", "ok")], fast()).await;
    let r = router.generate_routed(request("down")).await.unwrap();
    assert_eq!(
        (r.model.as_str(), r.fallback_from.as_deref()),
        ("backup", Some("down"))
    );
}

/// `tls.http2`: an upstream that offers HTTP/2 carries every concurrent stream of the entry
/// over one connection; without it the client speaks HTTP/1.1, a connection per open stream.
#[tokio::test]
async fn http2_is_opt_in_and_multiplexes_one_connection() {
    for http2 in [true, false] {
        let (base, stub, seen, cert) = start_tls_stub().await;
        let spec = ModelSpec {
            tls: palisade_types::models::UpstreamTls {
                ca_cert: Some(cert.path().to_string_lossy().into_owned()),
                ca_only: true,
                http2,
                ..Default::default()
            },
            ..openai_spec(&base, "m", "ok")
        };
        let router = router_with(vec![spec], fast()).await;
        // One answer first: the client learns from ALPN that the upstream speaks HTTP/2 (until
        // then, requests that start together each open a connection).
        let (text, _) = drain(router.generate_routed(request("m")).await.unwrap()).await;
        assert_eq!(text, "Hello world");
        // Eight answers open at once: none is read until all have started.
        let open =
            futures::future::join_all((0..8).map(|_| router.generate_routed(request("m")))).await;
        for r in open {
            let (text, end) = drain(r.unwrap()).await;
            assert_eq!(text, "Hello world");
            assert!(end.is_ok(), "{end:?}");
        }
        assert_eq!(stub.hits("ok"), 9);
        let versions = seen.versions.lock().unwrap().clone();
        let connections = seen.connections.load(std::sync::atomic::Ordering::SeqCst);
        if http2 {
            assert!(
                versions.iter().all(|v| *v == hyper::Version::HTTP_2),
                "{versions:?}"
            );
            assert_eq!(connections, 1);
        } else {
            assert!(
                versions.iter().all(|v| *v == hyper::Version::HTTP_11),
                "{versions:?}"
            );
            assert!(
                connections >= 8,
                "{connections} connections for 8 open answers"
            );
        }
    }
}

#[tokio::test]
async fn upstream_errors_are_typed_and_never_carry_the_upstream_body() {
    let (base, stub) = start_stub().await;
    let router = router_with(
        vec![
            openai_spec(&base, "m500", "fail500"),
            openai_spec(&base, "m429", "rate"),
            openai_spec(&base, "m401", "auth"),
        ],
        fast(),
    )
    .await;
    let e = router.generate_routed(request("m500")).await.unwrap_err();
    assert!(matches!(e, ProviderError::Unavailable(_)), "{e:?}");
    let e = router.generate_routed(request("m429")).await.unwrap_err();
    assert_eq!(
        e,
        ProviderError::Overloaded {
            retry_after_secs: 7
        }
    );
    // A long Retry-After is not retried here: the client is told to come back.
    assert_eq!(stub.hits("rate"), 1);
    let e = router.generate_routed(request("m401")).await.unwrap_err();
    assert!(matches!(e, ProviderError::Internal(_)), "{e:?}");
    // Credentials problems are not retried either.
    assert_eq!(stub.hits("auth"), 1);
    for model in ["m500", "m429", "m401"] {
        let e = router.generate_routed(request(model)).await.unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("sk-123"),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn the_circuit_opens_fails_fast_and_recovers() {
    let (base, stub) = start_stub().await;
    let spec = ModelSpec {
        max_retries: 0,
        ..openai_spec(&base, "flaky", "fail500")
    };
    let router = router_with(vec![spec], fast()).await;
    for _ in 0..3 {
        assert!(router.generate_routed(request("flaky")).await.is_err());
    }
    assert_eq!(stub.hits("fail500"), 3);
    assert!(!router.is_available("flaky"));
    // Open: fails without calling the upstream.
    let e = router.generate_routed(request("flaky")).await.unwrap_err();
    assert!(matches!(e, ProviderError::Unavailable(ref d) if d.contains("circuit open")));
    assert_eq!(stub.hits("fail500"), 3);
    // After the cooldown one probe goes through.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(router.is_available("flaky"));
    assert!(router.generate_routed(request("flaky")).await.is_err());
    assert_eq!(stub.hits("fail500"), 4);
}

#[tokio::test]
async fn a_stalled_upstream_times_out_cleanly() {
    let (base, stub) = start_stub().await;
    let spec = ModelSpec {
        max_retries: 0,
        ..openai_spec(&base, "slow", "stall")
    };
    let router = router_with(
        vec![spec, openai_spec(&base, "half", "stall-after")],
        fast(),
    )
    .await;
    // Before the first token: the first-token timeout fires.
    let t = Instant::now();
    let e = router.generate_routed(request("slow")).await.unwrap_err();
    assert!(matches!(e, ProviderError::Timeout(_)), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(stub.hits("stall"), 1);
    // After the first token: the stream ends with a timeout error event.
    let r = router.generate_routed(request("half")).await.unwrap();
    let t = Instant::now();
    let (text, end) = drain(r).await;
    assert_eq!(text, "partial");
    assert!(matches!(end, Err(ProviderError::Timeout(_))), "{end:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn garbage_and_broken_streams_are_errors() {
    let (base, _stub) = start_stub().await;
    let router = router_with(
        vec![
            openai_spec(&base, "junk", "garbage"),
            openai_spec(&base, "cut", "close-mid"),
        ],
        fast(),
    )
    .await;
    let e = router.generate_routed(request("junk")).await.unwrap_err();
    assert!(matches!(e, ProviderError::Internal(_)), "{e:?}");
    let (text, end) = drain(router.generate_routed(request("cut")).await.unwrap()).await;
    assert_eq!(text, "Hel");
    assert!(matches!(end, Err(ProviderError::Unavailable(_))), "{end:?}");
}

fn ollama_spec(base: &str, name: &str, mode: &str) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        provider: ProviderKind::Ollama,
        upstream_model: "llama3.2".into(),
        base_url: Some(format!("{base}/ollama/{mode}")),
        max_retries: 0,
        ..ModelSpec::default()
    }
}

#[tokio::test]
async fn ollama_recorded_exchanges() {
    let (base, stub) = start_stub().await;
    let router = router_with(
        vec![
            ollama_spec(&base, "llama", "ok"),
            ollama_spec(&base, "llama-short", "length"),
            ollama_spec(&base, "llama-broken", "midstream"),
            ollama_spec(&base, "llama-missing", "missing"),
        ],
        fast(),
    )
    .await;
    let mut req = request("llama");
    req.params.max_tokens = 64;
    req.params.seed = Some(3);
    let (text, end) = drain(router.generate_routed(req).await.unwrap()).await;
    assert_eq!(text, "The sky is blue.");
    assert_eq!(end.unwrap(), (FinishReason::Stop, 26, 282, 0));
    let body = stub.body("ollama-ok");
    assert_eq!(body["model"], "llama3.2");
    assert_eq!(body["stream"], true);
    assert_eq!(body["options"]["num_predict"], 64);
    assert_eq!(body["options"]["seed"], 3);
    assert_eq!(body["messages"][1]["role"], "user");
    assert_eq!(
        stub.header("ollama-ok", "x-request-id").as_deref(),
        Some("req-123")
    );

    let (text, end) = drain(
        router
            .generate_routed(request("llama-short"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text, "Once upon");
    assert_eq!(end.unwrap().0, FinishReason::Length);

    let (text, end) = drain(
        router
            .generate_routed(request("llama-broken"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text, "The");
    assert!(end.is_err());

    let e = router
        .generate_routed(request("llama-missing"))
        .await
        .unwrap_err();
    assert!(matches!(e, ProviderError::Internal(_)), "{e:?}");
    assert!(!e.to_string().contains("pulling"));
}

#[tokio::test]
async fn long_histories_are_cut_to_the_window_and_reported() {
    let (base, stub) = start_stub().await;
    let spec = ModelSpec {
        context_size: 200,
        max_tokens: 50,
        default_max_tokens: 50,
        ..openai_spec(&base, "small", "ok")
    };
    let router = router_with(vec![spec], fast()).await;
    let mut req = request("small");
    req.params.max_tokens = 50;
    let old = "word ".repeat(130);
    req.messages = vec![
        PromptMessage {
            role: Role::System,
            content: "sys".into(),
        },
        PromptMessage {
            role: Role::User,
            content: old.clone(),
        },
        PromptMessage {
            role: Role::Assistant,
            content: old.clone(),
        },
        PromptMessage {
            role: Role::User,
            content: "newest question".into(),
        },
    ];
    let (_, end) = drain(router.generate_routed(req).await.unwrap()).await;
    assert_eq!(end.unwrap().3, 2);
    let sent = stub.body("ok")["messages"].as_array().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["content"], "sys");
    assert_eq!(sent[1]["content"], "newest question");

    // The newest turn alone too long: refused before any upstream call.
    let mut req = request("small");
    req.messages[1].content = "x".repeat(4000);
    let before = stub.hits("ok");
    let e = router.generate_routed(req).await.unwrap_err();
    assert!(matches!(e, ProviderError::ContextOverflow { .. }), "{e:?}");
    assert_eq!(stub.hits("ok"), before);
}

async fn cache_semantics(cache: ResponseCache, stub_mode: &str) {
    let (base, stub) = start_stub().await;
    let router = router_with(vec![openai_spec(&base, "m", stub_mode)], fast())
        .await
        .with_cache(Arc::new(cache));
    let unique = format!("{:?}", Instant::now());
    let det = || {
        let mut r = request("m");
        r.params.temperature = 0.0;
        r.messages[1].content = format!("deterministic {unique}");
        r
    };
    let first = router.generate_routed(det()).await.unwrap();
    assert!(!first.cached);
    let (t1, _) = drain(first).await;
    let second = router.generate_routed(det()).await.unwrap();
    assert!(second.cached);
    let (t2, end) = drain(second).await;
    assert_eq!(t1, t2);
    assert_eq!(end.unwrap().2, 2);
    assert_eq!(stub.hits(stub_mode), 1);
    // Another tenant never sees it.
    let mut other = det();
    other.cache_scope = Some("tenant-b".into());
    assert!(!router.generate_routed(other).await.unwrap().cached);
    // Sampled requests are not cached; a fixed seed makes them cacheable.
    let mut sampled = det();
    sampled.params.temperature = 0.8;
    assert!(
        !router
            .generate_routed(sampled.clone())
            .await
            .unwrap()
            .cached
    );
    assert!(
        !router
            .generate_routed(sampled.clone())
            .await
            .unwrap()
            .cached
    );
    sampled.params.seed = Some(42);
    let _ = drain(router.generate_routed(sampled.clone()).await.unwrap()).await;
    assert!(router.generate_routed(sampled).await.unwrap().cached);
    let c = router.cache_counters().unwrap();
    assert_eq!(c.hits, 2);
    assert!(c.misses >= 3);
}

#[tokio::test]
async fn memory_cache_is_exact_per_tenant_and_skips_sampled_requests() {
    cache_semantics(ResponseCache::memory(100, Duration::from_secs(60)), "ok").await;
}

#[tokio::test]
async fn redis_cache_has_the_same_semantics() {
    let cache = ResponseCache::redis("redis://127.0.0.1:6379/0", Duration::from_secs(60))
        .await
        .expect("Redis on 127.0.0.1:6379 (the test machine runs one)");
    assert_eq!(cache.backend_name(), "redis");
    cache_semantics(cache, "ok2").await;
}

#[tokio::test]
async fn registry_changes_apply_without_restart() {
    let (base, stub) = start_stub().await;
    let repo = Arc::new(MemRepo::default());
    let registry = Arc::new(
        ModelRegistry::load(
            vec![openai_spec(&base, "a", "ok")],
            "a".into(),
            vec!["admin".into()],
            repo.clone(),
        )
        .await
        .unwrap(),
    );
    let resolver: palisade_llm::router::SecretResolver = Arc::new(|_| Err("none".into()));
    let router = Router::new(registry.clone(), None, resolver, fast());
    let _ = drain(router.generate_routed(request("a")).await.unwrap()).await;
    assert_eq!(stub.hits("ok"), 1);
    // Point `a` at another upstream through the stored overlay and reload.
    repo.put_model(&StoredModel {
        name: "a".into(),
        spec: Some(openai_spec(&base, "a", "ok2")),
        updated_at: 1,
        updated_by: "admin".into(),
    })
    .await
    .unwrap();
    registry.reload().await.unwrap();
    let _ = drain(router.generate_routed(request("a")).await.unwrap()).await;
    assert_eq!(stub.hits("ok2"), 1);
    assert!(matches!(
        router.generate_routed(request("nope")).await,
        Err(ProviderError::UnknownModel)
    ));
}

/// A local engine whose queue is so long that no first token comes in time.
struct BusyEngine {
    calls: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl ChatProvider for BusyEngine {
    fn models(&self) -> Vec<palisade_core::provider::ModelInfo> {
        Vec::new()
    }

    async fn generate(
        &self,
        _req: GenerationRequest,
    ) -> Result<palisade_core::provider::GenerationStream, ProviderError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::pin(futures::stream::pending()))
    }

    fn is_ready(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_busy_local_engine_times_out_without_opening_its_circuit() {
    let spec = ModelSpec {
        name: "local".into(),
        provider: ProviderKind::Local,
        max_retries: 2,
        timeouts: ModelTimeouts {
            first_token_ms: 50,
            ..ModelTimeouts::default()
        },
        ..ModelSpec::default()
    };
    let registry = ModelRegistry::load(
        vec![spec],
        "local".into(),
        vec!["admin".into(), "user".into()],
        Arc::new(MemRepo::default()),
    )
    .await
    .unwrap();
    let engine = Arc::new(BusyEngine {
        calls: std::sync::atomic::AtomicUsize::new(0),
    });
    let resolver: palisade_llm::router::SecretResolver = Arc::new(|_: &str| Err("none".into()));
    let router = Router::new(Arc::new(registry), Some(engine.clone()), resolver, fast());
    // More timeouts than the breaker's threshold (3): each is a clean timeout, none is retried
    // (a retry would only queue again), and the engine stays available to the next request.
    for _ in 0..5 {
        let e = router.generate_routed(request("local")).await.unwrap_err();
        assert!(matches!(e, ProviderError::Timeout(_)), "{e:?}");
    }
    assert_eq!(engine.calls.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert!(router.is_available("local"));
}
