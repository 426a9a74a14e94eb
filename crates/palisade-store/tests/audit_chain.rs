//! The audit trail's batched writer on SQLite: chain heads remembered between batches, one
//! statement per batch, another process appending to the same file, batches larger than one
//! statement carries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_core::audit::AuditKey;
use palisade_core::identity::{SecurityEvent, SecurityEventKind};
use palisade_core::ids::{TenantId, UserId};
use palisade_core::ports::SecurityEventSink;
use palisade_store::Store;

fn event(tenant: TenantId, n: usize) -> SecurityEvent {
    SecurityEvent::new(SecurityEventKind::LlmRequest)
        .user(tenant, UserId::new())
        .detail(serde_json::json!({ "n": n, "text": "quote \" backslash \\ tab \t ünïcödé" }))
}

/// Records `count` events of `tenant` at once (they gather into batches).
async fn burst(s: &Store, tenant: TenantId, count: usize) {
    let all = (0..count).map(|n| s.record(event(tenant, n)));
    for r in futures::future::join_all(all).await {
        r.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_file_keep_every_chain_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let key = AuditKey::generate();
    // Two stores on one file stand for two processes (the server and `palisade admin`): each
    // remembers the heads it wrote, which the other's appends make stale.
    let a = Store::open_sqlite(&path)
        .await
        .unwrap()
        .with_audit_key(key.clone());
    let b = Store::open_sqlite(&path)
        .await
        .unwrap()
        .with_audit_key(key.clone());
    let (t1, t2) = (TenantId::new(), TenantId::new());
    for round in 0..4 {
        burst(&a, t1, 5).await;
        burst(&b, t1, 3).await;
        // Both at once, on two chains.
        tokio::join!(burst(&a, t2, 7), burst(&b, t1, 2), burst(&b, t2, round + 1));
    }
    let report = a.verify_audit(&key).await.unwrap();
    assert_eq!(report.broken, None, "{report:?}");
    // 4 rounds of 5 + 3 + 2 events on t1 and 7 + (1..=4) on t2, plus anything a store writes
    // on its own (none here).
    assert_eq!(report.links, 4 * (5 + 3 + 2) + 4 * 7 + (1 + 2 + 3 + 4));
    let heads = a.audit_heads().await.unwrap();
    let top = |t: TenantId| {
        heads
            .iter()
            .find(|(c, _, _)| *c == t.to_string())
            .map(|(_, seq, _)| *seq)
            .unwrap()
    };
    assert_eq!(top(t1), 40, "positions 1..=40 without a gap");
    assert_eq!(top(t2), 38);
    // The text survives the trip through the batch's JSON exactly (the hash covers it).
    let link = a.audit_link(&t1.to_string(), 1).await.unwrap().unwrap();
    assert!(link.detail.contains("ünïcödé"), "{}", link.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_one_statement_is_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let key = AuditKey::generate();
    let s = Store::open_sqlite(&dir.path().join("audit.db"))
        .await
        .unwrap()
        .with_audit_key(key.clone());
    let t = TenantId::new();
    // More than one batch holds (1,000 events): the queue hands them over in turns.
    burst(&s, t, 2_500).await;
    let report = s.verify_audit(&key).await.unwrap();
    assert_eq!(report.broken, None, "{report:?}");
    assert_eq!(report.links, 2_500);
}
