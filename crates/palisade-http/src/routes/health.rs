//! Liveness and readiness probes, and spec 003's `/health` and `/health/detailed`.

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use palisade_core::access::ModelsManage;
use palisade_types::{HealthCheck, HealthResponse};
use serde_json::{json, Value};

use crate::auth::Perm;
use crate::AppState;

/// One dependency's answer to a readiness probe.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub response_time_ms: u64,
    /// The dependency answers but stands in for what was configured (the server keeps
    /// serving; `/readyz` says `degraded`). Public: says what, never where.
    pub degraded: Option<String>,
}

impl Check {
    /// The answer `ok` of a probe started at `since`.
    pub fn took(name: &str, ok: bool, since: Instant) -> Check {
        Check {
            name: name.to_string(),
            ok,
            response_time_ms: u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
            degraded: None,
        }
    }

    /// This answer, marked degraded for `why`.
    pub fn degraded(mut self, why: Option<String>) -> Check {
        self.degraded = why;
        self
    }
}

/// `ok`, `degraded` (every dependency answers, one is a stand-in) or `unavailable`.
fn overall(checks: &[Check]) -> (bool, &'static str) {
    if !checks.iter().all(|c| c.ok) {
        (false, "unavailable")
    } else if checks.iter().any(|c| c.degraded.is_some()) {
        (true, "degraded")
    } else {
        (true, "ok")
    }
}

/// Every dependency plus the model.
async fn all_checks(state: &AppState) -> Vec<Check> {
    let mut checks = state.readiness.checks().await;
    let at = Instant::now();
    checks.push(Check::took("model", state.chat.provider().is_ready(), at));
    checks
}

/// `GET /healthz`: the process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process is alive", body = palisade_types::HealthResponse)),
    security(())
)]
pub async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
        checks: Vec::new(),
    })
}

/// `GET /readyz`: the database (and Redis, when configured) answers and the model is loaded.
/// 200 `ok`; 200 `degraded` when a stand-in serves (the in-memory database of
/// `store.fallback = "memory"`), with the reason on that check; 503 `unavailable`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, description = "Ready: database, Redis, model and audit sink answer", body = palisade_types::HealthResponse), (status = 503, description = "Not ready; the failing checks are named", body = palisade_types::HealthResponse)),
    security(())
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let checks = all_checks(&state).await;
    let (ok, status) = overall(&checks);
    let body = HealthResponse {
        status: status.into(),
        checks: checks
            .into_iter()
            .map(|c| HealthCheck {
                name: c.name,
                ok: c.ok,
                detail: c.degraded,
            })
            .collect(),
    };
    (status_of(ok), Json(body))
}

fn status_of(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `GET /health` (spec 003): `{"status": "healthy", "timestamp": …}`; public, says nothing
/// about the dependencies.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, description = "Spec 003 health summary", body = Object)),
    security(())
)]
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "healthy", "timestamp": now_rfc3339() }))
}

/// `GET /health/detailed` (spec 003), for platform administrators: every dependency with its
/// response time, the process's memory, the version. 503 when a dependency is down.
#[utoipa::path(
    get,
    path = "/health/detailed",
    tag = "health",
    responses((status = 200, description = "Every check with its latency (administrators)", body = Object), (status = 503, description = "A check fails", body = Object))
)]
pub async fn detailed(
    State(state): State<AppState>,
    _admin: Perm<ModelsManage>,
) -> impl IntoResponse {
    let checks = all_checks(&state).await;
    let (ok, status) = overall(&checks);
    let mut components = serde_json::Map::new();
    for c in checks {
        let mut entry = json!({
            "status": match (c.ok, &c.degraded) {
                (false, _) => "unhealthy",
                (true, Some(_)) => "degraded",
                (true, None) => "healthy",
            },
            "response_time_ms": c.response_time_ms,
        });
        if let (Some(why), Some(o)) = (c.degraded, entry.as_object_mut()) {
            o.insert("detail".into(), Value::String(why));
        }
        components.insert(c.name, entry);
    }
    let (used, available) = memory_mb();
    components.insert(
        "memory".into(),
        json!({ "status": "healthy", "used_mb": used, "available_mb": available }),
    );
    let body = json!({
        "status": match status {
            "ok" => "healthy",
            "degraded" => "degraded",
            _ => "unhealthy",
        },
        "timestamp": now_rfc3339(),
        "components": components,
        "version": env!("CARGO_PKG_VERSION"),
    });
    (status_of(ok), Json(body))
}

/// This process's resident memory and the machine's available memory, in MiB (Linux `/proc`;
/// `None` elsewhere).
fn memory_mb() -> (Option<u64>, Option<u64>) {
    let kb = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    let used = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| kb(&t, "VmRSS:"))
        .map(|k| k / 1024);
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| kb(&t, "MemAvailable:"))
        .map(|k| k / 1024);
    (used, available)
}
