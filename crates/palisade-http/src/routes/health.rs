//! Liveness and readiness probes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use palisade_types::{HealthCheck, HealthResponse};

use crate::AppState;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
        checks: Vec::new(),
    })
}

/// `GET /readyz`: the database answers and the model is loaded.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut checks = state.readiness.checks().await;
    checks.push(("model".into(), state.chat.provider().is_ready()));
    let ok = checks.iter().all(|(_, ok)| *ok);
    let body = HealthResponse {
        status: if ok { "ok" } else { "unavailable" }.into(),
        checks: checks
            .into_iter()
            .map(|(name, ok)| HealthCheck { name, ok })
            .collect(),
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
