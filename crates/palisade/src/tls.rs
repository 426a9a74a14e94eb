//! TLS material: the configured certificate, or a self-signed one for loopback generated into
//! the data dir on first start.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_auth::jwt::write_private;

/// Certificate and key paths to serve with.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub self_signed: bool,
}

/// Returns the configured files, or creates `DIR/tls/{cert,key}.pem` for localhost.
pub fn ensure(
    data_dir: &Path,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<TlsFiles> {
    if let (Some(c), Some(k)) = (cert, key) {
        for p in [c, k] {
            anyhow::ensure!(p.is_file(), "TLS file {} not found", p.display());
        }
        return Ok(TlsFiles {
            cert: c.into(),
            key: k.into(),
            self_signed: false,
        });
    }
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if !(cert.is_file() && key.is_file()) {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        let ck = rcgen::generate_simple_self_signed(names)
            .context("generating the self-signed certificate")?;
        let _ = fs::remove_file(&key);
        write_private(&key, ck.key_pair.serialize_pem().as_bytes())?;
        fs::write(&cert, ck.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    }
    Ok(TlsFiles {
        cert,
        key,
        self_signed: true,
    })
}
