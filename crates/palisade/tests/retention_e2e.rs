//! Retention, legal holds, chat export and background jobs through the real server: old
//! conversations are purged except where a hold stops it; users export their conversations as
//! JSON and Markdown; a job that keeps failing ends in the dead-letter list after its retries
//! and, once its cause is fixed, an administrator's retry completes it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Inserts a conversation last touched `days_ago` days ago straight into the database (an
/// outside tool, as if it had been written long ago).
fn old_conversation(dir: &Path, tenant: &str, user: &str, title: &str, days_ago: i64) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = now - days_ago * 86_400_000;
    common::sql(
        dir,
        &format!(
            "INSERT INTO chat_sessions (id, tenant_id, user_id, title, created_at, updated_at) \
             VALUES ('{id}', '{tenant}', '{user}', '{title}', {at}, {at})"
        ),
    );
    id
}

async fn titles(s: &Server, token: &str) -> Vec<String> {
    let v: Value = s
        .get(token, "/api/chat/sessions")
        .await
        .json()
        .await
        .unwrap();
    v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["title"].as_str().unwrap().to_string())
        .collect()
}

async fn kinds(s: &Server, admin: &str) -> Vec<String> {
    let events: Value = s
        .get(admin, "/api/admin/security-events?limit=300")
        .await
        .json()
        .await
        .unwrap();
    events
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_old_conversations_except_held_ones() {
    let s = Server::start(&[("PALISADE_RETENTION__CHECK_EVERY_SECS", "1")]);
    let admin = s.admin_token().await;
    let me: Value = s.get(&admin, "/api/auth/me").await.json().await.unwrap();
    let home = me["tenant_id"].as_str().unwrap().to_string();
    let (ann_id, ann, _) = s.new_user(&admin, "ann", "user", None).await;
    let (bob_id, bob, _) = s.new_user(&admin, "bob", "user", None).await;
    let db = s.data_dir();
    old_conversation(db, &home, &ann_id, "ann old", 40);
    old_conversation(db, &home, &ann_id, "ann recent", 5);
    old_conversation(db, &home, &bob_id, "bob old", 40);

    // Nothing goes while retention is forever (the default).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(titles(&s, &ann).await.len(), 2);

    // Bob is under legal hold; users cannot set holds.
    let r = s
        .put(
            &ann,
            &format!("/api/admin/retention/users/{ann_id}"),
            json!({"hold": false}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .put(
            &admin,
            &format!("/api/admin/retention/users/{bob_id}"),
            json!({"hold": true, "reason": "case 2026-17"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s
        .put(
            &admin,
            &format!("/api/admin/retention/tenants/{home}"),
            json!({"days": 99999}),
        )
        .await;
    assert_eq!(
        common::error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_days"
    );
    let r = s
        .put(
            &admin,
            &format!("/api/admin/retention/tenants/{home}"),
            json!({"days": 30}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Ann's 40-day-old conversation goes; her 5-day-old one and held Bob's stay.
    let mut left = Vec::new();
    for _ in 0..50 {
        left = titles(&s, &ann).await;
        if left.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(left, vec!["ann recent".to_string()]);
    assert_eq!(titles(&s, &bob).await, vec!["bob old".to_string()]);
    let view: Value = s
        .get(&admin, "/api/admin/retention")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["tenants"][0]["days"], 30);
    assert_eq!(view["user_holds"][0]["reason"], "case 2026-17");

    // A tenant-wide hold stops the purge even when Bob's own hold is lifted.
    let r = s
        .put(
            &admin,
            &format!("/api/admin/retention/tenants/{home}"),
            json!({"days": 30, "legal_hold": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .put(
            &admin,
            &format!("/api/admin/retention/users/{bob_id}"),
            json!({"hold": false}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(titles(&s, &bob).await, vec!["bob old".to_string()]);
    // Lifted: it goes.
    let r = s
        .put(
            &admin,
            &format!("/api/admin/retention/tenants/{home}"),
            json!({"days": 30, "legal_hold": false}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut gone = false;
    for _ in 0..50 {
        if titles(&s, &bob).await.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "bob's old conversation was not purged");
    let k = kinds(&s, &admin).await;
    for kind in ["retention_changed", "legal_hold_changed", "retention_purge"] {
        assert!(k.iter().any(|x| x == kind), "{kind} missing from {k:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_export_their_conversations() {
    let s = Server::start(&[]);
    let admin = s.admin_token().await;
    let (_, cleo, _) = s.new_user(&admin, "cleo", "user", None).await;
    let r = s
        .post(
            &cleo,
            "/api/chat/message",
            json!({"message": "What is the capital of Italy?", "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();

    let r = s.get(&cleo, "/api/chat/export").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r
        .headers()
        .get("content-disposition")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("attachment"));
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["user"], "cleo");
    let conv = &doc["conversations"][0];
    assert_eq!(conv["id"], answer["session_id"]);
    let msgs = conv["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["content"], "What is the capital of Italy?");
    assert_eq!(msgs[1]["content"], answer["content"]);

    let r = s.get(&cleo, "/api/chat/export?format=markdown").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/markdown"));
    let md = r.text().await.unwrap();
    assert!(md.contains("# Conversations of cleo"), "{md}");
    assert!(md.contains("**You**"), "{md}");
    assert!(md.contains("What is the capital of Italy?"), "{md}");
    let r = s.get(&cleo, "/api/chat/export?format=pdf").await;
    assert_eq!(
        common::error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "invalid_format"
    );
    // Another user's export holds none of it.
    let r = s.get(&admin, "/api/chat/export").await;
    let other: Value = r.json().await.unwrap();
    assert!(!other.to_string().contains("capital of Italy"));
    assert!(kinds(&s, &admin)
        .await
        .iter()
        .any(|k| k == "conversations_exported"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_dead_lettered_and_an_admin_retry_completes_it() {
    let (upstream, _up) = common::stub::start().await;
    let s = Server::start(&[
        ("PALISADE_CHAT__TITLE_MODEL", "titler"),
        ("PALISADE_JOBS__MAX_ATTEMPTS", "2"),
        ("PALISADE_JOBS__BACKOFF_SECS", "1"),
        ("PALISADE_JOBS__POLL_MS", "100"),
    ]);
    let admin = s.admin_token().await;
    let (_, user, _) = s.new_user(&admin, "dora", "user", None).await;
    // The title model points at a port nobody listens on.
    let broken = json!({"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "upstream_model": "t", "roles": ["admin"]});
    let r = s.put(&admin, "/api/admin/models/titler", broken).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .post(
            &admin,
            "/api/chat/message",
            json!({"message": "Plan a trip to Lisbon", "max_tokens": 4}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Two attempts, then the dead-letter list, with the reason.
    let dead = s.dead_letter(&admin, "conversation_title").await;
    assert_eq!(dead["kind"], "conversation_title", "{dead}");
    assert_eq!(dead["attempts"], 2, "{dead}");
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap()
            .contains("title model failed"),
        "{dead}"
    );
    assert!(titles(&s, &admin).await[0].starts_with("Plan a trip"));
    // Users may not see or touch jobs; only dead jobs can be retried.
    let r = s.get(&user, "/api/admin/jobs").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let id = dead["id"].as_i64().unwrap();

    // The cause is fixed; the retry completes it.
    let fixed = json!({"provider": "openai", "base_url": format!("{upstream}/ok/v1"), "upstream_model": "t", "roles": ["admin"]});
    let r = s.put(&admin, "/api/admin/models/titler", fixed).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = s
        .post(&admin, &format!("/api/admin/jobs/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "queued");
    assert_eq!(job["attempts"], 0);
    let mut title = String::new();
    for _ in 0..100 {
        title = titles(&s, &admin).await[0].clone();
        if title.contains("Title this conversation: Plan a trip") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        title.contains("Title this conversation: Plan a trip"),
        "title: {title}"
    );
    let v: Value = s
        .get(&admin, "/api/admin/jobs?state=done")
        .await
        .json()
        .await
        .unwrap();
    assert!(v["jobs"].as_array().unwrap().iter().any(|j| j["id"] == id));
    let r = s
        .post(&admin, &format!("/api/admin/jobs/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let k = kinds(&s, &admin).await;
    for kind in ["job_dead_lettered", "job_retried"] {
        assert!(k.iter().any(|x| x == kind), "{kind} missing from {k:?}");
    }
    // The title requests went through the audit trail like any model request.
    assert!(k.iter().any(|x| x == "llm_result"));
}
