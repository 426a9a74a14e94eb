//! The content guard's cost, measured in process on one thread:
//! - full input scan throughput (normalisation, injection rules + model, PII/secrets, toxicity)
//!   on ordinary prose, MB/s;
//! - the added latency of the input guard on a 2 kB prompt (p50/p99);
//! - the output guard's cost per streamed token, against the time a token takes to generate.

use std::time::Instant;

use palisade_core::guard::{Guard, GuardScope, OutputStep, Pseudonyms};
use palisade_core::ids::TenantId;
use palisade_core::provider::{PromptMessage, Role};
use palisade_guard::PalisadeGuard;
use palisade_types::guard::GuardSettings;
use palisade_types::models::TrustZone;
use serde_json::{json, Value};

/// Ordinary prose: paragraphs of the kind people paste into a chat (no attacks, some numbers).
const PARAGRAPHS: &[&str] = &[
    "The committee met on Tuesday to review the quarterly results. Revenue rose by 4 percent compared with the same period last year, driven mainly by the new subscription plans. Costs stayed flat, although travel expenses increased after the spring conference in Lisbon.",
    "To configure the service, open the settings page and choose the region closest to your users. The default timeout of 30 seconds suits most workloads; increase it only when reports take longer to build. Remember to restart the worker after changing the queue size.",
    "Photosynthesis converts light energy into chemical energy stored in glucose. Chlorophyll absorbs mostly blue and red light, which is why leaves look green. The process takes place in the chloroplasts and releases oxygen as a by-product.",
    "Our onboarding programme lasts two weeks. During the first week new colleagues meet their mentors, set up their laptops and read the engineering handbook. In the second week they pair with a teammate on a small production change.",
    "The museum's new wing opens in June with an exhibition of early photography. Visitors can see more than 200 prints from the 1850s, including portraits, city views and some of the first images of the night sky.",
    "When writing a cover letter, keep it to one page, address the hiring manager by name if you can, and explain in two or three concrete examples why your experience fits the role. Close with a short, confident sentence.",
    "The recipe needs 250 grams of flour, two eggs, a pinch of salt and 300 millilitres of milk. Whisk everything into a smooth batter, let it rest for half an hour, then fry thin pancakes in a hot, lightly oiled pan.",
    "Customer satisfaction scores improved in every region except the north, where delivery delays in March caused a spike in complaints. The logistics team has since added a second carrier and expects times to normalise by May.",
];

fn prose(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 512);
    let mut i = 0usize;
    while s.len() < bytes {
        s.push_str(PARAGRAPHS[i % PARAGRAPHS.len()]);
        s.push_str(if i % 3 == 2 { "\n\n" } else { " " });
        i += 1;
    }
    s
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

/// Runs the guard scenario; `token_ms` is the engine's time per token for the output ratio.
pub fn run(quick: bool, token_ms: f64) -> anyhow::Result<Value> {
    let guard = PalisadeGuard::new(GuardSettings::default(), &[])
        .map_err(|e| anyhow::anyhow!("guard: {e}"))?;
    let scope = GuardScope {
        tenant: TenantId::new(),
        zone: TrustZone::External,
        model: "bench".into(),
    };

    // 1. Throughput on prose, in 8 kB texts (a long prompt), one thread.
    let total = if quick { 8 << 20 } else { 32 << 20 };
    let texts: Vec<String> = (0..total / 8192)
        .map(|i| {
            let p = prose(8192 + (i % 7) * 13);
            p[(i * 37) % 200..].to_string()
        })
        .collect();
    let bytes: usize = texts.iter().map(String::len).sum();
    // Warm-up (lazy statics, caches).
    for t in texts.iter().take(16) {
        let _ = guard.scan(t);
    }
    // Five passes over the texts; the median pass is reported (the machine is shared, so a
    // single pass can land on a busy moment), the best one alongside.
    let mut findings = 0usize;
    let mut passes = Vec::with_capacity(5);
    for _ in 0..5 {
        let started = Instant::now();
        for t in &texts {
            let s = guard.scan(t);
            findings += s.values.len() + s.toxicity.len();
        }
        passes.push(bytes as f64 / 1e6 / started.elapsed().as_secs_f64());
    }
    passes.sort_by(f64::total_cmp);
    let mb_s = passes[passes.len() / 2];
    let mb_s_best = passes[passes.len() - 1];

    // 2. Input guard latency on a 2 kB prompt (the whole check, as the pipeline runs it).
    let iterations = if quick { 2_000 } else { 10_000 };
    let mut lat = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let p = prose(2048 + 256);
        let off = (i * 7) % 200;
        let msg = vec![PromptMessage {
            role: Role::User,
            content: p[off..off + 2048].to_string(),
        }];
        let mut vault = Pseudonyms::default();
        let t0 = Instant::now();
        let v = guard.check_input(&scope, msg, &mut vault);
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        if v.blocked.is_some() {
            anyhow::bail!("the guard blocked ordinary prose: {:?}", v.findings);
        }
    }
    lat.sort_by(f64::total_cmp);

    // 3. Output guard per token: a 1,500-token answer streamed through it.
    let answer = prose(7_000);
    let tokens: Vec<String> = answer
        .split_inclusive(' ')
        .flat_map(|w| {
            if w.len() > 6 {
                vec![w[..w.len() / 2].to_string(), w[w.len() / 2..].to_string()]
            } else {
                vec![w.to_string()]
            }
        })
        .collect();
    let system = guard.system_prompt(
        &scope,
        "You are a helpful, concise assistant.",
        "PLSD-0123456789abcdef0123",
    );
    let rounds = if quick { 20 } else { 100 };
    let t0 = Instant::now();
    let mut shown = 0usize;
    for _ in 0..rounds {
        let mut out = guard.output(
            &scope,
            Pseudonyms::default(),
            &system,
            "PLSD-0123456789abcdef0123",
        );
        for t in &tokens {
            if let OutputStep::Emit(s) = out.push(t) {
                shown += s.len();
            }
        }
        if let OutputStep::Emit(s) = out.finish() {
            shown += s.len();
        }
    }
    let per_token_ms = t0.elapsed().as_secs_f64() * 1000.0 / (rounds * tokens.len()) as f64;
    if shown != rounds * answer.len() {
        anyhow::bail!(
            "the output guard changed ordinary prose ({shown} vs {} bytes)",
            rounds * answer.len()
        );
    }
    let output_share = per_token_ms / token_ms;

    println!("\ncontent guard, one thread (default policy, external zone)");
    println!("| measure | value | target |");
    println!("|---|---:|---:|");
    println!(
        "| full input scan, ordinary prose (median / best of 5 passes) | {mb_s:.1} / {mb_s_best:.1} MB/s | >= 50 MB/s |"
    );
    println!(
        "| input guard on a 2 kB prompt, p50 / p99 | {:.3} / {:.3} ms | p99 < 1 ms |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!(
        "| output guard per token | {:.4} ms ({:.2}% of {token_ms:.1} ms per generated token) | < 5% |",
        per_token_ms,
        output_share * 100.0
    );
    Ok(json!({
        "scan_mb_per_s": mb_s,
        "scan_mb_per_s_best": mb_s_best,
        "scan_bytes": bytes,
        "scan_findings": findings,
        "input_2kb_p50_ms": percentile(&lat, 0.5),
        "input_2kb_p99_ms": percentile(&lat, 0.99),
        "output_per_token_ms": per_token_ms,
        "token_ms": token_ms,
        "output_share_of_streaming": output_share,
    }))
}
