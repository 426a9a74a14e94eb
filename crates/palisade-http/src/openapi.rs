//! The OpenAPI 3.1 document of the REST API, generated from the handlers' `#[utoipa::path]`
//! annotations and the wire types' `ToSchema` derives (`GET /api/openapi.json`,
//! `palisade openapi`). The committed copy, `docs/openapi.json`, is checked for drift by a test.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// What `POST /api/auth/login` answers: tokens, or a challenge for the second factor.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum LoginAnswer {
    Tokens(palisade_types::TokenResponse),
    SecondFactor(palisade_types::identity::MfaChallengeResponse),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Palisade",
        description = "Palisade's REST API: authentication, chat, the OpenAI-compatible `/v1`, \
                       administration and operations. Errors are always `{\"error\": {\"code\", \
                       \"message\"}}` with the status that fits (docs/api.md).",
        license(name = "Apache-2.0")
    ),
    paths(
        serve,
        crate::routes::health::healthz,
        crate::routes::health::readyz,
        crate::routes::health::health,
        crate::routes::health::detailed,
        crate::routes::auth::jwks,
        crate::routes::auth::providers,
        crate::routes::auth::oidc_login,
        crate::routes::auth::oidc_callback,
        crate::routes::auth::register,
        crate::routes::auth::login,
        crate::routes::auth::login_second_factor,
        crate::routes::auth::refresh,
        crate::routes::auth::logout,
        crate::routes::auth::logout_all,
        crate::routes::auth::me,
        crate::routes::account::update_me,
        crate::routes::account::change_password,
        crate::routes::account::totp_setup,
        crate::routes::account::totp_enable,
        crate::routes::account::totp_disable,
        crate::routes::account::my_sessions,
        crate::routes::account::revoke_my_session,
        crate::routes::account::create_api_key,
        crate::routes::account::list_api_keys,
        crate::routes::account::revoke_api_key,
        crate::routes::account::scoped_token,
        crate::routes::account::generate,
        crate::routes::admin::list_users,
        crate::routes::admin::create_user,
        crate::routes::admin::get_user,
        crate::routes::admin::update_user,
        crate::routes::admin::delete_user,
        crate::routes::admin::reset_password,
        crate::routes::admin::user_sessions,
        crate::routes::admin::revoke_user_sessions,
        crate::routes::admin::revoke_user_session,
        crate::routes::admin::list_tenants,
        crate::routes::admin::create_tenant,
        crate::routes::admin::update_tenant,
        crate::routes::admin::list_roles,
        crate::routes::admin::create_invite,
        crate::routes::admin::security_events,
        crate::routes::usage::own,
        crate::routes::usage::admin,
        crate::routes::limits::list,
        crate::routes::limits::put,
        crate::routes::limits::reset,
        crate::routes::retention::view,
        crate::routes::retention::put_tenant,
        crate::routes::retention::put_user,
        crate::routes::jobs::list,
        crate::routes::jobs::discard,
        crate::routes::jobs::retry,
        crate::routes::models::list,
        crate::routes::models::admin_list,
        crate::routes::models::admin_put,
        crate::routes::models::admin_delete,
        crate::routes::models::admin_test,
        crate::routes::models::admin_cache,
        crate::routes::guard::get_policy,
        crate::routes::guard::put_policy,
        crate::routes::guard::reset_policy,
        crate::routes::openai::chat_completions,
        crate::routes::openai::list_models,
        crate::routes::openai::get_model,
        crate::routes::chat::send_message,
        crate::routes::ws::ticket,
        crate::routes::ws::connect,
        crate::routes::chat::list_sessions,
        crate::routes::chat::export,
        crate::routes::chat::rename_session,
        crate::routes::chat::delete_session,
        crate::routes::chat::list_messages,
        crate::routes::compat::chat,
        crate::telemetry::scrape,
        crate::ui::index,
        crate::ui::asset
    ),
    components(schemas(palisade_types::ErrorBody, palisade_types::ChatStreamEvent,
                       palisade_types::openai::ChatCompletionChunk)),
    modifiers(&Schemes, &CommonErrors, &CompatAliases, &MergeFlattened),
    security(("bearer" = [])),
    tags(
        (name = "auth", description = "Login, tokens, single sign-on"),
        (name = "account", description = "The caller's own account, sessions and API keys"),
        (name = "chat", description = "Conversations (REST, server-sent events, WebSocket)"),
        (name = "openai", description = "The OpenAI-compatible API"),
        (name = "models", description = "The model registry"),
        (name = "admin", description = "Users, tenants, roles, invitations"),
        (name = "audit", description = "The audit trail"),
        (name = "guard", description = "Guard policies"),
        (name = "limits", description = "Rate limits and quotas"),
        (name = "retention", description = "Retention and legal holds"),
        (name = "jobs", description = "Background jobs and the dead-letter list"),
        (name = "usage", description = "Token usage"),
        (name = "health", description = "Liveness and readiness"),
        (name = "ops", description = "Metrics"),
        (name = "compat", description = "Spec 000/004 compatibility routes (config `compat_routes`)"),
        (name = "ui", description = "The web UI"),
    )
)]
struct ApiDoc;

