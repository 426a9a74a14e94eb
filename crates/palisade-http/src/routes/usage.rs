//! Usage: `GET /api/usage` (the caller's own, with what is left of each limit) and
//! `GET /api/admin/usage` (`usage:read`: the caller's tenant; platform administrators any or
//! all). Both answer JSON, or CSV with `format=csv`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use palisade_core::ids::{TenantId, UserId};
use palisade_core::quota::{LimitState, UsageQuery, UsageRow};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Auth;
use crate::error::{ApiError, ApiQuery};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// First day, `YYYY-MM-DD` (UTC); default 29 days before `to`.
    from: Option<String>,
    /// Last day, `YYYY-MM-DD`; default today.
    to: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// Admin only: one tenant (platform administrators; default all of theirs).
    tenant: Option<String>,
    /// Admin only: one user.
    user: Option<String>,
}

fn counters(r: &UsageRow) -> Value {
    json!({
        "requests": r.requests,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.total_tokens(),
        "compute_seconds": r.compute_ms as f64 / 1000.0,
        "guard_blocks": r.guard_blocks,
        "rate_limited": r.rate_limited,
    })
}

/// Sums rows grouped by `key`, in key order.
fn group(rows: &[UsageRow], key: impl Fn(&UsageRow) -> String) -> BTreeMap<String, UsageRow> {
    let mut out: BTreeMap<String, UsageRow> = BTreeMap::new();
    for r in rows {
        out.entry(key(r)).or_default().add(r);
    }
    out
}

fn grouped(rows: &[UsageRow], name: &str, key: impl Fn(&UsageRow) -> String) -> Vec<Value> {
    group(rows, key)
        .into_iter()
        .map(|(k, r)| {
            let mut v = counters(&r);
            v[name] = Value::String(k);
            v
        })
        .collect()
}

/// Every day of the window, with zeros on days without use (for charts).
fn days(q: &UsageQuery, rows: &[UsageRow]) -> Vec<Value> {
    let by_day = group(rows, |r| r.day.clone());
    let parse = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
    let (Some(mut d), Some(end)) = (parse(&q.from_day), parse(&q.to_day)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while d <= end {
        let day = d.format("%Y-%m-%d").to_string();
        let mut v = counters(by_day.get(&day).unwrap_or(&UsageRow::default()));
        v["day"] = Value::String(day);
        out.push(v);
        match d.succ_opt() {
            Some(next) => d = next,
            None => break,
        }
    }
    out
}

fn total(rows: &[UsageRow]) -> Value {
    let mut t = UsageRow::default();
    for r in rows {
        t.add(r);
    }
    counters(&t)
}

/// A CSV cell: quoted when needed; a leading `=`, `+`, `-` or `@` is neutralised so a
/// spreadsheet does not run it as a formula.
fn cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv(rows: &[UsageRow], filename: &str) -> Response {
    let mut out = String::from(
        "day,tenant_id,user_id,key_id,model,requests,prompt_tokens,completion_tokens,\
         total_tokens,compute_seconds,guard_blocks,rate_limited\r\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{:.3},{},{}\r\n",
            cell(&r.day),
            cell(&r.tenant_id),
            cell(&r.user_id),
            cell(&r.key_id),
            cell(&r.model),
            r.requests,
            r.prompt_tokens,
            r.completion_tokens,
            r.total_tokens(),
            r.compute_ms as f64 / 1000.0,
            r.guard_blocks,
            r.rate_limited
        ));
    }
    let mut resp = (StatusCode::OK, out).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

fn wants_csv(p: &UsageParams) -> Result<bool, ApiError> {
    match p.format.as_deref() {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_format",
            "format must be json or csv",
        )),
    }
}

fn limits_json(limits: &[LimitState]) -> Value {
    Value::Array(
        limits
            .iter()
            .map(|l| {
                json!({"name": l.name, "limit": l.limit, "remaining": l.remaining,
                    "reset_seconds": l.reset_secs})
            })
            .collect(),
    )
}

/// `GET /api/usage`.
#[utoipa::path(
    get,
    path = "/api/usage",
    tag = "usage",
    params(UsageParams),
    responses((status = 200, description = "The caller's usage per day (JSON, or CSV with `format=csv`)", content((Object = "application/json"), (String = "text/csv"))))
)]
pub async fn own(
    State(s): State<AppState>,
    Auth(who): Auth,
    ApiQuery(p): ApiQuery<UsageParams>,
) -> Result<Response, ApiError> {
    if p.tenant.is_some() || p.user.is_some() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_parameter",
            "tenant and user are for /api/admin/usage",
        ));
    }
    let as_csv = wants_csv(&p)?;
    let (q, rows, limits) = s
        .chat
        .own_usage(&who, p.from.as_deref(), p.to.as_deref())
        .await?;
    if as_csv {
        return Ok(csv(
            &rows,
            &format!("usage-{}-{}.csv", q.from_day, q.to_day),
        ));
    }
    let today = q.to_day.clone();
    let today_rows: Vec<UsageRow> = rows.iter().filter(|r| r.day == today).cloned().collect();
    Ok(Json(json!({
        "from": q.from_day,
        "to": q.to_day,
        "total": total(&rows),
        "today": total(&today_rows),
        "days": days(&q, &rows),
        "models": grouped(&rows, "model", |r| r.model.clone()),
        "keys": grouped(&rows, "key_id", |r| r.key_id.clone()),
        "limits": limits_json(&limits),
    }))
    .into_response())
}

/// `GET /api/admin/usage`.
#[utoipa::path(
    get,
    path = "/api/admin/usage",
    tag = "usage",
    params(UsageParams),
    responses((status = 200, description = "Usage per day, user and model (JSON, or CSV with `format=csv`)", content((Object = "application/json"), (String = "text/csv"))))
)]
pub async fn admin(
    State(s): State<AppState>,
    Auth(who): Auth,
    ApiQuery(p): ApiQuery<UsageParams>,
) -> Result<Response, ApiError> {
    let as_csv = wants_csv(&p)?;
    let tenant: Option<TenantId> = p.tenant.as_deref().map(str::parse).transpose()?;
    let user: Option<UserId> = p.user.as_deref().map(str::parse).transpose()?;
    let (q, rows) = s
        .chat
        .usage_report(&who, tenant, user, p.from.as_deref(), p.to.as_deref())
        .await?;
    if as_csv {
        return Ok(csv(
            &rows,
            &format!("usage-{}-{}.csv", q.from_day, q.to_day),
        ));
    }
    Ok(Json(json!({
        "from": q.from_day,
        "to": q.to_day,
        "tenant_id": q.tenant.map(|t| t.to_string()),
        "total": total(&rows),
        "days": days(&q, &rows),
        "models": grouped(&rows, "model", |r| r.model.clone()),
        "users": grouped(&rows, "user_id", |r| r.user_id.clone()),
        "tenants": grouped(&rows, "tenant_id", |r| r.tenant_id.clone()),
        "rows": rows,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_safe() {
        assert_eq!(cell("gpt-4o"), "gpt-4o");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("-1"), "'-1");
    }
}
