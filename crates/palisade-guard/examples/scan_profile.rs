//! Where the input scan spends its time on ordinary prose (development aid).
//! `scan_profile [STAGE]` runs one stage only (`normalize`, `values`, `model`, `injection`,
//! `toxicity`, `scan`), e.g. under `perf record`.
use std::time::Instant;

fn main() {
    let para = "The committee met on Tuesday to review the quarterly results. Revenue rose by 4 percent compared with the same period last year, driven mainly by the new subscription plans. Costs stayed flat, although travel expenses increased after the spring conference in Lisbon. ";
    let text = para.repeat(32);
    let only = std::env::args().nth(1);
    let n = if only.is_some() { 2000 } else { 400 };
    let mb = (text.len() * n) as f64 / 1e6;
    let run = |name: &str, f: &dyn Fn()| {
        if only.as_deref().is_some_and(|o| o != name) {
            return;
        }
        // The best of five rounds (this machine is shared and noisy).
        let mut best = 0.0f64;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..n / 5 {
                f();
            }
            best = best.max(mb / 5.0 / t.elapsed().as_secs_f64());
        }
        println!("{name} {best:.1} MB/s");
    };
    let norm = palisade_guard::normalize::normalize(&text);
    let det = palisade_guard::InjectionDetector::shipped();
    let tox = palisade_guard::ToxicityLists::new(&[]).unwrap_or_else(|_| std::process::exit(1));
    let guard = palisade_guard::PalisadeGuard::new(Default::default(), &[])
        .unwrap_or_else(|_| std::process::exit(1));
    run("normalize", &|| {
        std::hint::black_box(palisade_guard::normalize::normalize(&text));
    });
    run("values", &|| {
        std::hint::black_box(palisade_guard::pii::find_values(&text));
    });
    run("model", &|| {
        std::hint::black_box(det.model().score(&norm.folded));
    });
    run("injection", &|| {
        std::hint::black_box(det.score(&norm));
    });
    run("toxicity", &|| {
        std::hint::black_box(tox.scan(&norm.folded));
    });
    run("scan", &|| {
        std::hint::black_box(guard.scan(&text));
    });
}
