//! Usage rows on a real database (SQLite file, or PostgreSQL with `TEST_POSTGRES_URL`): many
//! requests finishing at once are group-committed, and every count arrives exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_core::ids::DEFAULT_TENANT;
use palisade_core::ports::UserRepository;
use palisade_core::quota::{UsageQuery, UsageRepository, UsageRow};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rows_are_added_up_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = palisade_store::testing::store_at(&dir.path().join("u.db"))
        .await
        .unwrap();
    let mut users = Vec::new();
    for name in ["ann", "bob"] {
        let u = store
            .create_user(palisade_store::testing::new_user(DEFAULT_TENANT, name))
            .await
            .unwrap();
        users.push(u.id.to_string());
    }
    let row = |i: u64| UsageRow {
        day: if i.is_multiple_of(5) {
            "2026-12-05"
        } else {
            "2026-12-06"
        }
        .into(),
        tenant_id: DEFAULT_TENANT.to_string(),
        user_id: users[(i % 2) as usize].clone(),
        key_id: if i.is_multiple_of(3) {
            "key-1".into()
        } else {
            String::new()
        },
        model: if i.is_multiple_of(4) { "big" } else { "small" }.into(),
        requests: 1,
        prompt_tokens: i,
        completion_tokens: 2 * i,
        compute_ms: 3,
        guard_blocks: u64::from(i.is_multiple_of(7)),
        rate_limited: u64::from(i.is_multiple_of(11)),
    };
    let n = 600u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = store.clone();
        let r = row(i);
        tasks.push(tokio::spawn(async move { s.add_usage(&r).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }

    let got = store
        .usage(&UsageQuery {
            tenant: None,
            user: None,
            from_day: "2026-12-01".into(),
            to_day: "2026-12-31".into(),
        })
        .await
        .unwrap();
    // The same groups, with the same sums, as adding the rows up one by one.
    let mut want: std::collections::BTreeMap<(String, String, String, String), UsageRow> =
        Default::default();
    for i in 0..n {
        let r = row(i);
        let k = (
            r.day.clone(),
            r.user_id.clone(),
            r.key_id.clone(),
            r.model.clone(),
        );
        match want.get_mut(&k) {
            Some(w) => w.add(&r),
            None => {
                want.insert(k, r);
            }
        }
    }
    let mut got: Vec<UsageRow> = got;
    got.sort_by(|a, b| {
        (&a.day, &a.user_id, &a.key_id, &a.model).cmp(&(&b.day, &b.user_id, &b.key_id, &b.model))
    });
    let want: Vec<UsageRow> = want.into_values().collect();
    assert_eq!(got, want);
    assert_eq!(got.iter().map(|r| r.requests).sum::<u64>(), n);
    assert_eq!(
        got.iter().map(|r| r.prompt_tokens).sum::<u64>(),
        n * (n - 1) / 2
    );
}
