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

/// Serves a renewed certificate without a restart: on SIGHUP, and when the files' modification
/// times change (checked every `every`). Connections already open keep their session; new
/// handshakes get the new certificate. A pair that does not load (half-written, mismatched)
/// is logged and the old one kept.
pub fn spawn_reload(
    config: axum_server::tls_rustls::RustlsConfig,
    files: &TlsFiles,
    every: std::time::Duration,
) {
    let (cert, key) = (files.cert.clone(), files.key.clone());
    let stamp = move || {
        let m = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        (m(&cert), m(&key))
    };
    let (cert, key) = (files.cert.clone(), files.key.clone());
    tokio::spawn(async move {
        let mut seen = stamp();
        let mut tick = tokio::time::interval(every);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<()>();
            let why = tokio::select! {
                _ = tick.tick() => "changed on disk",
                () = signalled => "SIGHUP",
            };
            let now = stamp();
            if why != "SIGHUP" && now == seen {
                continue;
            }
            seen = now;
            match config.reload_from_pem_file(&cert, &key).await {
                Ok(()) => tracing::info!(cert = %cert.display(), why, "TLS certificate reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    cert = %cert.display(),
                    "TLS certificate not reloaded; the previous one stays in use"
                ),
            }
        }
    });
}
