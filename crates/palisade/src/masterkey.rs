//! The master key of encryption at rest (`[crypto] master_key`, default `master.key` in the
//! data dir) and the `palisade keys rotate-master | shred | status` verbs.
//!
//! The store seals content with per-tenant data keys and keeps them only wrapped by this key
//! (palisade-store `crypto`). During a rotation the previous key stays beside the current one
//! as `<file>.previous`, so servers that still hold data keys wrapped by it keep working; the
//! store asks [`load`]'s source again whenever a row names a key it does not hold.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use palisade_config::Config;
use palisade_core::identity::{SecurityEvent, SecurityEventKind};
use palisade_core::ports::SecurityEventSink;
use palisade_store::{MasterKey, MasterSource, Store};

use crate::cli::{KeysRotateArgs, KeysShredArgs};

/// Where the master key lives.
#[derive(Debug, Clone)]
enum Source {
    /// A file: the data dir's `master.key` or `file::PATH` from the configuration.
    File(PathBuf),
    /// `env::NAME`.
    Env(String),
}

fn source(cfg: &Config) -> Source {
    match &cfg.crypto.master_key {
        Some(r) => match r.strip_prefix("file::") {
            Some(path) => Source::File(PathBuf::from(path)),
            None => Source::Env(r.clone()),
        },
        None => Source::File(cfg.data_dir.join("master.key")),
    }
}

fn previous_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".previous");
    PathBuf::from(p)
}

fn parse(text: &str, what: &str) -> Result<MasterKey, String> {
    MasterKey::from_hex(text).ok_or_else(|| format!("{what}: not a master key (64 hex digits)"))
}

/// The current key (created in the data dir when `create` and missing), then the previous
/// one while a rotation is settling.
fn read_keys(src: &Source, create: bool) -> Result<Vec<MasterKey>, String> {
    match src {
        Source::Env(reference) => {
            let hex = palisade_config::resolve_secret("crypto.master_key", reference)
                .map_err(|e| e.to_string())?;
            Ok(vec![parse(&hex, "crypto.master_key")?])
        }
        Source::File(path) => {
            let shown = path.display().to_string();
            let current = match std::fs::read_to_string(path) {
                Ok(text) => parse(&text, &shown)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                    let key = MasterKey::generate().map_err(|e| e.to_string())?;
                    write_private(path, &key).map_err(|e| format!("{e:#}"))?;
                    tracing::info!(path = %shown, "master key created");
                    key
                }
                Err(e) => return Err(format!("reading {shown}: {e}")),
            };
            let mut keys = vec![current];
            let prev = previous_of(path);
            if let Ok(text) = std::fs::read_to_string(&prev) {
                keys.push(parse(&text, &prev.display().to_string())?);
            }
            Ok(keys)
        }
    }
}

/// Writes a key file readable by its owner only (never over an existing file).
fn write_private(path: &Path, key: &MasterKey) -> anyhow::Result<()> {
    crate::audit::create_secret_file(path, &key.to_hex())
}

/// The master keys for the store, and how to read them again.
pub fn load(cfg: &Config) -> anyhow::Result<(Vec<MasterKey>, MasterSource)> {
    let src = source(cfg);
    let keys = read_keys(&src, true).map_err(|e| anyhow::anyhow!("master key: {e}"))?;
    let again: MasterSource = Arc::new(move || read_keys(&src, false));
    Ok((keys, again))
}

/// The database of the data dir, opened with the master keys (no server needed).
async fn open(cfg: &Config) -> anyhow::Result<Store> {
    let (keys, again) = load(cfg)?;
    let store = crate::app::open_store(cfg, false, false)
        .await?
        .with_audit_key(crate::audit::load_key(cfg)?)
        .with_master_keys(keys, Some(again));
    Ok(store)
}

