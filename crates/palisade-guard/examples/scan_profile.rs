//! Where the input scan spends its time on ordinary prose (development aid).
use std::time::Instant;

fn main() {
    let para = "The committee met on Tuesday to review the quarterly results. Revenue rose by 4 percent compared with the same period last year, driven mainly by the new subscription plans. Costs stayed flat, although travel expenses increased after the spring conference in Lisbon. ";
    let text = para.repeat(32);
    let n = 400;
    let mb = (text.len() * n) as f64 / 1e6;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(palisade_guard::normalize::normalize(&text));
    }
    println!("normalize {:.1} MB/s", mb / t.elapsed().as_secs_f64());
    let norm = palisade_guard::normalize::normalize(&text);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(palisade_guard::pii::find_values(&text));
    }
    println!("values {:.1} MB/s", mb / t.elapsed().as_secs_f64());
    let det = palisade_guard::InjectionDetector::shipped();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(det.model().score(&norm.folded));
    }
    println!("model {:.1} MB/s", mb / t.elapsed().as_secs_f64());
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(det.score(&norm));
    }
    println!(
        "injection (rules+model) {:.1} MB/s",
        mb / t.elapsed().as_secs_f64()
    );
    let tox = palisade_guard::ToxicityLists::new(&[]).unwrap_or_else(|_| std::process::exit(1));
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(tox.scan(&norm.folded));
    }
    println!("toxicity {:.1} MB/s", mb / t.elapsed().as_secs_f64());
}
