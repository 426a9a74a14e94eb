//! Scale-out (issue 10): two replicas of the real binary on one PostgreSQL database and one
//! Redis, with Debian's nginx balancing them (the shipped site configuration, two upstreams).
//! Through nginx and on each replica directly: sign-in, an SSE answer, WebSockets (a ticket from
//! one replica opens a socket on the other), a logout on A that stops the token on B within
//! 1 s, a rate limit counted across both, admin changes (a model, a limit, a role) made on A
//! that apply on B, and replica A killed mid-stream: nothing stored is lost and the next request
//! succeeds on B.
//!
//! It needs PostgreSQL (`TEST_POSTGRES_URL`; `scripts/test` runs this file in its PostgreSQL
//! pass) and the machine's Redis on 127.0.0.1:6379.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::nginx::{site, start_nginx};
use common::oidc::free_port;
use common::{sse_events, Server, ADMIN_PASSWORD};
use futures::{SinkExt, StreamExt};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The Redis both replicas share (a database of its own on the machine's server).
const REDIS: &str = "redis://127.0.0.1:6379/3";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

async fn get(c: &Client, url: String, token: &str) -> reqwest::Response {
    c.get(url).bearer_auth(token).send().await.unwrap()
}

async fn post(c: &Client, url: String, token: &str, body: Value) -> reqwest::Response {
    c.post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn login(c: &Client, url: String, username: &str, password: &str) -> String {
    let r = c
        .post(url)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "login of {username}");
    r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Polls `probe` until it is true, for at most `within`; the time it took.
async fn within<F, Fut>(within: Duration, what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if probe().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A chat over the WebSocket at `host` with `ticket`; the stored answer's `message` event.
async fn ws_chat(s: &Server, host: &str, origin: &str, ticket: &str, session: &str) -> Value {
    let mut req = format!("wss://{host}/api/chat/ws?ticket={ticket}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("origin", origin.parse().unwrap());
    let tls = common::tls_to(s, host).await;
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .unwrap_or_else(|e| panic!("WebSocket to {host}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let frame = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("no WebSocket message within 60 s")
            .expect("socket closed")
            .expect("socket error");
        let Message::Text(t) = frame else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        match v["type"].as_str().unwrap_or("") {
            "ready" => ws
                .send(Message::Text(
                    json!({"type": "message", "content": "Name one colour.",
                           "session_id": session, "max_tokens": 12})
                    .to_string()
                    .into(),
                ))
                .await
                .unwrap(),
            "message" => return v,
            "error" => panic!("WebSocket chat failed: {v}"),
            _ => {}
        }
    }
    panic!("the WebSocket chat did not finish");
}

async fn ticket(c: &Client, base: &str, token: &str) -> String {
    let r = post(c, format!("{base}/api/chat/ws/ticket"), token, json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["ticket"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn message_ids(c: &Client, base: &str, token: &str, session: &str) -> Vec<String> {
    let r = get(
        c,
        format!("{base}/api/chat/sessions/{session}/messages?limit=200"),
        token,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let list = v["messages"].as_array().or(v.as_array()).cloned();
    list.unwrap_or_else(|| panic!("no messages in {v}"))
        .iter()
        .map(|m| m["id"].to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_nginx_share_one_state() {
    if !common::on_postgres() {
        eprintln!(
            "skipped: two replicas need a shared PostgreSQL (TEST_POSTGRES_URL; scripts/test \
             runs this file in its PostgreSQL pass)"
        );
        return;
    }
    let env = [
        ("PALISADE_REDIS__URL", REDIS),
        ("PALISADE_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1\"]"),
    ];
    // Replica B gets A's data dir: the same signing keys, audit key, master key, certificate
    // and database, as a deployment shares them.
    let mut a = Server::start(&env);
    let dir_b = tempfile::tempdir().unwrap();
    copy_dir(a.data_dir(), dir_b.path());
    let b = Server::start_in(dir_b, &env);
    let (host_a, host_b) = (
        a.base.trim_start_matches("https://").to_string(),
        b.base.trim_start_matches("https://").to_string(),
    );
    let (port, http_port) = (free_port(), free_port());
    let nginx = start_nginx(
        &site(
            &[&host_a, &host_b],
            port,
            http_port,
            &a.data_dir().join("tls"),
        ),
        port,
    );
    let front = format!("https://127.0.0.1:{port}");
    // One certificate for both replicas and nginx: one client trusts all three.
    let c = a.client.clone();

    // Both replicas are ready, Redis included.
    for s in [&a, &b] {
        let r = c.get(s.url("/readyz")).send().await.unwrap();
        let body = r.text().await.unwrap();
        assert!(body.contains("redis"), "{body}");
    }

    // Sign in through nginx; the token works on each replica directly.
    let admin = login(
        &c,
        format!("{front}/api/auth/login"),
        "admin",
        ADMIN_PASSWORD,
    )
    .await;
    for s in [&a, &b] {
        assert_eq!(
            get(&c, s.url("/api/auth/me"), &admin).await.status(),
            StatusCode::OK
        );
    }
    let (dana_id, dana, dana_pw) = a.new_user(&admin, "dana", "user", None).await;

    // An answer streamed over SSE through nginx, stored once, read back from both replicas.
    let r = post(
        &c,
        format!("{front}/api/chat/message"),
        &dana,
        json!({"message": "Say hello.", "temperature": 0, "max_tokens": 24, "stream": true}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", nginx.error_log());
    let events = sse_events(r).await;
    assert_eq!(events[0]["type"], "start", "{events:?}");
    assert!(events.iter().any(|e| e["type"] == "token"), "{events:?}");
    assert_eq!(events.last().unwrap()["type"], "end", "{events:?}");
    let session = events[0]["session_id"].as_str().unwrap().to_string();
    let on_a = message_ids(&c, &a.base, &dana, &session).await;
    assert_eq!(on_a.len(), 2, "{on_a:?}");
    assert_eq!(on_a, message_ids(&c, &b.base, &dana, &session).await);

    // A WebSocket ticket from A opens a socket on B, once; and a socket through nginx.
    let t = ticket(&c, &a.base, &dana).await;
    let m = ws_chat(&b, &host_b, &b.base, &t, &session).await;
    assert_eq!(
        m["message"]["role"].as_str().unwrap_or("assistant"),
        "assistant"
    );
    let mut again = format!("wss://{host_a}/api/chat/ws?ticket={t}")
        .into_client_request()
        .unwrap();
    again
        .headers_mut()
        .insert("origin", a.base.parse().unwrap());
    let tls = common::tls_to(&a, &host_a).await;
    match tokio_tungstenite::client_async(again, tls).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED)
        }
        Err(e) => panic!("a used ticket: unexpected error {e}"),
        Ok(_) => panic!("a used ticket opened a socket on the other replica"),
    }
    let t = ticket(&c, &front, &dana).await;
    ws_chat(&a, &format!("127.0.0.1:{port}"), &front, &t, &session).await;
    assert_eq!(message_ids(&c, &b.base, &dana, &session).await.len(), 6);

    // An admin change on A (a new model) is seen on B within a second.
    let r = c
        .put(a.url("/api/admin/models/extra"))
        .bearer_auth(&admin)
        .json(
            &json!({"provider": "openai", "base_url": "http://127.0.0.1:9/v1",
                      "upstream_model": "x", "description": "added on A"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let took = within(Duration::from_secs(1), "the model on B", || async {
        let v: Value = get(&c, b.url("/api/models"), &admin)
            .await
            .json()
            .await
            .unwrap();
        v.to_string().contains("\"extra\"")
    })
    .await;
    eprintln!("model added on A listed on B after {took:?}");

    // A limit set on A applies on B, and both replicas count one budget: 4 chats a minute.
    let r = c
        .put(a.url(&format!("/api/admin/limits/user/{dana_id}")))
        .bearer_auth(&admin)
        .json(&json!({"chat": "4/min"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in [&b, &a, &b, &a] {
        // An empty message is refused (422) after it is counted.
        let r = post(
            &c,
            s.url("/api/chat/message"),
            &dana,
            json!({"message": ""}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let r = post(
        &c,
        b.url("/api/chat/message"),
        &dana,
        json!({"message": ""}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "the fifth, on B");
    let r = post(
        &c,
        a.url("/api/chat/message"),
        &dana,
        json!({"message": ""}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "the sixth, on A");
    // Lifted on B, it is lifted on A.
    let r = c
        .delete(b.url(&format!("/api/admin/limits/user/{dana_id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    within(Duration::from_secs(1), "the lifted limit on A", || async {
        let r = post(
            &c,
            a.url("/api/chat/message"),
            &dana,
            json!({"message": ""}),
        )
        .await;
        r.status() == StatusCode::UNPROCESSABLE_ENTITY
    })
    .await;

    // Logout on A: the token fails on B within a second; dana's other session lives on.
    let second = login(&c, b.url("/api/auth/login"), "dana", &dana_pw).await;
    assert_eq!(
        get(&c, b.url("/api/auth/me"), &second).await.status(),
        StatusCode::OK
    );
    let r = post(&c, a.url("/api/auth/logout"), &second, json!({})).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let took = within(Duration::from_secs(1), "the logout on B", || async {
        get(&c, b.url("/api/auth/me"), &second).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    eprintln!("logout on A refused on B after {took:?}");
    assert_eq!(
        get(&c, b.url("/api/auth/me"), &dana).await.status(),
        StatusCode::OK
    );

    // A role change on A applies on B: her sessions end there, and she signs in as an admin.
    assert_eq!(
        get(&c, b.url("/api/admin/users"), &dana).await.status(),
        StatusCode::FORBIDDEN
    );
    let r = c
        .patch(a.url(&format!("/api/admin/users/{dana_id}")))
        .bearer_auth(&admin)
        .json(&json!({"role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    within(Duration::from_secs(1), "the role change on B", || async {
        get(&c, b.url("/api/auth/me"), &dana).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    let dana = login(&c, b.url("/api/auth/login"), "dana", &dana_pw).await;
    assert_eq!(
        get(&c, b.url("/api/admin/users"), &dana).await.status(),
        StatusCode::OK
    );

    // Replica A dies in the middle of an answer: what was stored stays, and through nginx the
    // next requests are served by B.
    let before = message_ids(&c, &b.base, &dana, &session).await;
    let r = post(
        &c,
        a.url("/api/chat/message"),
        &dana,
        json!({"message": "Write a long story about a lighthouse.", "session_id": session,
               "max_tokens": 400, "stream": true}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while seen.matches("\"token\"").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .expect("tokens within 60 s")
            .expect("the stream ended early")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    a.kill();
    // The cut stream ends with an error, not a hang.
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "the cut stream hung");
    let after = message_ids(&c, &front, &dana, &session).await;
    for id in &before {
        assert!(after.contains(id), "message {id} was lost");
    }
    assert!(
        after.len() > before.len(),
        "the question of the cut turn is stored"
    );
    let r = post(
        &c,
        format!("{front}/api/chat/message"),
        &dana,
        json!({"message": "Are you still there?", "session_id": session, "max_tokens": 8}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", nginx.error_log());
    let after_retry = message_ids(&c, &front, &dana, &session).await;
    assert_eq!(after_retry.len(), after.len() + 2);
    drop(nginx);
}

/// A replica taken out of service (SIGTERM, as Kubernetes and systemd stop it) stops accepting,
/// lets the answer in flight finish and be stored, and exits cleanly. Runs on either backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_answer_in_flight_then_exits() {
    let mut s = Server::start(&[]);
    let admin = s.admin_token().await;
    let r = s
        .post(
            &admin,
            "/api/chat/message",
            json!({"message": "Count from one to thirty, in words.", "max_tokens": 64,
                   "temperature": 0, "stream": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while !text.contains("\"token\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .expect("a token within 60 s")
            .expect("the stream ended early")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let term = std::process::Command::new("kill")
        .args(["-TERM", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // The answer goes on to its end.
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("the stream stalled after SIGTERM")
    {
        text.push_str(&String::from_utf8_lossy(
            &chunk.expect("the stream was cut"),
        ));
    }
    assert!(text.contains("\"type\":\"end\""), "{text}");
    let session = text
        .split("\"session_id\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_string();
    // Then the process ends by itself, successfully, and new connections are refused.
    let status = s
        .wait_exit(Duration::from_secs(20))
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert!(s.client.get(s.url("/health")).send().await.is_err());
    // The answer was stored: a restart on the same data finds both messages.
    let s = s.restart(&[]);
    let admin = s.admin_token().await;
    let r = s
        .get(&admin, &format!("/api/chat/sessions/{session}/messages"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    let list = v["messages"].as_array().or(v.as_array()).cloned().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert!(!list[1]["content"].as_str().unwrap_or("").is_empty(), "{v}");
}

/// `palisade db copy`: a team that started on the SQLite file moves to PostgreSQL. Everything
/// comes across (users and their passwords, a conversation readable after decryption, the
/// audit trail intact under the same key), a second copy into the same database is refused,
/// and the server then runs on PostgreSQL with the same data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_copy_moves_an_sqlite_deployment_to_postgres() {
    if !common::on_postgres() {
        eprintln!("skipped: needs TEST_POSTGRES_URL (the PostgreSQL pass of scripts/test)");
        return;
    }
    // Started small: the SQLite file (an empty store.url is the embedded database).
    let sqlite = [("PALISADE_STORE__URL", "")];
    let mut s = Server::start(&sqlite);
    let admin = s.admin_token().await;
    let (_, erin, erin_pw) = s.new_user(&admin, "erin", "user", None).await;
    let r = s
        .post(
            &erin,
            "/api/chat/message",
            json!({"message": "Remember the word pelican.", "max_tokens": 12}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    let session = answer["session_id"].as_str().unwrap().to_string();
    let path = format!("/api/chat/sessions/{session}/messages");
    let before: Value = s.get(&erin, &path).await.json().await.unwrap();
    s.kill();
    let dir = s.data_dir().to_path_buf();
    let run = |args: &[&str], store: &str| {
        let out = common::command_in(&dir)
            .args(args)
            .arg("--data-dir")
            .arg(&dir)
            .env("PALISADE_STORE__URL", store)
            .env("PALISADE_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(&["audit", "verify", "--json"], "");
    assert_eq!(code, 0, "{out}");
    let events_before = serde_json::from_str::<Value>(out.trim()).unwrap()["events"].clone();

    // The copy, into the data dir's own (new, empty) PostgreSQL database.
    let pg = common::postgres_url(&dir).unwrap();
    let (code, out) = run(&["db", "copy", "--to", &pg], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("copied"), "{out}");
    assert!(
        out.contains("***@"),
        "the URL is shown without its credentials: {out}"
    );
    let (code, out) = run(&["db", "copy", "--to", &pg], "");
    assert_ne!(code, 0, "a second copy into the same database: {out}");
    assert!(out.contains("already holds"), "{out}");

    // The trail is intact on PostgreSQL, with the same events.
    let (code, out) = run(&["audit", "verify", "--json"], &pg);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["intact"], true, "{report}");
    assert_eq!(report["events"], events_before, "{report}");

    // The server on PostgreSQL: erin signs in with her password and reads her conversation.
    let s = s.restart(&[("PALISADE_STORE__URL", pg.as_str())]);
    let t = s.login("erin", &erin_pw).await;
    let erin = t["access_token"].as_str().unwrap();
    let after: Value = s.get(erin, &path).await.json().await.unwrap();
    assert_eq!(after["messages"], before["messages"]);
    assert!(after.to_string().contains("pelican"), "{after}");
}
