//! The audit trail end to end: events are chained per tenant as the server writes them, the
//! product cannot change them, and `palisade audit verify` finds an edited, deleted, inserted or
//! reordered event in a copy of the database and names it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Server, ADMIN_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `palisade audit verify --json` on `data_dir`: (exit code, report).
fn verify(data_dir: &Path) -> (i32, Value) {
    let out = Command::new(common::bin())
        .args(["audit", "verify", "--json", "--data-dir"])
        .arg(data_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let report: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), report)
}

/// Runs SQL statements on an SQLite file with Python's `sqlite3` module, an outside tool, as
/// someone holding the file would; `?1` is bound to `param`. The first error's message, if any.
fn sqlite(db: &Path, statements: &[&str], param: &str) -> Result<(), String> {
    const SCRIPT: &str = r#"
import json, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
try:
    for s in json.loads(sys.argv[3]):
        con.execute(s, (sys.argv[2],) if "?1" in s else ())
except Exception as e:
    print(e)
    sys.exit(1)
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(db)
        .arg(param)
        .arg(serde_json::to_string(statements).unwrap())
        .output()
        .expect("python3");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr))
    }
}

/// A consistent copy of the live database `db` at `copy` (the server keeps running).
fn snapshot(db: &Path, copy: &Path) {
    sqlite(db, &["VACUUM INTO ?1"], copy.to_str().unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_a_verifiable_chain() {
    let s = Server::start(&[]);
    let admin = s.admin_token().await;
    let me: Value = s.get(&admin, "/api/auth/me").await.json().await.unwrap();
    let home = me["tenant_id"].as_str().unwrap().to_string();
    // Events in two chains: failed and good logins and a new user at home, a tenant and its
    // first user elsewhere.
    for _ in 0..3 {
        let r = s
            .post_public(
                "/api/auth/login",
                json!({"username": "admin", "password": "not-the-password-at-all"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    s.login("admin", ADMIN_PASSWORD).await;
    let r = s
        .post(&admin, "/api/admin/tenants", json!({"name": "acme"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let acme = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.new_user(&admin, "carol", "user", Some(&acme)).await;

    // The live trail verifies.
    let (code, report) = verify(s.data_dir());
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["intact"], true);
    assert!(report["events"].as_u64().unwrap() >= 8, "{report}");
    assert!(report["chains"].as_u64().unwrap() >= 2, "{report}");
    // Auditors read it through the API, with each event's place in its chain.
    let r = s.get(&admin, "/api/admin/security-events?limit=50").await;
    assert_eq!(r.status(), StatusCode::OK);
    let events: Value = r.json().await.unwrap();
    let first = &events.as_array().unwrap()[0];
    assert!(first["chain_seq"].as_i64().unwrap() >= 1, "{first}");
    assert_eq!(first["hash"].as_str().unwrap().len(), 64, "{first}");

    // Nothing can change it through the database's front door either.
    let db = s.data_dir().join("palisade.db");
    for sql in [
        "UPDATE security_events SET ip = '10.0.0.1'",
        "DELETE FROM security_events",
    ] {
        let e = sqlite(&db, &[sql], "").unwrap_err();
        assert!(e.contains("append-only"), "{e}");
    }

    // Copies tampered with by someone who has the file and drops the triggers: each is found at
    // the event touched.
    let scratch = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], i64, &str); 4] = [
        (
            "edited",
            &["UPDATE security_events SET user_id = 'mallory' WHERE chain = ?1 AND chain_seq = 3"],
            3,
            "does not match",
        ),
        (
            "deleted",
            &["DELETE FROM security_events WHERE chain = ?1 AND chain_seq = 2"],
            2,
            "missing",
        ),
        (
            "inserted",
            &[
                "UPDATE security_events SET chain_seq = -chain_seq - 1 \
                 WHERE chain = ?1 AND chain_seq >= 3",
                "UPDATE security_events SET chain_seq = -chain_seq WHERE chain = ?1 AND chain_seq < 0",
                "INSERT INTO security_events (kind, tenant_id, user_id, ip, detail, created_at, \
                 chain, chain_seq, prev_hash, hash) SELECT 'login_success', tenant_id, 'ghost', \
                 ip, '{}', created_at, chain, 3, hash, \
                 '1111111111111111111111111111111111111111111111111111111111111111' \
                 FROM security_events WHERE chain = ?1 AND chain_seq = 2",
            ],
            3,
            "does not match",
        ),
        (
            "reordered",
            &[
                "UPDATE security_events SET chain_seq = -1 WHERE chain = ?1 AND chain_seq = 2",
                "UPDATE security_events SET chain_seq = 2 WHERE chain = ?1 AND chain_seq = 3",
                "UPDATE security_events SET chain_seq = 3 WHERE chain = ?1 AND chain_seq = -1",
            ],
            2,
            "does not match",
        ),
    ];
    for (name, statements, at, why) in cases {
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(s.data_dir().join("audit.key"), dir.join("audit.key")).unwrap();
        let copy = dir.join("palisade.db");
        snapshot(&db, &copy);
        let mut all = vec![
            "DROP TRIGGER security_events_append_only_update",
            "DROP TRIGGER security_events_append_only_delete",
        ];
        all.extend_from_slice(statements);
        sqlite(&copy, &all, &home).unwrap();
        let (code, report) = verify(&dir);
        assert_eq!(code, 1, "{name}: {report}");
        assert_eq!(report["intact"], false, "{name}");
        assert_eq!(report["broken"]["chain"], home.as_str(), "{name}: {report}");
        assert_eq!(report["broken"]["event"], at, "{name}: {report}");
        assert!(
            report["broken"]["reason"].as_str().unwrap().contains(why),
            "{name}: {report}"
        );
    }

    // Another key proves nothing: a forger's key finds the whole trail broken.
    let dir = scratch.path().join("other-key");
    std::fs::create_dir_all(&dir).unwrap();
    snapshot(&db, &dir.join("palisade.db"));
    std::fs::write(dir.join("audit.key"), "ab".repeat(32)).unwrap();
    let (code, report) = verify(&dir);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["broken"]["event"], 1, "{report}");
}

/// Runs `palisade audit ARGS… --data-dir DIR`: (exit code, stdout).
fn audit(data_dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(common::bin())
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", data_dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Signed checkpoints catch what a chain alone cannot (its newest events removed), and an
/// altered checkpoint is refused; the server writes them on its own; export gives every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_and_export() {
    let s = Server::start(&[("PALISADE_AUDIT__CHECKPOINT_EVERY_SECS", "1")]);
    let admin = s.admin_token().await;
    let me: Value = s.get(&admin, "/api/auth/me").await.json().await.unwrap();
    let home = me["tenant_id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        s.login("admin", ADMIN_PASSWORD).await;
    }
    let scratch = tempfile::tempdir().unwrap();
    let cp = scratch.path().join("cp.json");
    let (code, out) = audit(s.data_dir(), &["checkpoint", "--out", cp.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let signed: Value = serde_json::from_str(&std::fs::read_to_string(&cp).unwrap()).unwrap();
    let chain = signed["chains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["chain"] == home.as_str())
        .unwrap()
        .clone();
    let top = chain["events"].as_i64().unwrap();
    assert!(top >= 3, "{signed}");
    let key = signed["public_key"].as_str().unwrap().to_string();
    let (code, out) = audit(
        s.data_dir(),
        &[
            "verify",
            "--checkpoint",
            cp.to_str().unwrap(),
            "--public-key",
            &key,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("holds"), "{out}");

    // The newest event removed from a copy: the chain alone still verifies, the checkpoint
    // does not.
    let dir = scratch.path().join("truncated");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["audit.key", "audit-signing.pk8"] {
        std::fs::copy(s.data_dir().join(f), dir.join(f)).unwrap();
    }
    snapshot(&s.data_dir().join("palisade.db"), &dir.join("palisade.db"));
    let cut = format!("DELETE FROM security_events WHERE chain = ?1 AND chain_seq >= {top}");
    sqlite(
        &dir.join("palisade.db"),
        &["DROP TRIGGER security_events_append_only_delete", &cut],
        &home,
    )
    .unwrap();
    assert_eq!(verify(&dir).0, 0, "a shorter chain is still a chain");
    let (code, out) = audit(&dir, &["verify", "--checkpoint", cp.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("shorter than the checkpoint"), "{out}");

    // An altered checkpoint, or one signed by another key, is refused.
    let mut forged = signed.clone();
    forged["chains"][0]["events"] = json!(1);
    let bad = scratch.path().join("forged.json");
    std::fs::write(&bad, forged.to_string()).unwrap();
    let (code, out) = audit(
        s.data_dir(),
        &["verify", "--checkpoint", bad.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature does not match"), "{out}");
    let (code, out) = audit(
        s.data_dir(),
        &[
            "verify",
            "--checkpoint",
            cp.to_str().unwrap(),
            "--public-key",
            &"00".repeat(32),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("another key"), "{out}");

    // The server writes checkpoints by itself (every second here), and they hold.
    let written = s.data_dir().join("audit-checkpoints");
    let mut found = None;
    for _ in 0..50 {
        if let Some(f) = std::fs::read_dir(&written)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
        {
            found = Some(f.path());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let found = found.expect("no checkpoint written by the server");
    let (code, out) = audit(
        s.data_dir(),
        &["verify", "--checkpoint", found.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}");

    // Export: every chained event since today, one JSON object per line.
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let (code, out) = audit(s.data_dir(), &["export", "--since", &today]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (_, report) = verify(s.data_dir());
    assert_eq!(lines.len() as u64, report["events"].as_u64().unwrap());
    assert!(lines.iter().any(|l| l["kind"] == "login_success"));
    assert!(lines
        .iter()
        .all(|l| l["hash"].as_str().unwrap().len() == 64));
    let (code, out) = audit(s.data_dir(), &["export", "--since", "yesterday"]);
    assert_eq!(code, 1, "{out}");
}
