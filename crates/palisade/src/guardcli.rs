//! `palisade guard check` and `palisade guard eval`.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Instant;

use anyhow::Context;
use palisade_core::guard::{Guard, GuardScope, Pseudonyms};
use palisade_core::ids::TenantId;
use palisade_core::provider::{PromptMessage, Role};
use palisade_guard::PalisadeGuard;
use palisade_types::models::TrustZone;
use serde_json::json;

use crate::cli::{GuardCheckArgs, GuardEvalArgs};

/// Exit code of `guard check` when some zone blocks the text.
const BLOCKED_EXIT: i32 = 3;

pub fn check(guard: &PalisadeGuard, a: &GuardCheckArgs) -> anyhow::Result<()> {
    let text = match &a.text {
        Some(t) => t.clone(),
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            s
        }
    };
    let started = Instant::now();
    let scan = guard.scan(&text);
    let scan_us = started.elapsed().as_micros();
    let injection = scan.injection.as_ref().map(|h| {
        json!({"score": (h.score * 1000.0).round() / 1000.0, "kind": h.kind,
               "flagged": h.score >= guard.settings().injection_threshold})
    });
    let mut zones = serde_json::Map::new();
    let mut blocked_any = false;
    for (name, zone) in [
        ("internal", TrustZone::Internal),
        ("external", TrustZone::External),
    ] {
        let scope = GuardScope {
            tenant: TenantId::new(),
            zone,
            model: "check".into(),
        };
        let mut vault = Pseudonyms::default();
        let verdict = guard.check_input(
            &scope,
            vec![PromptMessage {
                role: Role::User,
                content: text.clone(),
            }],
            &mut vault,
        );
        blocked_any |= verdict.blocked.is_some();
        let findings: Vec<_> = verdict
            .findings
            .iter()
            .map(|f| {
                json!({"category": f.category, "kind": f.kind, "action": f.action.as_str(),
                            "score": (f.score * 1000.0).round() / 1000.0})
            })
            .collect();
        zones.insert(
            name.into(),
            json!({
                "decision": if verdict.blocked.is_some() { "block" } else { "allow" },
                "blocked_categories": verdict.blocked,
                "findings": findings,
                "sent_to_model": verdict.messages.first().map(|m| m.content.clone()),
            }),
        );
    }
    let out = json!({
        "injection": injection,
        "values": scan.values.iter().map(|v| json!({"category": v.category.as_str(), "kind": v.kind})).collect::<Vec<_>>(),
        "toxicity": scan.toxicity.iter().map(|t| json!({"category": t.category, "severity": t.severity})).collect::<Vec<_>>(),
        "zones": zones,
        "scan_microseconds": scan_us,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    if blocked_any {
        std::process::exit(BLOCKED_EXIT);
    }
    Ok(())
}

#[derive(Default, Clone, Copy)]
struct Rates {
    attacks: u64,
    detected: u64,
    benign: u64,
    flagged: u64,
}

impl Rates {
    fn add(&mut self, attack: bool, flagged: bool) {
        if attack {
            self.attacks += 1;
            self.detected += u64::from(flagged);
        } else {
            self.benign += 1;
            self.flagged += u64::from(flagged);
        }
    }
    fn json(&self) -> serde_json::Value {
        json!({
            "attacks": self.attacks, "detected": self.detected,
            "detection_rate": ratio(self.detected, self.attacks),
            "benign": self.benign, "false_positives": self.flagged,
            "false_positive_rate": ratio(self.flagged, self.benign),
        })
    }
    fn row(&self, name: &str) -> String {
        let pct = |a: u64, b: u64| match ratio(a, b) {
            Some(r) => format!("{:.1}%", r * 100.0),
            None => "-".into(),
        };
        format!(
            "| {name} | {} | {} | {} | {} |",
            self.attacks,
            pct(self.detected, self.attacks),
            self.benign,
            pct(self.flagged, self.benign)
        )
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    tp: u64,
    fp: u64,
    fn_: u64,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn eval(guard: &PalisadeGuard, a: &GuardEvalArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let threshold = guard.settings().injection_threshold;
    let mut overall = Rates::default();
    let mut hard = Rates::default();
    let mut by_source: BTreeMap<String, Rates> = BTreeMap::new();
    let mut by_category: BTreeMap<String, Rates> = BTreeMap::new();
    let mut values: BTreeMap<String, Counts> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut bytes = 0usize;
    let mut rows = 0usize;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", a.file.display(), i + 1))?;
        let Some(t) = v["text"].as_str() else {
            anyhow::bail!("{}:{}: no `text`", a.file.display(), i + 1);
        };
        rows += 1;
        bytes += t.len();
        let started = Instant::now();
        let scan = guard.scan(t);
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        if let Some(expected) = v["values"].as_array() {
            // Value detectors: expected kinds against found kinds.
            let mut want: Vec<String> = expected
                .iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect();
            for hit in &scan.values {
                let k = hit.kind.to_string();
                if let Some(pos) = want.iter().position(|w| *w == k) {
                    want.remove(pos);
                    values.entry(k).or_default().tp += 1;
                } else {
                    values.entry(k).or_default().fp += 1;
                }
            }
            for k in want {
                values.entry(k).or_default().fn_ += 1;
            }
            continue;
        }
        let attack = match v["label"].as_str() {
            Some("injection") => true,
            Some("benign") => false,
            _ => anyhow::bail!(
                "{}:{}: `label` must be injection or benign (or give `values`)",
                a.file.display(),
                i + 1
            ),
        };
        let flagged = scan
            .injection
            .as_ref()
            .is_some_and(|h| h.score >= threshold);
        overall.add(attack, flagged);
        let source = v["source"].as_str().unwrap_or("(none)").to_string();
        by_source.entry(source).or_default().add(attack, flagged);
        if let Some(c) = v["category"].as_str() {
            by_category
                .entry(c.to_string())
                .or_default()
                .add(attack, flagged);
        }
        if v["hard_negative"].as_bool() == Some(true) {
            hard.add(false, flagged);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let total_ms: f64 = latencies.iter().sum();
    let lat = json!({
        "p50_ms": percentile(&latencies, 0.5), "p95_ms": percentile(&latencies, 0.95),
        "p99_ms": percentile(&latencies, 0.99), "max_ms": latencies.last().copied().unwrap_or(0.0),
        "mb_per_s": if total_ms > 0.0 { bytes as f64 / 1e6 / (total_ms / 1000.0) } else { 0.0 },
    });
    let value_json: BTreeMap<String, serde_json::Value> = values
        .iter()
        .map(|(k, c)| {
            (
                k.clone(),
                json!({"true_positives": c.tp, "false_positives": c.fp, "false_negatives": c.fn_,
                       "precision": ratio(c.tp, c.tp + c.fp), "recall": ratio(c.tp, c.tp + c.fn_)}),
            )
        })
        .collect();
    if a.json {
        let report = json!({
            "rows": rows, "threshold": threshold,
            "injection": overall.json(), "hard_negatives": hard.json(),
            "by_source": by_source.iter().map(|(k, r)| (k.clone(), r.json())).collect::<BTreeMap<_, _>>(),
            "by_category": by_category.iter().map(|(k, r)| (k.clone(), r.json())).collect::<BTreeMap<_, _>>(),
            "values": value_json,
            "latency": lat,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{rows} rows from {}, injection threshold {threshold}\n",
        a.file.display()
    );
    if overall.attacks + overall.benign > 0 {
        println!("| rows | attacks | detection rate | benign | false-positive rate |");
        println!("|---|---:|---:|---:|---:|");
        println!("{}", overall.row("all"));
        if hard.benign > 0 {
            println!("{}", hard.row("hard negatives"));
        }
        for (k, r) in &by_source {
            println!("{}", r.row(&format!("source {k}")));
        }
        for (k, r) in &by_category {
            println!("{}", r.row(&format!("category {k}")));
        }
        println!();
    }
    if !values.is_empty() {
        println!("| value kind | found | false positives | missed | precision | recall |");
        println!("|---|---:|---:|---:|---:|---:|");
        let pct = |r: Option<f64>| r.map_or("-".into(), |r| format!("{:.1}%", r * 100.0));
        for (k, c) in &values {
            println!(
                "| {k} | {} | {} | {} | {} | {} |",
                c.tp,
                c.fp,
                c.fn_,
                pct(ratio(c.tp, c.tp + c.fp)),
                pct(ratio(c.tp, c.tp + c.fn_))
            );
        }
        println!();
    }
    println!(
        "latency per text (full scan): p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms; {:.1} MB/s",
        lat["p50_ms"].as_f64().unwrap_or(0.0),
        lat["p95_ms"].as_f64().unwrap_or(0.0),
        lat["p99_ms"].as_f64().unwrap_or(0.0),
        lat["mb_per_s"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}
