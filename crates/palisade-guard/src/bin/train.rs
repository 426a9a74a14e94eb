//! Trains the injection model shipped in `model/injection.bin`, after measuring it by k-fold
//! cross-validation. Deterministic: the same data gives the same file, byte for byte.
//!
//! ```text
//! palisade-guard-train --data ../shared/guard-corpus/dev.jsonl \
//!     --data crates/palisade-guard/data/extra.jsonl --out crates/palisade-guard/model/injection.bin
//! ```
//!
//! Rows are JSON objects with `text` and `label` (`injection` or `benign`), optionally `source`
//! and `hard_negative`. See `crates/palisade-guard/TRAINING.md` for sources and licences.

use std::collections::BTreeMap;
use std::process::ExitCode;

use palisade_guard::injection::InjectionDetector;
use palisade_guard::model::{text_features, BUCKETS};
use palisade_guard::training::{load_rows, train, Rng};

struct Args {
    data: Vec<String>,
    out: Option<String>,
    folds: usize,
    epochs: usize,
    threshold: f32,
    values_out: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        data: Vec::new(),
        out: None,
        folds: 5,
        epochs: palisade_guard::training::EPOCHS,
        threshold: palisade_types::guard::GuardSettings::default().injection_threshold,
        values_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--data" => a.data.push(val()?),
            "--out" => a.out = Some(val()?),
            "--values-out" => a.values_out = Some(val()?),
            "--folds" => a.folds = val()?.parse().map_err(|_| "--folds takes a number")?,
            "--epochs" => a.epochs = val()?.parse().map_err(|_| "--epochs takes a number")?,
            "--threshold" => {
                a.threshold = val()?.parse().map_err(|_| "--threshold takes a number")?
            }
            "-h" | "--help" => {
                return Err("usage: palisade-guard-train --data FILE.jsonl [--data ...] [--out model.bin] [--folds 5] [--epochs 10] [--threshold 0.65] [--values-out values.jsonl]".into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.data.is_empty() && a.values_out.is_none() {
        return Err("at least one --data FILE.jsonl is needed".into());
    }
    Ok(a)
}

#[derive(Default, Clone, Copy)]
struct Tally {
    pos: u32,
    pos_hit: u32,
    neg: u32,
    neg_hit: u32,
}

impl Tally {
    fn add(&mut self, injection: bool, flagged: bool) {
        if injection {
            self.pos += 1;
            self.pos_hit += u32::from(flagged);
        } else {
            self.neg += 1;
            self.neg_hit += u32::from(flagged);
        }
    }
    fn line(&self, name: &str) -> String {
        let pct = |a: u32, b: u32| {
            if b == 0 {
                "    -".to_string()
            } else {
                format!("{:5.1}%", 100.0 * f64::from(a) / f64::from(b))
            }
        };
        format!(
            "| {name:<28} | {:>6} | {} | {:>6} | {} |",
            self.pos,
            pct(self.pos_hit, self.pos),
            self.neg,
            pct(self.neg_hit, self.neg)
        )
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.values_out {
        let lines: Vec<String> = palisade_guard::synth::generate(2026, 7000)
            .iter()
            .filter_map(|s| serde_json::to_string(s).ok())
            .collect();
        if let Err(e) = std::fs::write(path, lines.join("\n") + "\n") {
            eprintln!("error: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
        println!("wrote {} labelled value samples to {path}", lines.len());
        if args.data.is_empty() {
            return ExitCode::SUCCESS;
        }
    }
    let rows = match load_rows(&args.data) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let feats: Vec<(Vec<u32>, bool)> = rows
        .iter()
        .map(|r| (text_features(&r.folded), r.injection))
        .collect();
    eprintln!("{} rows from {} file(s)", rows.len(), args.data.len());

    if args.folds >= 2 {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        Rng(42).shuffle(&mut order);
        let mut overall = Tally::default();
        let mut hard = Tally::default();
        let mut by_source: BTreeMap<String, Tally> = BTreeMap::new();
        let mut model_only = Tally::default();
        let mut corpus_only = Tally::default();
        let mut scored: Vec<(f32, bool, bool)> = Vec::with_capacity(rows.len());
        // PALISADE_GUARD_DUMP=FILE writes every held-out score (error analysis).
        let mut dump = std::env::var("PALISADE_GUARD_DUMP")
            .ok()
            .and_then(|p| std::fs::File::create(p).ok());
        for k in 0..args.folds {
            let test: Vec<usize> = order
                .iter()
                .enumerate()
                .filter(|(i, _)| i % args.folds == k)
                .map(|(_, &r)| r)
                .collect();
            let trn: Vec<usize> = order
                .iter()
                .enumerate()
                .filter(|(i, _)| i % args.folds != k)
                .map(|(_, &r)| r)
                .collect();
            let m = train(&feats, &trn, args.epochs);
            let det = InjectionDetector::with_model(m);
            for &i in &test {
                let r = &rows[i];
                let n = palisade_guard::normalize_masked(&r.text).0;
                let sc = det.score(&n).score;
                scored.push((sc, r.injection, r.hard_negative));
                if let Some(dump) = dump.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(
                        dump,
                        "{}",
                        serde_json::json!({"score": sc, "model": det.model().score(&n.folded), "label": r.injection, "source": r.source, "text": r.text})
                    );
                }
                let flagged = sc >= args.threshold;
                overall.add(r.injection, flagged);
                if !r.source.starts_with("palisade/") {
                    corpus_only.add(r.injection, flagged);
                }
                model_only.add(r.injection, det.model().score(&n.folded) >= args.threshold);
                by_source
                    .entry(r.source.clone())
                    .or_default()
                    .add(r.injection, flagged);
                if r.hard_negative {
                    hard.add(false, flagged);
                }
            }
            eprintln!("fold {}/{} done", k + 1, args.folds);
        }
        println!(
            "\n{}-fold cross-validation, threshold {} (rules + model)\n",
            args.folds, args.threshold
        );
        println!("| rows                         | attacks | detected | benign | flagged (FPR) |");
        println!("|---|---:|---:|---:|---:|");
        println!("{}", overall.line("all"));
        println!("{}", corpus_only.line("development corpus only"));
        println!("{}", model_only.line("all, model alone"));
        println!("{}", hard.line("hard negatives"));
        for (s, t) in &by_source {
            println!("{}", t.line(s));
        }
        println!("\nthreshold sweep (rules + model):\n");
        println!("| threshold | detected | FPR | hard-negative FPR |");
        println!("|---:|---:|---:|---:|");
        for th in [0.3f32, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9] {
            let mut all = Tally::default();
            let mut hard = Tally::default();
            for &(sc, inj, hn) in &scored {
                all.add(inj, sc >= th);
                if hn {
                    hard.add(false, sc >= th);
                }
            }
            let pct = |a: u32, b: u32| 100.0 * f64::from(a) / f64::from(b.max(1));
            println!(
                "| {th:.2} | {:.1}% | {:.2}% | {:.1}% |",
                pct(all.pos_hit, all.pos),
                pct(all.neg_hit, all.neg),
                pct(hard.neg_hit, hard.neg)
            );
        }
    }

    if let Some(out) = &args.out {
        let all: Vec<usize> = (0..rows.len()).collect();
        let m = train(&feats, &all, args.epochs);
        if let Err(e) = std::fs::write(out, m.to_bytes()) {
            eprintln!("error: cannot write {out}: {e}");
            return ExitCode::FAILURE;
        }
        println!(
            "\nwrote {out} ({} buckets, trained on {} rows)",
            BUCKETS,
            rows.len()
        );
    }
    ExitCode::SUCCESS
}
