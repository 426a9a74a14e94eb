//! Jobs and retention on a real SQLite file: claims, retries, dead letters; purges that spare
//! held users and fresh conversations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_core::entities::ChatSession;
use palisade_core::ids::{SessionId, DEFAULT_TENANT};
use palisade_core::jobs::{JobRepository, JobState, NewJob};
use palisade_core::ports::{ChatRepository, UserRepository};
use palisade_core::retention::{RetentionRepository, UserHold};
use palisade_store::Store;

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = palisade_store::testing::store_at(&dir.path().join("j.db"))
        .await
        .unwrap();
    (dir, s)
}

#[tokio::test]
async fn jobs_are_claimed_once_retried_and_dead_lettered() {
    let (_d, s) = store().await;
    let id = s
        .enqueue(&NewJob {
            kind: "k".into(),
            tenant_id: Some(DEFAULT_TENANT),
            payload: serde_json::json!({"x": 1}),
            max_attempts: 2,
            run_at: 1000,
        })
        .await
        .unwrap();
    // Not due yet.
    assert!(s.claim(999, 0).await.unwrap().is_none());
    let j = s.claim(1000, 0).await.unwrap().unwrap();
    assert_eq!((j.id, j.attempts, j.state), (id, 1, JobState::Running));
    assert_eq!(j.payload["x"], 1);
    // Claimed once only.
    assert!(s.claim(1000, 0).await.unwrap().is_none());
    assert!(s.pending("k").await.unwrap());
    s.fail(id, "boom", Some(2000), 1001).await.unwrap();
    assert!(s.claim(1500, 0).await.unwrap().is_none());
    let j = s.claim(2000, 0).await.unwrap().unwrap();
    assert_eq!(j.attempts, 2);
    assert_eq!(j.last_error.as_deref(), Some("boom"));
    s.fail(id, "boom again", None, 2001).await.unwrap();
    let dead = s.list_jobs(Some(JobState::Dead), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("boom again"));
    assert!(!s.pending("k").await.unwrap());
    // Retry: queued with fresh attempts; only dead jobs can be retried or discarded.
    assert!(s.retry_job(id, 3000).await.unwrap());
    assert!(!s.retry_job(id, 3000).await.unwrap());
    assert!(!s.discard_job(id).await.unwrap());
    let j = s.claim(3000, 0).await.unwrap().unwrap();
    assert_eq!(j.attempts, 1);
    s.complete(id, 3001).await.unwrap();
    assert_eq!(s.get_job(id).await.unwrap().unwrap().state, JobState::Done);
    // A job left running by a dead process is taken again once stale.
    let id2 = s
        .enqueue(&NewJob {
            kind: "k".into(),
            tenant_id: None,
            payload: serde_json::Value::Null,
            max_attempts: 3,
            run_at: 0,
        })
        .await
        .unwrap();
    let j = s.claim(5000, 0).await.unwrap().unwrap();
    assert_eq!(j.id, id2);
    let now = palisade_core::entities::now_millis();
    assert!(s.claim(now, 0).await.unwrap().is_none());
    let again = s.claim(now, now + 1).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (id2, 2));
    s.fail(id2, "x", None, now).await.unwrap();
    assert!(s.discard_job(id2).await.unwrap());
    assert!(s.get_job(id2).await.unwrap().is_none());
}

#[tokio::test]
async fn purges_spare_fresh_conversations_and_held_users() {
    let (_d, s) = store().await;
    let mut users = Vec::new();
    for name in ["ann", "bob"] {
        users.push(
            s.create_user(palisade_store::testing::new_user(DEFAULT_TENANT, name))
                .await
                .unwrap(),
        );
    }
    let mut made = Vec::new();
    for (u, at) in [(0, 100), (0, 5000), (1, 100)] {
        let session = ChatSession {
            id: SessionId::new(),
            tenant_id: DEFAULT_TENANT,
            user_id: users[u].id,
            title: "t".into(),
            system_prompt: None,
            created_at: at,
            updated_at: at,
        };
        s.create_session(&session).await.unwrap();
        made.push(session);
    }
    s.put_user_hold(&UserHold {
        tenant_id: DEFAULT_TENANT,
        user_id: users[1].id,
        reason: "litigation".into(),
        created_at: 1,
        created_by: "admin".into(),
    })
    .await
    .unwrap();
    // Ann's old conversation goes; her fresh one and held Bob's stay.
    assert_eq!(
        s.purge_conversations(DEFAULT_TENANT, 1000).await.unwrap(),
        1
    );
    let gone = s
        .get_session(DEFAULT_TENANT, users[0].id, made[0].id)
        .await
        .unwrap();
    assert!(gone.is_none());
    for (u, m) in [(0, 1), (1, 2)] {
        assert!(s
            .get_session(DEFAULT_TENANT, users[u].id, made[m].id)
            .await
            .unwrap()
            .is_some());
    }
    assert!(s
        .delete_user_hold(DEFAULT_TENANT, users[1].id)
        .await
        .unwrap());
    assert_eq!(
        s.purge_conversations(DEFAULT_TENANT, 1000).await.unwrap(),
        1
    );
}
