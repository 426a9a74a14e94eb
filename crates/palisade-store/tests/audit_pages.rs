//! Migration 0018 (SQLite): the audit trail's table without AUTOINCREMENT and without its
//! `created_at` index, so that an appended event writes two pages to the WAL instead of four;
//! the export's `--since` finds its start through the search table instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;

use palisade_core::audit::AuditKey;
use palisade_core::identity::{SecurityEvent, SecurityEventKind};
use palisade_core::ids::{TenantId, UserId};
use palisade_core::ports::SecurityEventSink;
use palisade_store::Store;
use sqlx::migrate::Migrator;
use sqlx::Row;

/// The columns of `security_events`, every one, in a fixed order (for comparing rows).
const ALL: &str = "seq, kind, tenant_id, user_id, actor_id, ip, detail, created_at, chain, \
                   chain_seq, user_agent, request_id, prev_hash, hash";

async fn rows(pool: &sqlx::AnyPool) -> Vec<Vec<Option<String>>> {
    let rows = sqlx::query(&format!(
        "SELECT {} FROM security_events ORDER BY seq",
        ALL.split(", ")
            .map(|c| format!("CAST({c} AS TEXT)"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter()
        .map(|r| (0..14).map(|i| r.get::<Option<String>, _>(i)).collect())
        .collect()
}

#[tokio::test]
async fn migration_18_keeps_every_event_and_the_trail_append_only() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/old.db?mode=rwc", dir.path().display());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let all = sqlx::migrate!("migrations/sqlite");
    assert!(all.migrations.iter().any(|m| m.version == 18));
    let old = Migrator {
        migrations: Cow::Owned(
            all.migrations
                .iter()
                .filter(|m| m.version < 18)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    };
    old.run(&pool).await.unwrap();
    // A trail of the version before: an unchained event from before chains (v10), chained
    // events of two chains, and a gap in the positions (SQLite's AUTOINCREMENT never reuses
    // one; the gap stands for a rolled-back insert).
    for sql in [
        "INSERT INTO security_events (seq, kind, detail, created_at) VALUES (1, 'login_success', '{}', 100)",
        "INSERT INTO security_events (seq, kind, tenant_id, user_id, ip, detail, created_at, chain, chain_seq, user_agent, request_id, prev_hash, hash) \
         VALUES (2, 'llm_request', 't1', 'u1', '10.0.0.1', '{\"a\":\"ü \\\" x\"}', 200, 't1', 1, 'ua', 'r1', 'g', 'h1')",
        "INSERT INTO security_events (seq, kind, tenant_id, detail, created_at, chain, chain_seq, prev_hash, hash) \
         VALUES (3, 'llm_result', 't1', '{}', 150, 't1', 2, 'h1', 'h2')",
        "INSERT INTO security_events (seq, kind, actor_id, detail, created_at, chain, chain_seq, prev_hash, hash) \
         VALUES (7, 'admin_action', 'a1', '{}', 300, 'platform', 1, 'g', 'p1')",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let before = rows(&pool).await;
    all.run(&pool).await.unwrap();
    assert_eq!(
        rows(&pool).await,
        before,
        "every event kept, every column the same"
    );

    let schema: Vec<(String, String)> = sqlx::query(
        "SELECT name, COALESCE(sql, '') FROM sqlite_schema WHERE tbl_name = 'security_events'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let names: Vec<&str> = schema.iter().map(|(n, _)| n.as_str()).collect();
    let table = &schema
        .iter()
        .find(|(n, _)| n == "security_events")
        .unwrap()
        .1;
    assert!(!table.to_uppercase().contains("AUTOINCREMENT"), "{table}");
    assert!(!names.contains(&"idx_security_events_created"), "{names:?}");
    for kept in [
        "idx_security_events_chain",
        "security_events_append_only_update",
        "security_events_append_only_delete",
    ] {
        assert!(names.contains(&kept), "{kept} missing: {names:?}");
    }
    // Still append-only, still one event per chain position.
    for refused in [
        "UPDATE security_events SET detail = '{}' WHERE seq = 2",
        "DELETE FROM security_events WHERE seq = 7",
        "INSERT INTO security_events (kind, detail, created_at, chain, chain_seq) VALUES ('x', '{}', 1, 't1', 2)",
    ] {
        assert!(
            sqlx::query(refused).execute(&pool).await.is_err(),
            "{refused}"
        );
    }
    // The next event follows the newest position.
    sqlx::query("INSERT INTO security_events (kind, detail, created_at) VALUES ('x', '{}', 400)")
        .execute(&pool)
        .await
        .unwrap();
    let seq: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM security_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seq, 8);
}

/// Frames in a WAL file of `page` bytes a page (header 32 bytes, each frame 24 + a page).
fn wal_frames(path: &std::path::Path, page: u64) -> u64 {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    len.saturating_sub(32) / (24 + page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appended_event_writes_two_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let s = Store::open_sqlite(&db)
        .await
        .unwrap()
        .with_audit_key(AuditKey::generate());
    let tenant = TenantId::new();
    let event = |n: usize| {
        SecurityEvent::new(SecurityEventKind::LlmRequest)
            .user(tenant, UserId::new())
            .request(Some(format!("req-{n}")), None)
            .detail(serde_json::json!({ "model": "m", "guard": [], "n": n }))
    };
    // The chain begun and the WAL started over, so that only appends follow.
    s.record(event(0)).await.unwrap();
    let wal = dir.path().join("t.db-wal");
    let start = wal_frames(&wal, 4096);
    // One at a time: each event is a batch and a commit of its own, as at low load.
    let n = 200;
    for i in 1..=n {
        s.record(event(i)).await.unwrap();
    }
    let frames = wal_frames(&wal, 4096) - start;
    // The table's leaf and the chain index's leaf; now and then a new page and the header
    // page that counts pages. Before migration 0018: 4 a commit (the `created_at` index and
    // `sqlite_sequence` too) and ~4.3 with the growth.
    let per_event = frames as f64 / n as f64;
    assert!(
        (2.0..2.6).contains(&per_event),
        "{per_event:.2} WAL frames an event ({frames} for {n})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_since_reads_both_sides_of_the_search_copy() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_sqlite(&dir.path().join("t.db"))
        .await
        .unwrap()
        .with_audit_key(AuditKey::generate());
    let tenant = TenantId::new();
    // Times out of order with positions (a clock set back, two processes): 0..40 written at
    // 1,000 + 10 i, except every 7th, which carries an old time.
    let at = |i: i64| if i % 7 == 3 { 500 + i } else { 1_000 + 10 * i };
    let write = |s: Store, from: i64, to: i64| async move {
        for i in from..to {
            let mut e = SecurityEvent::new(SecurityEventKind::LlmRequest)
                .user(tenant, UserId::new())
                .request(Some(format!("req-{i:02}")), None);
            e.created_at = at(i);
            s.record(e).await.unwrap();
        }
    };
    let exported = |s: Store, since: i64| async move {
        let (mut out, mut after) = (Vec::new(), 0);
        loop {
            let page = s.audit_export(since, after, 4).await.unwrap();
            let Some((last, _)) = page.last() else {
                break;
            };
            after = *last;
            out.extend(page.into_iter().map(|(_, l)| l.request_id.unwrap()));
        }
        out
    };
    let expect = |to: i64, since: i64| {
        (0..to)
            .filter(|i| at(*i) >= since)
            .map(|i| format!("req-{i:02}"))
            .collect::<Vec<_>>()
    };
    write(s.clone(), 0, 25).await;
    while s.index_audit_events().await.unwrap() > 0 {}
    // 15 more not copied yet (the store's own indexer may take some: either side is right).
    write(s.clone(), 25, 40).await;
    for since in [0, 510, 1_000, 1_100, 1_245, 1_250, 1_300, 1_395, 2_000] {
        assert_eq!(
            exported(s.clone(), since).await,
            expect(40, since),
            "since {since}"
        );
    }
    while s.index_audit_events().await.unwrap() > 0 {}
    for since in [0, 1_100, 1_300, 2_000] {
        assert_eq!(
            exported(s.clone(), since).await,
            expect(40, since),
            "since {since}, all copied"
        );
    }
}
