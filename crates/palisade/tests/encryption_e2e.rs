//! Encryption at rest through the real server: a unique marker sent in a chat is nowhere in
//! the database files while its owner reads it back; `palisade keys rotate-master` keeps
//! everything readable (also once the previous key is gone); `palisade keys shred` makes the
//! tenant's conversations unreadable for good, and is audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Runs `palisade keys ARGS… --data-dir DIR`: (exit code, stdout + stderr).
fn keys(data_dir: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    common::cli(data_dir, &all)
}

/// True when any of the database's files (file, WAL, shared memory) holds `needle`.
fn on_disk(dir: &Path, needle: &str) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        name.starts_with("palisade.db")
            && std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
    })
}

async fn messages(s: &Server, token: &str, session: &str) -> reqwest::Response {
    s.get(token, &format!("/api/chat/sessions/{session}/messages"))
        .await
}

async fn text_of(s: &Server, token: &str, session: &str) -> String {
    let r = messages(s, token, session).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

/// The default tenant's policy records the text of model requests in the audit trail.
const RECORD_HOME: [(&str, &str); 1] = [(
    "PALISADE_AUDIT__RECORD_CONTENT",
    r#"["00000000-0000-7000-8000-000000000001"]"#,
)];

/// The trail's events, newest first, as an `audit:read` holder reads them.
async fn events(s: &Server, token: &str) -> Vec<Value> {
    let v: Value = s
        .get(token, "/api/admin/security-events?limit=500")
        .await
        .json()
        .await
        .unwrap();
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_encrypted_at_rest_rotated_and_shredded() {
    let s = Server::start(&RECORD_HOME);
    let admin = s.admin_token().await;
    let me: Value = s.get(&admin, "/api/auth/me").await.json().await.unwrap();
    let home = me["tenant_id"].as_str().unwrap().to_string();
    let marker = format!(
        "pelican{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let r = s
        .post(
            &admin,
            "/api/chat/message",
            json!({"message": format!("The code word is {marker}. Repeat it."), "max_tokens": 24, "temperature": 0}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    let session = answer["session_id"].as_str().unwrap().to_string();

    // The tenant's policy records content: the auditor reads the turns and the answer in the
    // trail (sealed in the database like the messages, checked below).
    let trail = events(&s, &admin).await;
    let request = trail
        .iter()
        .find(|e| e["kind"] == "llm_request" && e["detail"]["route"] == "chat")
        .unwrap();
    let prompt = request["detail"]["content"]["prompt"].as_str().unwrap();
    assert!(prompt.contains(&marker), "{request}");
    let turns: Value = serde_json::from_str(prompt).unwrap();
    assert_eq!(turns[0]["role"], "user");
    let result = trail
        .iter()
        .find(|e| e["kind"] == "llm_result" && e["detail"]["route"] == "chat")
        .unwrap();
    assert_eq!(
        result["detail"]["content"]["answer"], answer["content"],
        "{result}"
    );
    // Another tenant, whose policy does not: digests only, never the text.
    let acme: Value = s
        .post(&admin, "/api/admin/tenants", json!({"name": "acme"}))
        .await
        .json()
        .await
        .unwrap();
    let (_, bob, _) = s.new_user(&admin, "bob", "user", acme["id"].as_str()).await;
    let other = format!("heron{}", &marker[7..]);
    let r = s
        .post(
            &bob,
            "/api/chat/message",
            json!({"message": format!("Say {other}."), "max_tokens": 4}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let trail = events(&s, &admin).await;
    let bobs = trail
        .iter()
        .find(|e| e["kind"] == "llm_request" && e["tenant_id"] == acme["id"])
        .unwrap();
    assert!(bobs["detail"]["prompt_sha256"].is_string(), "{bobs}");
    assert!(bobs["detail"].get("content").is_none(), "{bobs}");
    assert!(!Value::Array(trail).to_string().contains(&other));

    // The owner reads the message, the title and the preview back; the files hold none of it.
    assert!(text_of(&s, &admin, &session).await.contains(&marker));
    let list = s
        .get(&admin, "/api/chat/sessions")
        .await
        .text()
        .await
        .unwrap();
    assert!(list.contains(&marker), "title and preview: {list}");
    let dir = s.data_dir().to_path_buf();
    // (On PostgreSQL, palisade-store's encryption test looks for plaintext in pg_dump.)
    if !common::on_postgres() {
        assert!(!on_disk(&dir, &marker), "plaintext in the database files");
    }
    let stored = common::sql(
        &dir,
        "SELECT detail FROM security_events WHERE kind IN ('llm_request', 'llm_result') \
         AND detail LIKE '%\"content\"%'",
    );
    assert_eq!(stored.lines().count(), 2, "{stored}");
    assert!(!stored.contains(&marker), "{stored}");
    assert!(stored.contains("\"content\":\"enc1:"), "{stored}");
    let key_file = dir.join("master.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Master-key rotation while the server runs: it keeps reading, and so does a restarted one.
    let before = std::fs::read_to_string(&key_file).unwrap();
    let (code, out) = keys(&dir, &["rotate-master"]);
    assert_eq!(code, 0, "{out}");
    // (the default tenant's key and acme's)
    assert!(out.contains("2 data keys re-wrapped"), "{out}");
    assert_ne!(std::fs::read_to_string(&key_file).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(dir.join("master.key.previous")).unwrap(),
        before
    );
    assert!(text_of(&s, &admin, &session).await.contains(&marker));
    // A second rotation waits for the first to settle.
    let (code, out) = keys(&dir, &["rotate-master"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("master.key.previous"), "{out}");
    let s = s.restart(&RECORD_HOME);
    let admin = s.admin_token().await;
    assert!(text_of(&s, &admin, &session).await.contains(&marker));
    // Without the previous key at all: the data keys were re-wrapped, nothing is lost.
    std::fs::remove_file(dir.join("master.key.previous")).unwrap();
    let s = s.restart(&RECORD_HOME);
    let admin = s.admin_token().await;
    assert!(text_of(&s, &admin, &session).await.contains(&marker));
    let (code, out) = keys(&dir, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("UNKNOWN"), "{out}");
    assert!(out.contains("0 data keys shredded"), "{out}");

    // Crypto-shredding the tenant: confirmed, audited, and final.
    let (code, out) = keys(&dir, &["shred", "--tenant", &home]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("--yes"), "{out}");
    let (code, out) = keys(&dir, &["shred", "--tenant", &home, "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 data keys destroyed"), "{out}");
    let s = s.restart(&RECORD_HOME);
    let admin = s.admin_token().await;
    let r = messages(&s, &admin, &session).await;
    assert_eq!(
        common::error_code(r, StatusCode::GONE).await,
        "data_destroyed"
    );
    let list: Value = s
        .get(&admin, "/api/chat/sessions")
        .await
        .json()
        .await
        .unwrap();
    assert!(!list.to_string().contains(&marker), "{list}");
    assert!(list.to_string().contains("destroyed"), "{list}");
    // The tenant goes on with a new key.
    let r = s
        .post(
            &admin,
            "/api/chat/message",
            json!({"message": "A fresh start.", "max_tokens": 4}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let fresh: Value = r.json().await.unwrap();
    assert!(text_of(&s, &admin, fresh["session_id"].as_str().unwrap())
        .await
        .contains("A fresh start."));
    let trail = events(&s, &admin).await;
    let kinds: Vec<&str> = trail.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"tenant_key_shredded"), "{kinds:?}");
    assert!(kinds.contains(&"master_key_rotated"), "{kinds:?}");
    // The recorded text went with the keys; the trail itself still verifies.
    let request = trail
        .iter()
        .rfind(|e| e["kind"] == "llm_request" && e["detail"]["route"] == "chat")
        .unwrap();
    assert_eq!(
        request["detail"]["content"],
        json!({"unavailable": "data_destroyed"}),
        "{request}"
    );
    assert!(!Value::Array(trail).to_string().contains(&marker));
    let (code, out) = common::cli(&dir, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
}
