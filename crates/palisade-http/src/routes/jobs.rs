//! `/api/admin/jobs`: the background jobs and their dead letters (needs `jobs:manage`; tenant
//! administrators see their tenant's jobs).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use palisade_core::access::JobsManage;
use palisade_core::entities::millis_to_rfc3339;
use palisade_core::jobs::Job;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Perm;
use crate::error::{ApiError, ApiPath, ApiQuery};
use crate::AppState;

fn job_json(j: &Job) -> Value {
    json!({
        "id": j.id,
        "kind": j.kind,
        "tenant_id": j.tenant_id.map(|t| t.to_string()),
        "state": j.state.as_str(),
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "run_at": millis_to_rfc3339(j.run_at),
        "last_error": j.last_error,
        "payload": j.payload,
        "created_at": millis_to_rfc3339(j.created_at),
        "updated_at": millis_to_rfc3339(j.updated_at),
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// `queued`, `running`, `done` or `dead` (the dead-letter list).
    state: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/admin/jobs[?state=dead&limit=N]`.
#[utoipa::path(
    get,
    path = "/api/admin/jobs",
    tag = "jobs",
    params(JobsQuery),
    responses((status = 200, description = "Background jobs (the dead-letter list with `state=dead`)", body = Object))
)]
pub async fn list(
    State(s): State<AppState>,
    Perm(g): Perm<JobsManage>,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> Result<Json<Value>, ApiError> {
    let jobs = s
        .jobs
        .list(&g, q.state.as_deref(), q.limit.unwrap_or(100))
        .await?;
    Ok(Json(
        json!({ "jobs": jobs.iter().map(job_json).collect::<Vec<_>>() }),
    ))
}

fn job_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "job not found"))
}

/// `POST /api/admin/jobs/{id}/retry`: a dead letter queued again with fresh attempts.
#[utoipa::path(
    post,
    path = "/api/admin/jobs/{id}/retry",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "Queued again", body = Object))
)]
pub async fn retry(
    State(s): State<AppState>,
    Perm(g): Perm<JobsManage>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let job = s.jobs.retry(&g, job_id(&id)?).await?;
    Ok(Json(job_json(&job)))
}

/// `DELETE /api/admin/jobs/{id}`: a dead letter discarded.
#[utoipa::path(
    delete,
    path = "/api/admin/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 204, description = "Discarded"))
)]
pub async fn discard(
    State(s): State<AppState>,
    Perm(g): Perm<JobsManage>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    s.jobs.discard(&g, job_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
