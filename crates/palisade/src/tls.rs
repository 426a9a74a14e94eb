//! TLS material: the configured certificate, or a self-signed one for loopback generated into
//! the data dir on first start.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_auth::jwt::write_private;
use palisade_http::auth::PeerCertificate;

/// Certificate and key paths to serve with.
#[derive(Clone)]
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

/// The listener's TLS settings: TLS 1.2 and 1.3 with rustls' modern suites, HTTP/2 and
/// HTTP/1.1 by ALPN, and, with `client_ca`, client certificates required from those CAs.
pub fn server_config(
    files: &TlsFiles,
    client_ca: Option<&Path>,
) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .with_context(|| format!("reading {}", files.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading {}", files.key.display()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("reading {}", ca.display()))?
            {
                roots
                    .add(c.with_context(|| format!("reading {}", ca.display()))?)
                    .with_context(|| format!("a certificate of {}", ca.display()))?;
            }
            anyhow::ensure!(!roots.is_empty(), "{} holds no certificate", ca.display());
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                provider,
            )
            .build()
            .context("the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .context("the certificate and its key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(cfg))
}

/// Serves a renewed certificate without a restart: on SIGHUP, and when the files' modification
/// times change (checked every `every`). Connections already open keep their session; new
/// handshakes get the new certificate. A pair that does not load (half-written, mismatched)
/// is logged and the old one kept.
pub fn spawn_reload(
    config: axum_server::tls_rustls::RustlsConfig,
    files: &TlsFiles,
    client_ca: Option<PathBuf>,
    every: std::time::Duration,
) {
    let files = files.clone();
    let stamp = move |files: &TlsFiles, ca: Option<&Path>| {
        let m = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        [Some(files.cert.as_path()), Some(files.key.as_path()), ca].map(|p| p.and_then(m))
    };
    tokio::spawn(async move {
        let mut seen = stamp(&files, client_ca.as_deref());
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
            let now = stamp(&files, client_ca.as_deref());
            if why != "SIGHUP" && now == seen {
                continue;
            }
            seen = now;
            match server_config(&files, client_ca.as_deref()) {
                Ok(c) => {
                    config.reload_from_config(c);
                    tracing::info!(cert = %files.cert.display(), why, "TLS certificate reloaded");
                }
                Err(e) => tracing::error!(
                    error = %e,
                    cert = %files.cert.display(),
                    "TLS certificate not reloaded; the previous one stays in use"
                ),
            }
        }
    });
}

/// Wraps the TLS acceptor: after the handshake, the subject common name of the client's
/// verified certificate (mutual TLS) goes into every request of the connection as a
/// [`PeerCertificate`], for `tls.client_accounts`. Without a client certificate nothing is
/// added.
#[derive(Clone)]
pub struct PeerIdentityAcceptor<A> {
    inner: A,
}

impl<A> PeerIdentityAcceptor<A> {
    pub fn new(inner: A) -> Self {
        Self { inner }
    }
}

impl<I, S, A, T> axum_server::accept::Accept<I, S> for PeerIdentityAcceptor<A>
where
    A: axum_server::accept::Accept<I, S, Stream = tokio_rustls::server::TlsStream<T>>
        + Clone
        + Send
        + Sync
        + 'static,
    A::Future: Send + 'static,
    A::Service: Send + 'static,
    I: Send + 'static,
    S: Send + 'static,
    T: Send + 'static,
{
    type Stream = tokio_rustls::server::TlsStream<T>;
    type Service = axum::middleware::AddExtension<A::Service, PeerCertificate>;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::io::Result<(Self::Stream, Self::Service)>> + Send,
        >,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let inner = self.inner.accept(stream, service);
        Box::pin(async move {
            let (tls, service) = inner.await?;
            let common_name = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| common_name(leaf.as_ref()));
            let service =
                tower::Layer::layer(&axum::Extension(PeerCertificate { common_name }), service);
            Ok((tls, service))
        })
    }
}

/// The first subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}
