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
use palisade_store::Store;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde_json::{json, Value};

use crate::cli::{AuditCheckpointArgs, AuditExportArgs, AuditVerifyArgs};

/// The audit key of `cfg`, created in the data dir if there is none yet.
pub fn load_key(cfg: &Config) -> anyhow::Result<AuditKey> {
    if let Some(reference) = &cfg.audit.key {
        let hex = palisade_config::resolve_secret("audit.key", reference)?;
        return AuditKey::from_hex(&hex)
            .ok_or_else(|| anyhow::anyhow!("configuration `audit.key`: not 64 hex digits"));
    }
    load_or_create(&cfg.data_dir.join("audit.key"))
}

/// Creates a file holding one secret line, readable by its owner only, flushed to disk; never
/// over an existing file (a key is never silently replaced).
pub fn create_secret_file(path: &Path, line: &str) -> anyhow::Result<()> {
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
    writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn load_or_create(path: &Path) -> anyhow::Result<AuditKey> {
    match std::fs::read_to_string(path) {
        Ok(s) => AuditKey::from_hex(&s)
            .ok_or_else(|| anyhow::anyhow!("{}: not an audit key (64 hex digits)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = AuditKey::generate();
            create_secret_file(path, &key.to_hex())?;
            tracing::info!(path = %path.display(), "audit key created");
            Ok(key)
        }
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

/// `palisade audit verify`: 0 when every chain is whole (and every checkpoint given holds), 1
/// when one is broken.
pub async fn verify(a: AuditVerifyArgs) -> anyhow::Result<i32> {
    let cfg = crate::app::load_config(&a.common, None)?;
    let key = load_key(&cfg)?;
    let store = open(&cfg).await?;
    let report = store
        .verify_audit(&key)
        .await
        .map_err(|e| anyhow::anyhow!("reading the audit trail: {e}"))?;
    let mut checkpoints = Vec::new();
    for path in &a.checkpoint {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let outcome = match serde_json::from_str::<Value>(&text) {
            Ok(cp) => check_checkpoint(&store, &cp, a.public_key.as_deref()).await,
            Err(e) => Err(format!("not JSON: {e}")),
        };
        checkpoints.push((path.display().to_string(), outcome));
    }
    let intact = report.broken.is_none() && checkpoints.iter().all(|(_, o)| o.is_ok());
    if a.json {
        println!(
            "{}",
            json!({
                "intact": intact,
                "events": report.links,
                "chains": report.chains,
                "unchained": report.unchained,
                "broken": report.broken.as_ref().map(|b| json!({
                    "chain": b.chain,
                    "event": b.chain_seq,
                    "reason": b.reason,
                })),
                "checkpoints": checkpoints.iter().map(|(file, o)| json!({
                    "file": file,
                    "holds": o.is_ok(),
                    "problem": o.as_ref().err(),
                })).collect::<Vec<_>>(),
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
        for (file, o) in &checkpoints {
            match o {
                Ok(()) => println!("checkpoint {file}: holds"),
                Err(e) => println!("CHECKPOINT {file} DOES NOT HOLD: {e}"),
            }
        }
    }
    Ok(if intact { 0 } else { 1 })
}

/// The Ed25519 key that signs checkpoints: `audit-signing.pk8` in the data dir (PKCS#8,
/// created at first use, owner-only).
fn signing_key(cfg: &Config) -> anyhow::Result<Ed25519KeyPair> {
    let path = cfg.data_dir.join("audit-signing.pk8");
    let pkcs8 = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| anyhow::anyhow!("generating the checkpoint signing key failed"))?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            opts.open(&path)
                .and_then(|mut f| f.write_all(doc.as_ref()))
                .with_context(|| format!("writing {}", path.display()))?;
            doc.as_ref().to_vec()
        }
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    };
    Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| anyhow::anyhow!("{}: not an Ed25519 PKCS#8 key", path.display()))
}

/// What a checkpoint signs: its format, time, key and the head of every chain.
fn signed_part(v: &Value) -> Value {
    json!({
        "format": v["format"],
        "created_at": v["created_at"],
        "public_key": v["public_key"],
        "chains": v["chains"],
    })
}

const CHECKPOINT_FORMAT: &str = "palisade-audit-checkpoint/1";

/// A signed checkpoint of every chain's head, after checking the whole trail (a broken trail is
/// never signed).
pub async fn checkpoint(cfg: &Config, store: &Store) -> anyhow::Result<Value> {
    let key = load_key(cfg)?;
    let report = store
        .verify_audit(&key)
        .await
        .map_err(|e| anyhow::anyhow!("reading the audit trail: {e}"))?;
    if let Some(b) = report.broken {
        anyhow::bail!("the audit trail is broken, refusing to sign it: {b}");
    }
    let signer = signing_key(cfg)?;
    let heads = store
        .audit_heads()
        .await
        .map_err(|e| anyhow::anyhow!("reading the audit trail: {e}"))?;
    let chains: Vec<Value> = heads
        .into_iter()
        .map(|(chain, events, head)| json!({"chain": chain, "events": events, "head": head}))
        .collect();
    let mut cp = json!({
        "format": CHECKPOINT_FORMAT,
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "public_key": hex::encode(signer.public_key().as_ref()),
        "chains": chains,
    });
    let sig = signer.sign(signed_part(&cp).to_string().as_bytes());
    cp["signature"] = Value::String(hex::encode(sig.as_ref()));
    Ok(cp)
}

/// Checks a checkpoint against the trail: its signature (by `pinned`, when given), and that
/// every chain it names still reaches its head with the same hash (nothing removed from the
/// end, nothing rewritten before it).
async fn check_checkpoint(store: &Store, cp: &Value, pinned: Option<&str>) -> Result<(), String> {
    if cp["format"] != CHECKPOINT_FORMAT {
        return Err("not a Palisade audit checkpoint".into());
    }
    let public = cp["public_key"].as_str().unwrap_or_default();
    if let Some(p) = pinned {
        if !p.eq_ignore_ascii_case(public) {
            return Err("signed by another key than the one given with --public-key".into());
        }
    }
    let (Ok(pk), Ok(sig)) = (
        hex::decode(public),
        hex::decode(cp["signature"].as_str().unwrap_or_default()),
    ) else {
        return Err("its key or signature is not hex".into());
    };
    UnparsedPublicKey::new(&ED25519, pk)
        .verify(signed_part(cp).to_string().as_bytes(), &sig)
        .map_err(|_| "its signature does not match its content (the checkpoint was altered)")?;
    for c in cp["chains"].as_array().into_iter().flatten() {
        let chain = c["chain"].as_str().unwrap_or_default();
        let events = c["events"].as_i64().unwrap_or(0);
        match store.audit_link(chain, events).await {
            Ok(Some(link)) if c["head"] == link.hash.as_str() => {}
            Ok(Some(_)) => {
                return Err(format!(
                    "chain {chain}: event #{events} is not the one the checkpoint signed"
                ))
            }
            Ok(None) => {
                return Err(format!(
                    "chain {chain} is shorter than the checkpoint's {events} events (events \
                     were removed from its end)"
                ))
            }
            Err(e) => return Err(format!("reading the audit trail: {e}")),
        }
    }
    Ok(())
}

/// Writes a checkpoint into `audit-checkpoints/` of the data dir every `every` (the server's
/// background task); a failure is logged and tried again next time.
pub fn spawn_checkpoints(cfg: Config, store: Store, every: std::time::Duration) {
    tokio::spawn(async move {
        let dir = cfg.data_dir.join("audit-checkpoints");
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let written = async {
                let cp = checkpoint(&cfg, &store).await?;
                std::fs::create_dir_all(&dir)?;
                let name = chrono::Utc::now()
                    .format("%Y%m%dT%H%M%S%.3fZ.json")
                    .to_string();
                std::fs::write(dir.join(&name), format!("{cp:#}\n"))?;
                anyhow::Ok(name)
            }
            .await;
            match written {
                Ok(name) => tracing::info!(file = %name, "audit checkpoint written"),
                Err(e) => tracing::error!(error = %e, "writing an audit checkpoint failed"),
            }
        }
    });
}

/// `palisade audit checkpoint`: prints (or writes) a signed checkpoint.
pub async fn checkpoint_cmd(a: AuditCheckpointArgs) -> anyhow::Result<i32> {
    let cfg = crate::app::load_config(&a.common, None)?;
    let store = open(&cfg).await?;
    let cp = checkpoint(&cfg, &store).await?;
    match &a.out {
        Some(path) => {
            std::fs::write(path, format!("{cp:#}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            println!(
                "checkpoint of {} chains written to {}; keep it apart from the server",
                cp["chains"].as_array().map_or(0, Vec::len),
                path.display()
            );
        }
        None => println!("{cp:#}"),
    }
    Ok(0)
}

/// `palisade audit export --since`: JSON lines of every event since a day or instant, in the
/// order they were written, for a SIEM.
pub async fn export_cmd(a: AuditExportArgs) -> anyhow::Result<i32> {
    let cfg = crate::app::load_config(&a.common, None)?;
    let since = parse_since(&a.since)?;
    let store = open(&cfg).await?;
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let (mut after, mut n) = (0i64, 0u64);
    loop {
        let page = store
            .audit_export(since, after, 1000)
            .await
            .map_err(|e| anyhow::anyhow!("reading the audit trail: {e}"))?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (_, link) in &page {
            writeln!(out, "{}", crate::audit_sink::export_line(link))?;
            n += 1;
        }
    }
    out.flush()?;
    if a.out.is_some() {
        println!("{n} events exported");
    }
    Ok(0)
}

/// `YYYY-MM-DD` (UTC midnight) or an RFC 3339 instant, as milliseconds.
fn parse_since(s: &str) -> anyhow::Result<i64> {
    palisade_core::entities::parse_instant(s)
        .ok_or_else(|| anyhow::anyhow!("--since {s}: write YYYY-MM-DD or an RFC 3339 time"))
}

async fn open(cfg: &Config) -> anyhow::Result<Store> {
    crate::app::open_store(cfg, false, false).await
}
