//! Keeps the crate boundaries of DESIGN.md section 2: reads `cargo metadata` and fails when a
//! crate depends on something its layer may not see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

#[test]
fn crates_depend_only_inwards() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_string();
        let ds = p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null()) // normal dependencies only
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        deps.insert(name, ds);
    }
    let adapters = [
        "palisade-store",
        "palisade-llama",
        "palisade-llm",
        "palisade-guard",
        "palisade-auth",
        "palisade-config",
        "palisade-limits",
    ];
    let mut bad = Vec::new();
    for (name, ds) in &deps {
        let inner: Vec<&String> = ds.iter().filter(|d| d.starts_with("palisade-")).collect();
        if name == "palisade-types" && !inner.is_empty() {
            bad.push(format!("palisade-types depends on {inner:?}"));
        }
        if name == "palisade-core" && inner.iter().any(|d| *d != "palisade-types") {
            bad.push(format!("palisade-core depends on {inner:?}"));
        }
        if name == "palisade-http" && adapters.iter().any(|a| ds.contains(*a)) {
            bad.push(format!("palisade-http depends on an adapter: {inner:?}"));
        }
        // Adapters stand side by side: none reaches into another.
        if adapters.contains(&name.as_str()) {
            let cross: Vec<&&str> = adapters
                .iter()
                .filter(|a| **a != name && ds.contains(**a))
                .collect();
            if !cross.is_empty() {
                bad.push(format!("adapter {name} depends on adapters {cross:?}"));
            }
        }
        if name != "palisade-store" && ds.contains("sqlx") {
            bad.push(format!("{name} names sqlx"));
        }
        if name != "palisade-http" && name != "palisade" && ds.contains("axum") {
            bad.push(format!("{name} names axum"));
        }
        for t in ["tokio", "axum", "sqlx"] {
            if name == "palisade-types" && ds.contains(t) {
                bad.push(format!("palisade-types names {t}"));
            }
        }
    }
    assert!(deps.contains_key("palisade-http"), "workspace not found");
    assert!(bad.is_empty(), "dependency direction broken: {bad:#?}");
}