/// The credentials: access tokens and API keys as bearer tokens, spec 004's scoped LLM token,
/// the metrics scraper's token.
struct Schemes;

impl Modify for Schemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An access token (JWT) or an API key (`pal_...`)"))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "llm_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-LLM-Token",
                "A scoped token from `POST /api/auth/scoped-token`",
            ))),
        );
        c.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`metrics.token` from the configuration"))
                    .build(),
            ),
        );
    }
}

/// The error answers every operation may give, in the one error shape.
struct CommonErrors;

const ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "Malformed request (`invalid_json`, `invalid_request`, ...)",
    ),
    ("401", "Missing, invalid or expired credentials"),
    ("403", "Authenticated, but not allowed"),
    ("404", "No such resource (or not visible to the caller)"),
    ("405", "Method not allowed on this path"),
    ("409", "Conflicts with the current state"),
    ("413", "Request body too large"),
    ("415", "Unsupported media type (JSON expected)"),
    ("422", "Well-formed but invalid values"),
    ("429", "Rate limit or quota reached (`Retry-After`)"),
    (
        "503",
        "Storage, audit sink or model unavailable (`Retry-After`)",
    ),
];

/// Answers that only the routes that call a model give.
const MODEL_ERRORS: &[(&str, &str)] = &[
    ("502", "The model's provider failed"),
    ("504", "The model's provider did not answer in time"),
];

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

fn operations(item: &mut utoipa::openapi::PathItem) -> Vec<&mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            for op in operations(item) {
                let calls_model = op.tags.as_ref().is_some_and(|t| {
                    t.iter()
                        .any(|t| matches!(t.as_str(), "chat" | "openai" | "compat"))
                }) || path.ends_with("/test");
                let extra = if calls_model { MODEL_ERRORS } else { &[] };
                for (status, description) in ERRORS.iter().chain(extra) {
                    op.responses
                        .responses
                        .entry((*status).to_string())
                        .or_insert_with(|| error_response(description));
                }
                if path == "/" || path.starts_with("/ui/") {
                    op.responses
                        .responses
                        .entry("304".into())
                        .or_insert_with(|| {
                            RefOr::T(utoipa::openapi::Response::new("Not modified (ETag)"))
                        });
                }
            }
        }
    }
}

/// Spec 000/004's login and scoped-token paths: the same operations under their old names.
struct CompatAliases;

impl Modify for CompatAliases {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let aliases: BTreeMap<&str, &str> = [
            ("/login", "/api/auth/login"),
            ("/auth/login", "/api/auth/login"),
            ("/auth/scoped-token", "/api/auth/scoped-token"),
        ]
        .into_iter()
        .collect();
        for (alias, of) in aliases {
            let Some(mut item) = doc.paths.paths.get(of).cloned() else {
                continue;
            };
            for op in operations(&mut item) {
                op.operation_id = op.operation_id.as_ref().map(|id| format!("{id}_compat"));
                op.tags = Some(vec!["compat".into()]);
                op.description = Some(format!(
                    "The same as `{of}` (spec 000/004 compatibility; config `compat_routes`)."
                ));
            }
            doc.paths.paths.insert(alias.to_string(), item);
        }
    }
}

/// `#[serde(flatten)]` of a struct that refuses unknown fields comes out as
/// `allOf: [{$ref: Spec} (additionalProperties: false), {own fields}]`, which no value can match
/// (each branch is checked alone, so Spec refuses the extra fields). Such a component becomes one
/// object: the referenced object's properties and required list plus its own, with the
/// referenced object's `additionalProperties`.
struct MergeFlattened;

