//! One suite, run on the in-memory backend and on the real Redis at 127.0.0.1:6379
//! (`REDIS_URL` to use another): both must give the same decisions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use palisade_limits::{Adjust, Backend, Check, Decision, Dimension, MemoryBackend, RedisBackend};

const S: u64 = 1_000_000;

fn check(key: &str, dimension: Dimension, amount: u64, period_s: u64, cost: u64) -> Check {
    Check {
        key: key.into(),
        dimension,
        amount,
        period: Duration::from_secs(period_s),
        cost,
    }
}

fn allowed(d: &Decision) -> bool {
    matches!(d, Decision::Allowed(_))
}

fn remaining(d: &Decision) -> Vec<u64> {
    match d {
        Decision::Allowed(s) => s.iter().map(|x| x.remaining).collect(),
        Decision::Denied { .. } => panic!("denied: {d:?}"),
    }
}

/// The semantics every backend must have. `t0`: a start time in microseconds.
async fn suite(b: &dyn Backend, t0: u64) {
    // Requests per user: 10 per second, as a burst, then paced (retry after 100 ms).
    let rps = check("u:alice:requests:1", Dimension::Requests, 10, 1, 1);
    for i in 0..10 {
        let d = b
            .acquire(std::slice::from_ref(&rps), Some(t0))
            .await
            .unwrap();
        assert_eq!(remaining(&d), vec![9 - i]);
    }
    match b
        .acquire(std::slice::from_ref(&rps), Some(t0))
        .await
        .unwrap()
    {
        Decision::Denied {
            retry_after,
            key,
            amount,
            impossible,
            ..
        } => {
            assert_eq!(retry_after, Duration::from_millis(100));
            assert_eq!(key, "u:alice:requests:1");
            assert_eq!(amount, 10);
            assert!(!impossible);
        }
        d => panic!("the 11th request passed: {d:?}"),
    }
    assert!(allowed(
        &b.acquire(std::slice::from_ref(&rps), Some(t0 + S / 10))
            .await
            .unwrap()
    ));
    // Another user (another scope key) is not affected.
    let bob = check("u:bob:requests:1", Dimension::Requests, 10, 1, 1);
    assert!(allowed(
        &b.acquire(std::slice::from_ref(&bob), Some(t0))
            .await
            .unwrap()
    ));

    // All or nothing: a request refused by the tenant's limit charges nobody's.
    let user = check("u:carol:requests:60", Dimension::Requests, 100, 60, 1);
    let tenant = check("t:acme:requests:60", Dimension::Requests, 1, 60, 1);
    let both = [user.clone(), tenant.clone()];
    assert_eq!(
        remaining(&b.acquire(&both, Some(t0)).await.unwrap()),
        vec![99, 0]
    );
    match b.acquire(&both, Some(t0)).await.unwrap() {
        Decision::Denied { index, key, .. } => {
            assert_eq!(index, 1);
            assert_eq!(key, "t:acme:requests:60");
        }
        d => panic!("{d:?}"),
    }
    let d = b
        .acquire(std::slice::from_ref(&user), Some(t0))
        .await
        .unwrap();
    assert_eq!(
        remaining(&d),
        vec![98],
        "the refused request charged the user"
    );

    // Tokens: reserve max_tokens + prompt up front, settle to real usage.
    let day = check("u:dave:tokens:86400", Dimension::Tokens, 2000, 86_400, 1500);
    assert_eq!(
        remaining(
            &b.acquire(std::slice::from_ref(&day), Some(t0))
                .await
                .unwrap()
        ),
        vec![500]
    );
    // The answer used 120 of the 1,500 reserved: 1,380 come back.
    b.release(&day, 1380, Some(t0)).await.unwrap();
    let next = Check {
        cost: 1800,
        ..day.clone()
    };
    assert_eq!(
        remaining(
            &b.acquire(std::slice::from_ref(&next), Some(t0))
                .await
                .unwrap()
        ),
        vec![80]
    );
    // A month-long budget (large windows stay exact).
    let month = check(
        "t:acme:tokens:2592000",
        Dimension::Tokens,
        5_000_000,
        2_592_000,
        4_999_999,
    );
    assert_eq!(
        remaining(
            &b.acquire(std::slice::from_ref(&month), Some(t0))
                .await
                .unwrap()
        ),
        vec![1]
    );
    let more = Check {
        cost: 2,
        ..month.clone()
    };
    assert!(!allowed(
        &b.acquire(std::slice::from_ref(&more), Some(t0))
            .await
            .unwrap()
    ));
    // A cost beyond the whole limit is impossible, not "retry later".
    let huge = check("u:erin:tokens:60", Dimension::Tokens, 100, 60, 101);
    match b
        .acquire(std::slice::from_ref(&huge), Some(t0))
        .await
        .unwrap()
    {
        Decision::Denied { impossible, .. } => assert!(impossible),
        d => panic!("{d:?}"),
    }

    // Compute time (milliseconds per minute) behaves like any rate.
    let gpu = check(
        "m:local:compute_ms:60",
        Dimension::ComputeMs,
        60_000,
        60,
        59_000,
    );
    assert!(allowed(
        &b.acquire(std::slice::from_ref(&gpu), Some(t0))
            .await
            .unwrap()
    ));
    let gpu2 = Check {
        cost: 2_000,
        ..gpu.clone()
    };
    match b
        .acquire(std::slice::from_ref(&gpu2), Some(t0))
        .await
        .unwrap()
    {
        Decision::Denied { retry_after, .. } => assert_eq!(retry_after, Duration::from_secs(1)),
        d => panic!("{d:?}"),
    }

    // Concurrent streams: two at once, the third waits for a release.
    let streams = check("u:frank:concurrent", Dimension::Concurrent, 2, 0, 1);
    for left in [1, 0] {
        assert_eq!(
            remaining(
                &b.acquire(std::slice::from_ref(&streams), Some(t0))
                    .await
                    .unwrap()
            ),
            vec![left]
        );
    }
    assert!(!allowed(
        &b.acquire(std::slice::from_ref(&streams), Some(t0))
            .await
            .unwrap()
    ));
    b.release(&streams, 1, Some(t0)).await.unwrap();
    assert!(allowed(
        &b.acquire(std::slice::from_ref(&streams), Some(t0))
            .await
            .unwrap()
    ));

    // A token budget: reserve 600 of 1000, settle to 200 used (400 back), then usage beyond
    // the reservation is charged without asking and overdraws the budget.
    let tokens = check("u:hana:tokens:100", Dimension::Tokens, 1000, 100, 600);
    assert_eq!(
        remaining(
            &b.acquire(std::slice::from_ref(&tokens), Some(t0))
                .await
                .unwrap()
        ),
        vec![400]
    );
    b.release(&tokens, 400, Some(t0)).await.unwrap();
    let probe = Check {
        cost: 0,
        ..tokens.clone()
    };
    assert_eq!(
        remaining(
            &b.acquire(std::slice::from_ref(&probe), Some(t0))
                .await
                .unwrap()
        ),
        vec![800]
    );
    b.charge(&tokens, 1000, Some(t0)).await.unwrap();
    match b
        .acquire(std::slice::from_ref(&probe), Some(t0))
        .await
        .unwrap()
    {
        // 1200 used of 1000 per 100 s (0.1 s per token): 200 tokens' worth of waiting.
        Decision::Denied { retry_after, .. } => assert_eq!(retry_after, Duration::from_secs(20)),
        d => panic!("an overdrawn budget admitted a request: {d:?}"),
    }
    // A stream counter charged without asking counts like an acquired one.
    let held = check("u:hana:concurrent", Dimension::Concurrent, 1, 0, 1);
    b.charge(&held, 1, Some(t0)).await.unwrap();
    assert!(!allowed(
        &b.acquire(std::slice::from_ref(&held), Some(t0))
            .await
            .unwrap()
    ));

    // A settlement in one call: a stream given back, unused tokens given back, compute time
    // charged; each counter ends as if corrected one by one.
    let slot = check("u:ivan:concurrent", Dimension::Concurrent, 1, 0, 1);
    let budget = check("u:ivan:tokens:100", Dimension::Tokens, 1000, 100, 700);
    let compute = check(
        "u:ivan:compute_ms:100",
        Dimension::ComputeMs,
        10_000,
        100,
        0,
    );
    let all = [slot.clone(), budget.clone(), compute.clone()];
    assert_eq!(
        remaining(&b.acquire(&all, Some(t0)).await.unwrap()),
        vec![0, 300, 10_000]
    );
    let settle = |check: &Check, amount, charge| Adjust {
        check: check.clone(),
        amount,
        charge,
    };
    b.adjust(
        &[
            settle(&slot, 1, false),
            settle(&budget, 500, false),
            settle(&compute, 4_000, true),
        ],
        Some(t0),
    )
    .await
    .unwrap();
    let probes: Vec<Check> = all
        .iter()
        .map(|c| Check {
            cost: 0,
            ..c.clone()
        })
        .collect();
    assert_eq!(
        remaining(&b.acquire(&probes, Some(t0)).await.unwrap()),
        vec![1, 800, 6_000]
    );
    b.adjust(&[], Some(t0)).await.unwrap();

    // Without an explicit clock the backend's own is used.
    let live = check("u:gina:requests:1", Dimension::Requests, 2, 1, 1);
    for _ in 0..2 {
        assert!(allowed(
            &b.acquire(std::slice::from_ref(&live), None).await.unwrap()
        ));
    }
    assert!(!allowed(
        &b.acquire(std::slice::from_ref(&live), None).await.unwrap()
    ));
}

#[tokio::test]
async fn memory_backend() {
    suite(&MemoryBackend::new(), 5 * S).await;
}

#[tokio::test]
async fn redis_backend() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!(
        "palisade:test:{}:{}:",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let b = RedisBackend::connect_with_prefix(&url, &prefix)
        .await
        .expect("Redis at 127.0.0.1:6379 (the test machine runs one)");
    // Redis's clock is wall time: start from it so TTLs are sensible.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    suite(&b, now).await;
}
