//! The audit search on a real database: on SQLite it reads the copied part of the trail through
//! `security_events_search` and the part not yet copied from `security_events` itself; every
//! answer must be the same whichever side of the copy an event is on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use palisade_core::identity::{EventQuery, SecurityEvent, SecurityEventKind};
use palisade_core::ids::{UserId, DEFAULT_TENANT};
use palisade_core::ports::SecurityEventSink;
use palisade_store::Store;

/// The request ids of a search's answer, in its order.
async fn ids(s: &Store, q: EventQuery) -> Vec<String> {
    s.search_events(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.request_id.unwrap())
        .collect()
}

/// Every search below, answered from the events written so far (`written`: request ids in
/// the order written, with the user and kind of each).
async fn check(s: &Store, written: &[(String, UserId, SecurityEventKind)], a: UserId) {
    let newest_first = |keep: &dyn Fn(&(String, UserId, SecurityEventKind)) -> bool| {
        written
            .iter()
            .rev()
            .filter(|e| keep(e))
            .map(|e| e.0.clone())
            .collect::<Vec<_>>()
    };
    // Newest first, one kind, fewer than there are.
    let failures = newest_first(&|e| e.2 == SecurityEventKind::LoginFailure);
    let q = EventQuery {
        tenant: Some(DEFAULT_TENANT),
        kinds: vec![SecurityEventKind::LoginFailure],
        limit: 12,
        ..EventQuery::default()
    };
    assert_eq!(ids(s, q).await, failures[..12.min(failures.len())]);
    // One user, all of theirs.
    let q = EventQuery {
        user: Some(a),
        limit: 1000,
        ..EventQuery::default()
    };
    assert_eq!(ids(s, q).await, newest_first(&|e| e.1 == a));
    // One request, first and last written.
    for r in [&written[0].0, &written[written.len() - 1].0] {
        let q = EventQuery {
            request_id: Some(r.clone()),
            limit: 10,
            ..EventQuery::default()
        };
        assert_eq!(ids(s, q).await, vec![r.clone()]);
    }
    // Newest-first pages of 7 walk the whole trail, across the copied position.
    let all = s
        .search_events(&EventQuery {
            limit: 1000,
            ..EventQuery::default()
        })
        .await
        .unwrap();
    let (mut paged, mut before) = (Vec::new(), None);
    loop {
        let page = s
            .search_events(&EventQuery {
                before,
                limit: 7,
                ..EventQuery::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = last.seq;
        paged.extend(page.into_iter().map(|e| e.request_id.unwrap()));
    }
    assert_eq!(paged, newest_first(&|_| true));
    // Oldest first after the 10th event, one user, 9 at a time.
    let after = all[all.len() - 10].seq;
    let q = EventQuery {
        user: Some(a),
        after,
        limit: 9,
        ..EventQuery::default()
    };
    let want: Vec<String> = written[10..]
        .iter()
        .filter(|e| e.1 == a)
        .take(9)
        .map(|e| e.0.clone())
        .collect();
    assert_eq!(ids(s, q).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_read_both_sides_of_the_index_copy() {
    let dir = tempfile::tempdir().unwrap();
    let s = palisade_store::testing::store_at(&dir.path().join("t.db"))
        .await
        .unwrap();
    let (a, b) = (UserId::new(), UserId::new());
    let mut written = Vec::new();
    let write = |s: Store, n: usize, from: usize| async move {
        let mut out = Vec::new();
        for i in from..from + n {
            let kind = if i % 3 == 0 {
                SecurityEventKind::LoginFailure
            } else {
                SecurityEventKind::LoginSuccess
            };
            let user = if i % 2 == 0 { a } else { b };
            let request = format!("req-{i:03}");
            s.record(
                SecurityEvent::new(kind)
                    .user(DEFAULT_TENANT, user)
                    .request(Some(request.clone()), None),
            )
            .await
            .unwrap();
            out.push((request, user, kind));
        }
        out
    };
    written.extend(write(s.clone(), 30, 0).await);
    // The first 30 copied (some may be already: the store's own indexer runs too)...
    s.index_audit_events().await.unwrap();
    assert_eq!(s.index_audit_events().await.unwrap(), 0, "all copied");
    // ...and 25 more after them, which the searches must find in the trail itself.
    written.extend(write(s.clone(), 25, 30).await);
    check(&s, &written, a).await;
    // Once those are copied too, the answers are the same.
    s.index_audit_events().await.unwrap();
    check(&s, &written, a).await;
}