impl Modify for MergeFlattened {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::Schema;
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        let objects: BTreeMap<String, utoipa::openapi::schema::Object> = components
            .schemas
            .iter()
            .filter_map(|(name, s)| match s {
                RefOr::T(Schema::Object(o)) => Some((name.clone(), o.clone())),
                _ => None,
            })
            .collect();
        for schema in components.schemas.values_mut() {
            let RefOr::T(Schema::AllOf(all)) = schema else {
                continue;
            };
            let mut merged: Option<utoipa::openapi::schema::Object> = None;
            let mut own = Vec::new();
            for item in &all.items {
                match item {
                    RefOr::Ref(r) => {
                        let name = r.ref_location.rsplit('/').next().unwrap_or_default();
                        match (objects.get(name), merged.is_none()) {
                            (Some(o), true) => merged = Some(o.clone()),
                            _ => {
                                merged = None;
                                break;
                            }
                        }
                    }
                    RefOr::T(Schema::Object(o)) => own.push(o.clone()),
                    _ => {
                        merged = None;
                        break;
                    }
                }
            }
            let Some(mut base) = merged else {
                continue;
            };
            for o in own {
                base.properties.extend(o.properties);
                base.required.extend(o.required);
            }
            base.description = all.description.clone().or(base.description);
            *schema = RefOr::T(Schema::Object(base));
        }
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as pretty JSON (what `palisade openapi` prints and `docs/openapi.json` holds).
pub fn json() -> String {
    document()
        .to_pretty_json()
        .unwrap_or_else(|_| "{}".to_string())
}

/// `GET /api/openapi.json` (public: it describes the API, it holds no data).
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "ops",
    responses((status = 200, description = "This document", body = Object)),
    security(())
)]
pub async fn serve() -> Response {
    static BODY: OnceLock<String> = OnceLock::new();
    let body = BODY.get_or_init(json).clone();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeSet;

    use axum::http::Method;

    use super::*;

    /// Every `(method, path)` the router mounts, read from its source (`.route("...", ...)` in
    /// lib.rs), in OpenAPI's `{name}` form.
    fn mounted() -> BTreeSet<(String, String)> {
        let src = include_str!("lib.rs");
        let mut out = BTreeSet::new();
        let mut rest = src;
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let open = rest.find('"').unwrap();
            let close = open + 1 + rest[open + 1..].find('"').unwrap();
            let path = rest[open + 1..close].replace("{*", "{");
            // The method router runs to the `)` that closes `.route(`.
            let mut depth = 1usize;
            let mut end = close;
            for (j, c) in rest[close..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = close + j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let methods = &rest[close..end];
            for m in ["get", "post", "put", "patch", "delete"] {
                if methods.contains(&format!("{m}(")) {
                    out.insert((m.to_string(), path.clone()));
                }
            }
        }
        out
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(&json()).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in item.as_object().unwrap().keys() {
                out.insert((m.clone(), path.clone()));
            }
        }
        out
    }

    #[test]
    fn the_document_covers_every_route_and_no_other() {
        let mounted = mounted();
        assert!(mounted.len() > 70, "the route scan found {}", mounted.len());
        let documented = documented();
        let missing: Vec<_> = mounted.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&mounted).collect();
        assert!(
            missing.is_empty(),
            "routes without an OpenAPI operation: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "OpenAPI operations without a route: {extra:?}"
        );
    }

    /// An operation documented without the bearer scheme is exactly one that the
    /// authentication layer lets through without a token.
    #[test]
    fn security_requirements_match_the_public_routes() {
        let doc: serde_json::Value = serde_json::from_str(&json()).unwrap();
        let global = doc["security"].clone();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (m, op) in item.as_object().unwrap() {
                let security = op.get("security").cloned().unwrap_or(global.clone());
                let bearer = security
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|req| req.get("bearer").is_some());
                let concrete = path.replace("{path}", "app.js");
                let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
                let public = crate::auth::is_public(&method, &concrete);
                assert_eq!(
                    bearer, !public,
                    "{m} {path}: documented bearer={bearer}, public in the auth layer={public}"
                );
            }
        }
    }

    #[test]
    fn every_operation_documents_the_error_shape() {
        let doc: serde_json::Value = serde_json::from_str(&json()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (m, op) in item.as_object().unwrap() {
                for status in ["400", "401", "404", "429", "503"] {
                    // The health routes answer 503 with their own report (spec 003's format).
                    let health =
                        matches!(path.as_str(), "/readyz" | "/health" | "/health/detailed");
                    if status == "503" && health {
                        continue;
                    }
                    let r = &op["responses"][status]["content"]["application/json"]["schema"];
                    assert_eq!(
                        r["$ref"], "#/components/schemas/ErrorBody",
                        "{m} {path} {status}"
                    );
                }
            }
        }
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    /// docs/openapi.json is what the code generates. After an API change:
    /// `palisade openapi > docs/openapi.json` (or `UPDATE_OPENAPI=1 cargo test -p palisade-http`).
    #[test]
    fn the_committed_document_is_current() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let now = json() + "\n";
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(file, &now).unwrap();
        }
        let committed = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            committed == now,
            "docs/openapi.json differs from the API the code serves: run \
             `palisade openapi > docs/openapi.json` and commit it"
        );
    }
}
