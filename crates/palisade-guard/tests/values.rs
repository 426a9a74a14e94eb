//! Precision and recall of the value detectors (PII and secrets) on the generated labelled set:
//! valid values in templates, near misses that only checksums and structure checks reject, and
//! texts full of numbers that are none of them. Target: >= 98% for every kind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use palisade_guard::pii::find_values;
use palisade_guard::synth::generate;

#[test]
fn value_detectors_reach_98_percent() {
    let samples = generate(2026, 7000);
    let mut counts: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    for s in &samples {
        let mut want: Vec<(String, String)> = s
            .values
            .iter()
            .map(|e| (e.kind.clone(), e.value.clone()))
            .collect();
        for hit in find_values(&s.text) {
            let found = &s.text[hit.start..hit.end];
            match want
                .iter()
                .position(|(k, v)| k == hit.kind && (v == found || v.contains(found)))
            {
                Some(i) => {
                    want.remove(i);
                    counts.entry(hit.kind.to_string()).or_default().0 += 1;
                }
                None => {
                    eprintln!("false positive {}: {:?} in {:?}", hit.kind, found, s.text);
                    counts.entry(hit.kind.to_string()).or_default().1 += 1;
                }
            }
        }
        for (k, v) in want {
            eprintln!("missed {k}: {v:?} in {:?}", s.text);
            counts.entry(k).or_default().2 += 1;
        }
    }
    println!("| kind | found | false positives | missed | precision | recall |");
    let mut ok = true;
    for (k, (tp, fp, fn_)) in &counts {
        let p = f64::from(*tp) / f64::from((tp + fp).max(1));
        let r = f64::from(*tp) / f64::from((tp + fn_).max(1));
        println!(
            "| {k} | {tp} | {fp} | {fn_} | {:.1}% | {:.1}% |",
            p * 100.0,
            r * 100.0
        );
        ok &= p >= 0.98 && r >= 0.98;
    }
    assert!(counts.len() >= 12, "every kind is exercised: {counts:?}");
    assert!(ok, "a detector is below 98% precision or recall");
}
