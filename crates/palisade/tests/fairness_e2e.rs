//! Fairness between tenants on the local model, alone in its own test binary: it measures
//! waiting times, so no other test's server may share the machine's two cores with it (with one
//! beside it, the flood's last requests passed the model's 30 s first-token timeout).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Seconds one `/v1` completion of `token` takes.
async fn timed_completion(s: &Server, token: &str) -> f64 {
    let t = std::time::Instant::now();
    let r = s
        .post(
            token,
            "/v1/chat/completions",
            // Short answers: A's last request must get its first token within the local
            // model's 30 s first-token timeout even when other tests load the machine.
            json!({"model": "smollm2-135m", "max_tokens": 32, "temperature": 0,
                "messages": [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]}),
        )
        .await;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if status != StatusCode::OK {
        let log = s.log();
        let tail = &log[log.len().saturating_sub(4000)..];
        panic!("{status}: {body}\nserver log:\n{tail}");
    }
    t.elapsed().as_secs_f64()
}

/// Tenant A floods the local model; tenant B's requests are still served within a bound: each
/// ends before A's median request and within a third of A's longest wait (B waits for one slot
/// to free, then shares the batch), while A's own requests queue behind each other. With a
/// first-come queue B would wait behind A's whole backlog (about twelve waves here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_flood_does_not_starve_another() {
    let s = Server::start(&[
        ("PALISADE_MODEL__PARALLEL", "2"),
        ("PALISADE_MODEL__QUEUE_SIZE", "40"),
    ]);
    let admin = s.admin_token().await;
    let r = s
        .post(&admin, "/api/admin/tenants", json!({"name": "flood"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let tenant: Value = r.json().await.unwrap();
    let tid = tenant["id"].as_str().unwrap().to_string();
    let (_, flooder, _) = s.new_user(&admin, "flooder", "user", Some(&tid)).await;
    let (_, patient, _) = s.new_user(&admin, "patient", "user", None).await;

    // Warm up, then the unloaded time.
    timed_completion(&s, &patient).await;
    let alone = timed_completion(&s, &patient).await;

    // 24 requests from tenant A at once.
    let flood: Vec<_> = (0..24)
        .map(|_| {
            let s = &s;
            let t = flooder.clone();
            async move { timed_completion(s, &t).await }
        })
        .collect();
    let flood = futures::future::join_all(flood);
    let others = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut times = Vec::new();
        for _ in 0..3 {
            times.push(timed_completion(&s, &patient).await);
        }
        times
    };
    let (mut a, b) = tokio::join!(flood, others);
    a.sort_by(f64::total_cmp);
    let a_median = a[a.len() / 2];
    let b_max = b.iter().copied().fold(0.0, f64::max);
    println!(
        "unloaded {alone:.2} s; tenant A median {a_median:.2} s, max {:.2} s; tenant B {b:.2?}",
        a[a.len() - 1]
    );
    // B is served ahead of A's backlog: each of its requests ends before half of A's have, and
    // within a third of A's longest wait (first come, first served would put B behind all of
    // A's queued requests, at about A's longest wait).
    assert!(
        b_max < a_median,
        "tenant B ({b_max:.2} s) was not served ahead of A's backlog (median {a_median:.2} s)"
    );
    assert!(
        b_max < a[a.len() - 1] / 3.0,
        "tenant B waited {b_max:.2} s, A's longest {:.2} s",
        a[a.len() - 1]
    );
}
