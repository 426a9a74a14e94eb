//! Admin verbs through the API (`palisade user list|create --server|disable|...`,
//! `palisade key ...`, `palisade tenant ...`): the server checks permissions and records them
//! like any admin action. Tables for people, `--json` for scripts.

use reqwest::Method;
use serde_json::{json, Value};

use super::render::sanitize;
use super::{ensure_signed_in, exit, ApiFailure, Conn};
use crate::cli::{
    AuditTailArgs, ClientArgs, JsonClientArgs, KeyCommand, TenantCommand, UserCommand,
    UserCreateArgs,
};

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => sanitize(x),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Prints rows as an aligned table.
fn table(head: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(head.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        println!("{}", line(r));
    }
}

async fn connect(client: &ClientArgs) -> anyhow::Result<Conn> {
    let mut conn = Conn::new(client)?;
    ensure_signed_in(&mut conn, None).await?;
    Ok(conn)
}

/// Finds a user's id by login name (or accepts an id).
async fn user_id(conn: &mut Conn, name: &str) -> Result<String, ApiFailure> {
    let v = conn
        .get(&format!(
            "/api/admin/users?limit=100&search={}",
            urlencode(name)
        ))
        .await?;
    v["users"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["username"] == name || u["id"] == name)
        .and_then(|u| u["id"].as_str().map(String::from))
        .ok_or_else(|| ApiFailure {
            status: Some(reqwest::StatusCode::NOT_FOUND),
            code: "not_found".into(),
            message: format!("no user `{}`", sanitize(name)),
            retry_after: None,
            categories: Vec::new(),
        })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The rows of a list answer: the array itself, or the array under `field`.
fn list_rows(v: &Value, field: &str) -> Vec<Value> {
    v.as_array()
        .or_else(|| v[field].as_array())
        .cloned()
        .unwrap_or_default()
}

fn print_user(u: &Value, json_out: bool) {
    if json_out {
        println!("{u}");
    } else {
        println!(
            "{} ({}) {} {}",
            s(&u["username"]),
            s(&u["role"]),
            if u["is_active"] == true {
                "active"
            } else {
                "disabled"
            },
            s(&u["id"])
        );
    }
}

/// Runs an admin verb; returns the exit code.
pub async fn run_user(cmd: UserCommand) -> anyhow::Result<i32> {
    let out = match cmd {
        UserCommand::List(a) => {
            let mut conn = connect(&a.client).await?;
            let q = a
                .search
                .map(|x| format!("&search={}", urlencode(&x)))
                .unwrap_or_default();
            let v = conn.get(&format!("/api/admin/users?limit=100{q}")).await;
            v.map(|v| {
                if a.json {
                    println!("{}", v["users"]);
                } else {
                    table(
                        &["USERNAME", "ROLE", "STATUS", "2FA", "LAST SIGN-IN", "ID"],
                        v["users"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|u| {
                                vec![
                                    s(&u["username"]),
                                    s(&u["role"]),
                                    if u["is_active"] == true {
                                        "active".into()
                                    } else {
                                        "disabled".into()
                                    },
                                    if u["totp_enabled"] == true {
                                        "on".into()
                                    } else {
                                        "off".into()
                                    },
                                    s(&u["last_login_at"]),
                                    s(&u["id"]),
                                ]
                            })
                            .collect(),
                    );
                }
            })
        }
        UserCommand::Disable(a) => set_active(&a.client, &a.username, false, a.json).await?,
        UserCommand::Enable(a) => set_active(&a.client, &a.username, true, a.json).await?,
        UserCommand::SetRole(a) => {
            let mut conn = connect(&a.client).await?;
            async {
                let id = user_id(&mut conn, &a.username).await?;
                conn.call(
                    Method::PATCH,
                    &format!("/api/admin/users/{id}"),
                    Some(json!({"role": a.role})),
                )
                .await
                .map(|u| print_user(&u, a.json))
            }
            .await
        }
        UserCommand::ResetPassword(a) => {
            let mut conn = connect(&a.client).await?;
            async {
let id = user_id(&mut conn, &a.username).await?;
conn
                    .call(
                        Method::POST,
                        &format!("/api/admin/users/{id}/reset-password"),
                        None,
                    )
                    .await
                    .map(|v| {
                        if a.json {
                            println!("{v}");
                        } else {
                            println!(
                                "temporary password for {}: {}\n(shown once; it must be changed at the next sign-in)",
                                sanitize(&a.username),
                                s(&v["temporary_password"])
                            );
                        }
                    })
}
.await
        }
        UserCommand::Sessions(a) => {
            let mut conn = connect(&a.client).await?;
            async {
                let id = user_id(&mut conn, &a.username).await?;
                conn.get(&format!("/api/admin/users/{id}/sessions"))
                    .await
                    .map(|v| {
                        let rows = list_rows(&v, "sessions");
                        if a.json {
                            println!("{}", Value::Array(rows));
                        } else {
                            table(
                                &["STARTED", "LAST USED", "IP", "CLIENT", "ID"],
                                rows.iter()
                                    .map(|x| {
                                        vec![
                                            s(&x["created_at"]),
                                            s(&x["last_used_at"]),
                                            s(&x["ip"]),
                                            s(&x["user_agent"]).chars().take(40).collect(),
                                            s(&x["id"]),
                                        ]
                                    })
                                    .collect(),
                            );
                        }
                    })
            }
            .await
        }
        UserCommand::Revoke(a) => {
            let mut conn = connect(&a.client).await?;
            async {
                let id = user_id(&mut conn, &a.username).await?;
                conn.call(
                    Method::DELETE,
                    &format!("/api/admin/users/{id}/sessions"),
                    None,
                )
                .await
                .map(|_| println!("every session of {} ended", sanitize(&a.username)))
            }
            .await
        }
        UserCommand::Create(a) => create_remote(a).await?,
        UserCommand::Import(_) => Ok(()),
    };
    Ok(finish(out))
}

async fn set_active(
    client: &ClientArgs,
    username: &str,
    active: bool,
    json_out: bool,
) -> anyhow::Result<Result<(), ApiFailure>> {
    let mut conn = connect(client).await?;
    Ok(async {
        let id = user_id(&mut conn, username).await?;
        conn.call(
            Method::PATCH,
            &format!("/api/admin/users/{id}"),
            Some(json!({"is_active": active})),
        )
        .await
        .map(|u| print_user(&u, json_out))
    }
    .await)
}

async fn create_remote(a: UserCreateArgs) -> anyhow::Result<Result<(), ApiFailure>> {
    let client = ClientArgs {
        server: a.server.clone().unwrap_or_default(),
        ca_cert: a.ca_cert.clone(),
        data_dir: a.common.data_dir.clone(),
    };
    let mut conn = connect(&client).await?;
    let role = if a.admin { "admin".to_string() } else { a.role };
    let mut body = json!({"username": a.username, "role": role});
    if let Some(e) = a.email {
        body["email"] = json!(e);
    }
    Ok(conn
        .call(Method::POST, "/api/admin/users", Some(body))
        .await
        .map(|v| {
            if a.json {
                println!("{v}");
            } else {
                print_user(&v["user"], false);
                if let Some(p) = v["temporary_password"].as_str() {
                    println!(
                        "temporary password: {p}\n(shown once; it must be changed at the first sign-in)"
                    );
                }
            }
        }))
}

pub async fn run_key(cmd: KeyCommand) -> anyhow::Result<i32> {
    let out = match cmd {
        KeyCommand::Create(a) => {
            let mut conn = connect(&a.client).await?;
            let mut body = json!({"name": a.name});
            if let Some(d) = a.expires_in_days {
                body["expires_in_days"] = json!(d);
            }
            conn.call(Method::POST, "/api/auth/api-keys", Some(body))
                .await
                .map(|v| {
                    if a.json {
                        println!("{v}");
                    } else {
                        println!(
                            "API key {} ({}):\n{}\n(shown once; keep it in a secret store)",
                            s(&v["name"]),
                            s(&v["id"]),
                            s(&v["api_key"])
                        );
                    }
                })
        }
        KeyCommand::List(JsonClientArgs { client, json }) => {
            let mut conn = connect(&client).await?;
            conn.get("/api/auth/api-keys").await.map(|v| {
                let rows = list_rows(&v, "keys");
                if json {
                    println!("{}", Value::Array(rows));
                } else {
                    table(
                        &["NAME", "PREFIX", "CREATED", "EXPIRES", "STATUS", "ID"],
                        rows.iter()
                            .map(|k| {
                                vec![
                                    s(&k["name"]),
                                    s(&k["prefix"]),
                                    s(&k["created_at"]),
                                    s(&k["expires_at"]),
                                    if k["revoked"] == true {
                                        "revoked".into()
                                    } else {
                                        "active".into()
                                    },
                                    s(&k["id"]),
                                ]
                            })
                            .collect(),
                    );
                }
            })
        }
        KeyCommand::Revoke(a) => {
            let mut conn = connect(&a.client).await?;
            conn.call(
                Method::DELETE,
                &format!("/api/auth/api-keys/{}", urlencode(&a.id)),
                None,
            )
            .await
            .map(|_| println!("key revoked"))
        }
    };
    Ok(finish(out))
}

pub async fn run_tenant(cmd: TenantCommand) -> anyhow::Result<i32> {
    let out = match cmd {
        TenantCommand::Create(a) => {
            let mut conn = connect(&a.client).await?;
            conn.call(
                Method::POST,
                "/api/admin/tenants",
                Some(json!({"name": a.name})),
            )
            .await
            .map(|v| {
                if a.json {
                    println!("{v}");
                } else {
                    println!("tenant {} created: {}", s(&v["name"]), s(&v["id"]));
                }
            })
        }
        TenantCommand::List(JsonClientArgs { client, json }) => {
            let mut conn = connect(&client).await?;
            conn.get("/api/admin/tenants").await.map(|v| {
                let rows = list_rows(&v, "tenants");
                if json {
                    println!("{}", Value::Array(rows));
                } else {
                    table(
                        &["NAME", "STATUS", "CREATED", "ID"],
                        rows.iter()
                            .map(|t| {
                                vec![
                                    s(&t["name"]),
                                    if t["is_active"] == true {
                                        "active".into()
                                    } else {
                                        "disabled".into()
                                    },
                                    s(&t["created_at"]),
                                    s(&t["id"]),
                                ]
                            })
                            .collect(),
                    );
                }
            })
        }
    };
    Ok(finish(out))
}

/// One audit event as a line of the `audit tail` table: time, kind, who, from where, detail.
fn event_line(e: &Value) -> String {
    let who = match (&e["actor_id"], &e["user_id"]) {
        (Value::String(a), Value::String(u)) if a != u => {
            format!("{} on {}", sanitize(a), sanitize(u))
        }
        (Value::String(a), _) => sanitize(a),
        (_, Value::String(u)) => sanitize(u),
        _ => "-".into(),
    };
    let detail = match &e["detail"] {
        Value::Null => String::new(),
        d => {
            let mut t = sanitize(&d.to_string());
            if t.chars().count() > 120 {
                t = t.chars().take(117).collect::<String>() + "...";
            }
            t
        }
    };
    format!(
        "{}  {:<22} {:<36} {:<15} {}",
        s(&e["created_at"]),
        s(&e["kind"]),
        who,
        s(&e["ip"]),
        detail
    )
    .trim_end()
    .to_string()
}

/// The search part of an `audit tail` request: the filters, as a query string.
fn audit_filters(a: &AuditTailArgs) -> anyhow::Result<Vec<(&'static str, String)>> {
    let now = chrono::Utc::now().timestamp_millis();
    let instant = |flag: &str, v: &str| -> anyhow::Result<String> {
        parse_when(v, now)
            .map(palisade_core::entities::millis_to_rfc3339)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{flag} {v}: write a duration back from now (15m, 2h, 7d), YYYY-MM-DD or an RFC 3339 time"
                )
            })
    };
    let mut q: Vec<(&'static str, String)> = Vec::new();
    let kinds: Vec<&str> = a
        .kind
        .iter()
        .flat_map(|k| k.split(','))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    if !kinds.is_empty() {
        q.push(("kind", kinds.join(",")));
    }
    for (name, v) in [
        ("user", &a.user),
        ("tenant_id", &a.tenant),
        ("request_id", &a.request_id),
        ("ip", &a.ip),
    ] {
        if let Some(v) = v {
            q.push((name, v.clone()));
        }
    }
    if let Some(v) = &a.since {
        q.push(("since", instant("--since", v)?));
    }
    if let Some(v) = &a.until {
        q.push(("until", instant("--until", v)?));
    }
    Ok(q)
}

