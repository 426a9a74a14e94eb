//! The audit key and `palisade audit verify`.
//!
//! The key that chains the audit trail comes from `audit.key` (a reference, `env::NAME` or
//! `file::PATH`, to 64 hex digits) or, by default, from `audit.key` in the data dir, generated
//! at the first start and readable by its owner only. Whoever holds it can forge events: keep
//! a copy of it apart from the database, and give it to the auditors who verify.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use palisade_config::Config;
use palisade_core::audit::AuditKey;

use crate::cli::AuditVerifyArgs;

/// The audit key of `cfg`, created in the data dir if there is none yet.
pub fn load_key(cfg: &Config) -> anyhow::Result<AuditKey> {
    if let Some(reference) = &cfg.audit.key {
        let hex = palisade_config::resolve_secret("audit.key", reference)?;
        return AuditKey::from_hex(&hex)
            .ok_or_else(|| anyhow::anyhow!("configuration `audit.key`: not 64 hex digits"));
    }
    load_or_create(&cfg.data_dir.join("audit.key"))
}

fn load_or_create(path: &Path) -> anyhow::Result<AuditKey> {
    match std::fs::read_to_string(path) {
        Ok(s) => AuditKey::from_hex(&s)
            .ok_or_else(|| anyhow::anyhow!("{}: not an audit key (64 hex digits)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = AuditKey::generate();
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(f, "{}", key.to_hex())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "audit key created");
            Ok(key)
        }
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// `palisade audit verify`: 0 when every chain is whole, 1 when one is broken.
pub async fn verify(a: AuditVerifyArgs) -> anyhow::Result<i32> {
    let cfg = crate::app::load_config(&a.common, None)?;
    let db = cfg.data_dir.join("palisade.db");
    anyhow::ensure!(
        db.exists(),
        "no database at {} (give --data-dir or --config)",
        db.display()
    );
    let key = load_key(&cfg)?;
    let store = palisade_store::Store::open_sqlite(&db)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", db.display()))?;
    let report = store
        .verify_audit(&key)
        .await
        .map_err(|e| anyhow::anyhow!("reading the audit trail: {e}"))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "intact": report.broken.is_none(),
                "events": report.links,
                "chains": report.chains,
                "unchained": report.unchained,
                "broken": report.broken.as_ref().map(|b| serde_json::json!({
                    "chain": b.chain,
                    "event": b.chain_seq,
                    "reason": b.reason,
                })),
            })
        );
    } else {
        match &report.broken {
            None => println!(
                "audit trail intact: {} events in {} chains",
                report.links, report.chains
            ),
            Some(b) => println!(
                "AUDIT TRAIL BROKEN: {b} ({} events before it are intact)",
                report.links
            ),
        }
        if report.unchained > 0 {
            println!(
                "{} events were written before the trail was chained and are not covered",
                report.unchained
            );
        }
    }
    Ok(if report.broken.is_none() { 0 } else { 1 })
}
