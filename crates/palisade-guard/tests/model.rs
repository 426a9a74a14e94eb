//! The shipped injection model: rebuilt byte for byte by the training code, and its measured
//! quality on the development corpus (5-fold cross-validation, rules + model, at the default
//! `guard.injection_threshold`).
//! Both need `../shared/guard-corpus/dev.jsonl` beside the repository (CI has it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use palisade_guard::injection::InjectionDetector;
use palisade_guard::model::text_features;
use palisade_guard::normalize_masked;
use palisade_guard::training::{load_rows, train, train_files, Rng, EPOCHS};

fn corpus() -> Option<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dev = root.join("../../../shared/guard-corpus/dev.jsonl");
    let extra = root.join("data/extra.jsonl");
    if !dev.exists() {
        eprintln!(
            "the development corpus is not beside the repository: {}",
            dev.display()
        );
        return None;
    }
    Some((dev.display().to_string(), extra.display().to_string()))
}

#[test]
fn shipped_model_is_reproducible() {
    let Some((dev, extra)) = corpus() else {
        panic!("../shared/guard-corpus/dev.jsonl is needed to check the shipped model");
    };
    let model = train_files(&[dev, extra], EPOCHS).unwrap_or_else(|e| panic!("{e}"));
    let shipped = include_bytes!("../model/injection.bin");
    assert!(
        model.to_bytes() == shipped.as_slice(),
        "model/injection.bin is not what scripts/train-guard builds from the data; rerun it"
    );
}

#[test]
fn cross_validation_meets_targets() {
    let Some((dev, extra)) = corpus() else {
        panic!("../shared/guard-corpus/dev.jsonl is needed to measure the detector");
    };
    let rows = load_rows(&[dev, extra]).unwrap_or_else(|e| panic!("{e}"));
    let feats: Vec<(Vec<u32>, bool)> = rows
        .iter()
        .map(|r| (text_features(&r.folded), r.injection))
        .collect();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    Rng(42).shuffle(&mut order);
    let folds = 5;
    let threshold = palisade_types::guard::GuardSettings::default().injection_threshold;
    let (mut pos, mut tp, mut neg, mut fp, mut hard, mut hard_fp) = (0, 0, 0, 0, 0, 0);
    for k in 0..folds {
        let trn: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(i, _)| i % folds != k)
            .map(|(_, &r)| r)
            .collect();
        let det = InjectionDetector::with_model(train(&feats, &trn, EPOCHS));
        for (_, &i) in order.iter().enumerate().filter(|(i, _)| i % folds == k) {
            let r = &rows[i];
            // The targets are on the development corpus; our own rows (palisade/*) train the
            // model and are reported by scripts/train-guard.
            if r.source.starts_with("palisade/") {
                continue;
            }
            let flagged = det.score(&normalize_masked(&r.text).0).score >= threshold;
            if r.injection {
                pos += 1;
                tp += u32::from(flagged);
            } else {
                neg += 1;
                fp += u32::from(flagged);
                if r.hard_negative {
                    hard += 1;
                    hard_fp += u32::from(flagged);
                }
            }
        }
    }
    let detection = f64::from(tp) / f64::from(pos);
    let fpr = f64::from(fp) / f64::from(neg);
    let hard_fpr = f64::from(hard_fp) / f64::from(hard.max(1));
    println!(
        "5-fold CV: detection {:.2}% ({tp}/{pos}), FPR {:.2}% ({fp}/{neg}), hard negatives FPR {:.1}% ({hard_fp}/{hard})",
        detection * 100.0,
        fpr * 100.0,
        hard_fpr * 100.0
    );
    assert!(detection >= 0.95, "detection {detection:.4} < 0.95");
    assert!(fpr <= 0.02, "false-positive rate {fpr:.4} > 0.02");
    assert!(hard_fpr <= 0.10, "hard-negative FPR {hard_fpr:.3} > 0.10");
}