/// `15m`, `2h`, `7d`, `30s` back from `now`; or a day or an RFC 3339 instant.
fn parse_when(v: &str, now: i64) -> Option<i64> {
    let v = v.trim();
    let unit = match v.chars().last()? {
        's' => Some(1_000),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    if let Some(unit) = unit {
        if let Ok(n) = v[..v.len() - 1].parse::<i64>() {
            return n
                .checked_mul(unit)
                .filter(|ms| *ms >= 0)
                .map(|ms| now.saturating_sub(ms));
        }
    }
    palisade_core::entities::parse_instant(v)
}

fn search_path(filters: &[(&'static str, String)], extra: &[(&'static str, String)]) -> String {
    let mut url = match reqwest::Url::parse("http://q/api/admin/security-events") {
        Ok(u) => u,
        Err(_) => return "/api/admin/security-events".into(),
    };
    url.query_pairs_mut()
        .extend_pairs(filters.iter().chain(extra).map(|(k, v)| (*k, v.as_str())));
    match url.query() {
        Some(q) => format!("/api/admin/security-events?{q}"),
        None => "/api/admin/security-events".into(),
    }
}

fn print_event(e: &Value, json_out: bool) {
    if json_out {
        println!("{e}");
    } else {
        println!("{}", event_line(e));
    }
}

/// `palisade audit tail`: the latest events matching the filters, oldest first, then (with
/// `--follow`) the new ones as they are written. The server searches; pages are walked by the
/// events' `seq` (backwards for the first `-n`, forwards while following), so nothing is
/// skipped or printed twice, however many events arrive between polls.
pub async fn run_audit_tail(a: AuditTailArgs) -> anyhow::Result<i32> {
    let filters = audit_filters(&a)?;
    let mut conn = connect(&a.client).await?;
    // The newest `lines` events, newest first, a page of at most 1000 at a time.
    let mut newest: Vec<Value> = Vec::new();
    let mut before: Option<i64> = None;
    while newest.len() < a.lines as usize {
        let want = (a.lines as usize - newest.len()).min(1000);
        let mut extra = vec![("limit", want.to_string())];
        if let Some(b) = before {
            extra.push(("before", b.to_string()));
        }
        let page = match conn.get(&search_path(&filters, &extra)).await {
            Ok(v) => list_rows(&v, "events"),
            Err(f) => return Ok(finish(Err(f))),
        };
        let done = page.len() < want;
        before = page.last().and_then(|e| e["seq"].as_i64());
        newest.extend(page);
        if done || before.is_none() {
            break;
        }
    }
    if !a.json {
        println!(
            "{:<24}  {:<22} {:<36} {:<15} DETAIL",
            "TIME", "KIND", "WHO", "IP"
        );
    }
    for e in newest.iter().rev() {
        print_event(e, a.json);
    }
    if !a.follow {
        return Ok(exit::OK);
    }
    // Following: everything after the newest event seen, oldest first. Without a first event
    // the cursor starts at the newest event of the whole trail, so old events stay unprinted.
    let mut after = match newest.first().and_then(|e| e["seq"].as_i64()) {
        Some(s) => s,
        None => match conn.get(&search_path(&[], &[("limit", "1".into())])).await {
            Ok(v) => list_rows(&v, "events")
                .first()
                .and_then(|e| e["seq"].as_i64())
                .unwrap_or(0),
            Err(f) => return Ok(finish(Err(f))),
        },
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(a.interval)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
        }
        loop {
            let extra = [("after", after.to_string()), ("limit", "1000".to_string())];
            let page = match conn.get(&search_path(&filters, &extra)).await {
                Ok(v) => list_rows(&v, "events"),
                Err(f) => return Ok(finish(Err(f))),
            };
            for e in &page {
                print_event(e, a.json);
            }
            match page.last().and_then(|e| e["seq"].as_i64()) {
                Some(s) if page.len() == 1000 => after = s,
                Some(s) => {
                    after = s;
                    break;
                }
                None => break,
            }
        }
    }
}

fn finish(out: Result<(), ApiFailure>) -> i32 {
    match out {
        Ok(()) => exit::OK,
        Err(f) => {
            eprintln!("error: {f}");
            f.exit_code()
        }
    }
}
