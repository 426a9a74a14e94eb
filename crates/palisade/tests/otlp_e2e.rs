//! OpenTelemetry trace export end to end: a server with `[telemetry] otlp_endpoint` posts its
//! spans to a collector on 127.0.0.1 in OTLP/HTTP protobuf, decoded here with the official
//! protocol definitions (`opentelemetry-proto`). A chat request that arrives with a W3C
//! `traceparent` continues the caller's trace through the guard, the model call and the
//! queries, and the upstream model receives the trace in turn; no content, token or secret is
//! in any exported span.
#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::Server;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{json, Value};

const AUTH: &str = "Bearer collector-credential-5d1e7a";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const MARKER: &str = "Periwinkle-Observatory-Marker-8842";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace: String,
    id: String,
    parent: String,
    /// 2 = server, 3 = client (OTLP's `SpanKind`).
    kind: i32,
    attrs: HashMap<String, String>,
    service: String,
}

#[derive(Default)]
struct Collector {
    spans: Mutex<Vec<Span>>,
    refused: Mutex<Vec<String>>,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

async fn traces(State(c): State<Arc<Collector>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if header("authorization") != AUTH {
        c.refused.lock().unwrap().push("authorization".into());
        return StatusCode::UNAUTHORIZED;
    }
    if header("content-type") != "application/x-protobuf" {
        c.refused.lock().unwrap().push(header("content-type"));
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let Ok(req) = ExportTraceServiceRequest::decode(body.as_ref()) else {
        c.refused.lock().unwrap().push("undecodable".into());
        return StatusCode::BAD_REQUEST;
    };
    let mut got = c.spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map(|a| text(&a.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(Span {
                    name: s.name.clone(),
                    trace: hex::encode(&s.trace_id),
                    id: hex::encode(&s.span_id),
                    parent: hex::encode(&s.parent_span_id),
                    kind: s.kind,
                    attrs: s
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(&a.value)))
                        .collect(),
                    service: service.clone(),
                });
            }
        }
    }
    StatusCode::OK
}

/// Waits up to 30 s for a span of `trace` named `name`.
async fn span_named(c: &Collector, trace: &str, name: &str) -> Span {
    for _ in 0..300 {
        if let Some(s) = c
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.trace == trace && s.name == name)
        {
            return s.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen: Vec<(String, String)> = c
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| (s.trace.clone(), s.name.clone()))
        .collect();
    panic!("no span {name} in trace {trace}; collected: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_continues_its_callers_trace_through_every_stage() {
    let c = Arc::new(Collector::default());
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(traces))
        .with_state(c.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (upstream, up) = common::stub::start().await;
    let cfg = common::stub::config(
        &upstream,
        &format!(
            r#"
[telemetry]
otlp_endpoint = "{collector}"
export_interval_ms = 200
service_name = "palisade-traces-test"

[telemetry.otlp_headers]
authorization = "env::TEST_OTLP_AUTHORIZATION"
"#
        ),
    );
    let s = Server::start(&[
        ("PALISADE_CONFIG", cfg.path().to_str().unwrap()),
        ("TEST_OTLP_AUTHORIZATION", AUTH),
    ]);
    assert!(
        s.stdout
            .iter()
            .any(|l| l.contains("traces:")
                && l.contains(&format!("OTLP/HTTP to {collector}/v1/traces"))),
        "{:?}",
        s.stdout
    );
    let admin = s.admin_token().await;

    // A chat message that arrives inside the caller's trace.
    let r = s
        .client
        .post(s.url("/api/chat/message"))
        .bearer_auth(&admin)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .header("x-request-id", "otlp-e2e-1")
        .json(
            &json!({"message": format!("Say {MARKER} back."), "model": "cloud", "max_tokens": 16}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer.to_string().contains(MARKER),
        "the stub echoes: {answer}"
    );

    // The request's span is a server span, a child of the caller's.
    let request = span_named(&c, TRACE, "POST /api/chat/message").await;
    assert_eq!(request.parent, CALLER_SPAN);
    assert_eq!(request.kind, 2, "server");
    assert_eq!(request.attrs["http.route"], "/api/chat/message");
    assert_eq!(request.attrs["http.request.method"], "POST");
    assert_eq!(request.attrs["http.response.status_code"], "200");
    assert_eq!(request.attrs["request_id"], "otlp-e2e-1");
    assert_eq!(request.service, "palisade-traces-test");

    // Inside it: the guard, the model call (with its outcome and counts), the upstream call and
    // the queries, all in the caller's trace.
    let guard = span_named(&c, TRACE, "guard.input").await;
    assert_eq!(guard.parent, request.id);
    let llm = span_named(&c, TRACE, "llm.generate").await;
    assert_eq!(llm.parent, request.id);
    assert_eq!(llm.attrs["gen_ai.request.model"], "cloud");
    assert_eq!(llm.attrs["gen_ai.response.model"], "cloud");
    assert_eq!(llm.attrs["outcome"], "completed");
    assert!(
        llm.attrs["gen_ai.usage.output_tokens"]
            .parse::<u64>()
            .unwrap()
            > 0,
        "{llm:?}"
    );
    let call = span_named(&c, TRACE, "upstream.request").await;
    assert_eq!(call.parent, llm.id);
    assert_eq!(call.kind, 3, "client");
    assert_eq!(call.attrs["http.response.status_code"], "200");
    let query = span_named(&c, TRACE, "db.query").await;
    assert!(!query.attrs["db.operation.name"].is_empty());

    // The upstream was told the trace: the caller's trace id, the upstream call as parent.
    let sent = up.traceparents.lock().unwrap().clone();
    assert!(
        sent.contains(&format!("00-{TRACE}-{}-01", call.id)),
        "{sent:?}, upstream span {}",
        call.id
    );

    // A request without a traceparent starts a trace of its own.
    let r = s.get(&admin, "/api/auth/me").await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut own = None;
    for _ in 0..300 {
        own = c
            .spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == "GET /api/auth/me")
            .cloned();
        if own.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let own = own.expect("a span for GET /api/auth/me");
    assert_ne!(own.trace, TRACE);
    assert!(own.parent.is_empty() || own.parent == "0000000000000000");

    // Nothing of the content, the credentials or the collector's token left in a span.
    let spans = c.spans.lock().unwrap().clone();
    assert!(spans.len() >= 6, "{spans:?}");
    for sp in &spans {
        for (k, v) in &sp.attrs {
            assert!(!v.contains(MARKER), "content in {}.{k}", sp.name);
            assert!(!v.contains(&admin), "a token in {}.{k}", sp.name);
            assert!(!v.contains("collector-credential"), "{}.{k}", sp.name);
            assert!(!v.contains(common::ADMIN_PASSWORD), "{}.{k}", sp.name);
        }
    }
    assert!(c.refused.lock().unwrap().is_empty(), "{:?}", c.refused);
}

/// Bad `[telemetry]` settings stop the server at start with the setting's name.
#[test]
fn bad_trace_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tempfile::NamedTempFile::new().unwrap();
    write!(
        cfg,
        r#"
[telemetry]
otlp_endpoint = "http://127.0.0.1:4318"

[telemetry.otlp_headers]
authorization = "Bearer inline-secret-in-config"
"#
    )
    .unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("PALISADE_CONFIG", cfg.path())
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("telemetry.otlp_headers"), "{err}");
    assert!(
        !err.contains("inline-secret-in-config"),
        "the secret echoed: {err}"
    );
}
