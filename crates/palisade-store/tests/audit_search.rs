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

/// On a SQLite file the search table lives in a file of its own beside the database, written
/// without the database's write lock; it holds only copies, so a lost one is refilled from the
/// trail at the next start and the searches answer as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_file_is_its_own_and_refilled_when_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let search = dir.path().join("t-search.db");
    let user = UserId::new();
    let s = Store::open_sqlite(&db).await.unwrap();
    for i in 0..20 {
        s.record(
            SecurityEvent::new(SecurityEventKind::LoginSuccess)
                .user(DEFAULT_TENANT, user)
                .request(Some(format!("req-{i:02}")), None),
        )
        .await
        .unwrap();
    }
    while s.index_audit_events().await.unwrap() > 0 {}
    assert!(search.exists(), "the search table has a file of its own");
    // The copies are in that file, not in the database's own table.
    let copied = |path: &std::path::Path| {
        let c = rusqlite::Connection::open(path).unwrap();
        c.query_row("SELECT COUNT(*) FROM security_events_search", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
    };
    assert_eq!(copied(&search), 20);
    assert_eq!(copied(&db), 0);
    s.close().await;
    drop(s);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = search.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let s = Store::open_sqlite(&db).await.unwrap();
    let q = EventQuery {
        user: Some(user),
        limit: 100,
        ..EventQuery::default()
    };
    let newest_first: Vec<String> = (0..20).rev().map(|i| format!("req-{i:02}")).collect();
    // Before the copy (read from the trail) and after it (through the refilled file).
    assert_eq!(ids(&s, q.clone()).await, newest_first);
    while s.index_audit_events().await.unwrap() > 0 {}
    assert_eq!(copied(&search), 20);
    assert_eq!(ids(&s, q).await, newest_first);
}
