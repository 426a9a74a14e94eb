//! `GET /api/models` (what the caller may use) and the registry's admin API:
//! `GET /api/admin/models`, `PUT|DELETE /api/admin/models/{name}`, `GET /api/admin/cache`.
//! Changes apply at once on this replica and are persisted.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use palisade_core::access::ModelsManage;
use palisade_core::provider::CacheCounters;
use palisade_types::models::{AdminModelList, AdminModelView, ModelList, ModelSpec, ModelView};

use crate::auth::{Auth, Perm};
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::AppState;

/// `GET /api/models`: the models the caller may use, the default first.
#[utoipa::path(
    get,
    path = "/api/models",
    tag = "models",
    responses((status = 200, description = "The models the caller may use", body = palisade_types::models::ModelList))
)]
pub async fn list(State(s): State<AppState>, Auth(who): Auth) -> Json<ModelList> {
    let models = s
        .chat
        .models_for(&who)
        .into_iter()
        .map(|(spec, default, available)| ModelView {
            name: spec.name.clone(),
            provider: spec.provider,
            trust_zone: spec.trust_zone,
            context_size: spec.context_size,
            default_max_tokens: spec.default_max_tokens,
            max_tokens: spec.max_tokens,
            description: spec.description.clone(),
            default,
            available,
        })
        .collect();
    Json(ModelList { models })
}

fn admin_view(s: &AppState, spec: &ModelSpec, source: &str) -> AdminModelView {
    AdminModelView {
        spec: spec.clone(),
        source: source.into(),
        available: spec.enabled && s.chat.provider().is_available(&spec.name),
    }
}

/// `GET /api/admin/models`: every entry, disabled ones included, with its source.
#[utoipa::path(
    get,
    path = "/api/admin/models",
    tag = "models",
    responses((status = 200, description = "Every model with its full spec", body = palisade_types::models::AdminModelList))
)]
pub async fn admin_list(
    State(s): State<AppState>,
    Perm(_g): Perm<ModelsManage>,
) -> Json<AdminModelList> {
    let snap = s.chat.registry().snapshot();
    let models = snap
        .all()
        .map(|(spec, src)| admin_view(&s, spec, src.as_str()))
        .collect();
    Json(AdminModelList { models })
}

/// `PUT /api/admin/models/{name}`: adds or replaces an entry.
#[utoipa::path(
    put,
    path = "/api/admin/models/{name}",
    tag = "models",
    params(("name" = String, Path, description = "Model name")), request_body = palisade_types::models::ModelSpec,
    responses((status = 200, description = "The stored model", body = palisade_types::models::AdminModelView))
)]
pub async fn admin_put(
    State(s): State<AppState>,
    Perm(g): Perm<ModelsManage>,
    ApiPath(name): ApiPath<String>,
    ApiJson(spec): ApiJson<ModelSpec>,
) -> Result<Json<AdminModelView>, ApiError> {
    if !spec.name.is_empty() && spec.name != name {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_model",
            "the body's `name` differs from the path; leave it out",
        ));
    }
    let before = s
        .chat
        .registry()
        .snapshot()
        .get(&name)
        .and_then(|m| serde_json::to_value(m.as_ref()).ok());
    let saved = s.chat.registry().put(&g, &name, spec).await?;
    crate::announce(&s, palisade_core::shared::ConfigTopic::Models).await;
    let after = serde_json::to_value(saved.as_ref()).unwrap_or_default();
    let (old, new) =
        crate::audit::changed_fields(before.as_ref().unwrap_or(&serde_json::Value::Null), &after);
    crate::audit::record_change(
        &s,
        g.principal(),
        palisade_core::identity::SecurityEventKind::ModelChanged,
        None,
        serde_json::json!({
            "model": name,
            "action": if before.is_some() { "updated" } else { "created" },
            "before": old,
            "after": new,
        }),
    )
    .await;
    Ok(Json(admin_view(&s, &saved, "admin")))
}

/// `DELETE /api/admin/models/{name}`.
#[utoipa::path(
    delete,
    path = "/api/admin/models/{name}",
    tag = "models",
    params(("name" = String, Path, description = "Model name")),
    responses((status = 204, description = "Removed"))
)]
pub async fn admin_delete(
    State(s): State<AppState>,
    Perm(g): Perm<ModelsManage>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    s.chat.registry().delete(&g, &name).await?;
    crate::announce(&s, palisade_core::shared::ConfigTopic::Models).await;
    crate::audit::record_change(
        &s,
        g.principal(),
        palisade_core::identity::SecurityEventKind::ModelChanged,
        None,
        serde_json::json!({ "model": name, "action": "deleted" }),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/admin/models/{name}/test`: one tiny request to the model. Always 200 for a
/// known model: `{ok, model, answer, latency_ms}`, or `{ok: false, error: {code, message}}`
/// with the same clean error a user would get (never the upstream's body).
#[utoipa::path(
    post,
    path = "/api/admin/models/{name}/test",
    tag = "models",
    params(("name" = String, Path, description = "Model name")),
    responses((status = 200, description = "A short test prompt and its outcome", body = Object))
)]
pub async fn admin_test(
    State(s): State<AppState>,
    Perm(g): Perm<ModelsManage>,
    ApiPath(name): ApiPath<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    match s.chat.probe_model(&g, &name, request_id).await {
        Ok(p) => Ok(Json(serde_json::json!({
            "ok": p.model == name,
            "model": p.model,
            "answer": p.answer,
            "latency_ms": p.latency_ms,
            "fallback_used": p.model != name,
        }))),
        Err(palisade_core::CoreError::NotFound(_)) => Err(ApiError::not_found()),
        Err(e) => {
            let e = ApiError::from(e);
            Ok(Json(serde_json::json!({
                "ok": false,
                "error": {"code": e.code, "message": e.message},
            })))
        }
    }
}

/// `GET /api/admin/cache`: response-cache hits and misses (404 when the cache is off).
#[utoipa::path(
    get,
    path = "/api/admin/cache",
    tag = "models",
    responses((status = 200, description = "Response cache hits and misses", body = palisade_core::provider::CacheCounters))
)]
pub async fn admin_cache(
    State(s): State<AppState>,
    Perm(_g): Perm<ModelsManage>,
) -> Result<Json<CacheCounters>, ApiError> {
    s.chat.provider().cache_counters().map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "cache_disabled",
            "the response cache is off (`cache.enabled`)",
        )
    })
}