/// `palisade keys rotate-master`.
pub async fn rotate(a: KeysRotateArgs) -> anyhow::Result<()> {
    let cfg = crate::app::load_config(&a.common, None)?;
    let Source::File(path) = source(&cfg) else {
        anyhow::bail!(
            "the master key comes from the environment (`crypto.master_key`); rotate it by \
             moving it to a file (`crypto.master_key = \"file::PATH\"`) first"
        );
    };
    let prev = previous_of(&path);
    anyhow::ensure!(
        !prev.exists(),
        "{} still holds the key of the last rotation: once every server has restarted, remove \
         it, then rotate again",
        prev.display()
    );
    let store = open(&cfg).await?;
    let old = read_keys(&Source::File(path.clone()), false)
        .map_err(|e| anyhow::anyhow!("master key: {e}"))?
        .remove(0);
    let new = MasterKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    // The new key goes beside the old one first; the swap is two renames.
    let mut next = path.as_os_str().to_owned();
    next.push(".next");
    let next = PathBuf::from(next);
    let _ = std::fs::remove_file(&next);
    write_private(&next, &new)?;
    std::fs::rename(&path, &prev)
        .with_context(|| format!("moving {} to {}", path.display(), prev.display()))?;
    std::fs::rename(&next, &path)
        .with_context(|| format!("moving {} to {}", next.display(), path.display()))?;
    // The store now reads [new, old] from the files; re-wrap until no key is left under the
    // old one (a running server may have made a data key with it meanwhile).
    let store = store.with_master_keys(vec![new.clone(), old.clone()], None);
    let mut total = 0;
    for _ in 0..5 {
        let n = store
            .rewrap_tenant_keys(&new)
            .await
            .map_err(|e| anyhow::anyhow!("re-wrapping data keys: {e}"))?;
        total += n;
        if n == 0 {
            break;
        }
    }
    let event = SecurityEvent::new(SecurityEventKind::MasterKeyRotated).detail(serde_json::json!({
        "from": old.id(),
        "to": new.id(),
        "rewrapped": total,
        "by": "cli",
    }));
    if let Err(e) = store.record(event).await {
        eprintln!("warning: the rotation could not be recorded in the audit trail: {e}");
    }
    println!(
        "master key rotated: {} -> {}; {total} data keys re-wrapped.\n\
         The previous key is kept in {} so running servers keep working; remove it once every \
         server has restarted (`palisade keys status` shows no key wrapped by it).",
        old.id(),
        new.id(),
        prev.display()
    );
    Ok(())
}

/// `palisade keys shred --tenant ID --yes`.
pub async fn shred(a: KeysShredArgs) -> anyhow::Result<()> {
    let cfg = crate::app::load_config(&a.common, None)?;
    let tenant: palisade_core::ids::TenantId = a
        .tenant
        .parse()
        .map_err(|_| anyhow::anyhow!("--tenant {}: not a tenant id", a.tenant))?;
    anyhow::ensure!(
        a.yes,
        "this destroys tenant {tenant}'s data keys: its conversations can never be read again. \
         Add --yes to do it"
    );
    let store = open(&cfg).await?;
    let n = store
        .shred_tenant_keys(&tenant.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("shredding: {e}"))?;
    let mut event = SecurityEvent::new(SecurityEventKind::TenantKeyShredded)
        .detail(serde_json::json!({ "keys": n, "by": "cli" }));
    event.tenant_id = Some(tenant);
    store
        .record(event)
        .await
        .map_err(|e| anyhow::anyhow!("the shredding is done but could not be audited: {e}"))?;
    println!(
        "tenant {tenant}: {n} data keys destroyed; what they encrypted can no longer be read. \
         Running servers stop using them within 30 seconds."
    );
    Ok(())
}

/// `palisade keys status`.
pub async fn status(a: KeysRotateArgs) -> anyhow::Result<()> {
    let cfg = crate::app::load_config(&a.common, None)?;
    let store = open(&cfg).await?;
    let keys = read_keys(&source(&cfg), false).map_err(|e| anyhow::anyhow!("master key: {e}"))?;
    let (by_master, shredded) = store
        .tenant_key_summary()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("master key: {}", keys[0].id());
    if let Some(prev) = keys.get(1) {
        println!("previous master key (rotation settling): {}", prev.id());
    }
    for (id, n) in &by_master {
        let note = if *id == keys[0].id() {
            ""
        } else if keys.iter().any(|k| k.id() == *id) {
            " (previous key)"
        } else {
            " (UNKNOWN key: not configured)"
        };
        println!("  {n} data keys wrapped by {id}{note}");
    }
    println!("  {shredded} data keys shredded");
    Ok(())
}
