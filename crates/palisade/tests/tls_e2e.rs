//! Black-box: the listener's certificate is renewed without a restart. A keep-alive connection
//! opened under the old certificate goes on working; new handshakes get the new one, after a
//! SIGHUP or on their own once the files change. A broken pair keeps the old certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

type Conn = TlsStream<tokio::net::TcpStream>;

/// A fresh self-signed certificate for 127.0.0.1: (cert PEM, key PEM, cert DER).
fn cert() -> (String, String, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    (
        ck.cert.pem(),
        ck.key_pair.serialize_pem(),
        ck.cert.der().to_vec(),
    )
}

/// Writes the pair the way a renewal tool should: to temporary names, then renamed into place.
fn install(dir: &std::path::Path, cert_pem: &str, key_pem: &str) {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(tls.join("key.pem.new"), key_pem).unwrap();
    std::fs::write(tls.join("cert.pem.new"), cert_pem).unwrap();
    std::fs::rename(tls.join("key.pem.new"), tls.join("key.pem")).unwrap();
    std::fs::rename(tls.join("cert.pem.new"), tls.join("cert.pem")).unwrap();
}

async fn connect(base: &str, trusted: &[&[u8]]) -> Conn {
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
            .unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    common::tls_with(cfg, base.trim_start_matches("https://"))
        .await
        .unwrap()
}

fn served_cert(c: &Conn) -> Vec<u8> {
    c.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// One keep-alive `GET /healthz` on `c`: the status line.
async fn healthz(c: &mut Conn) -> String {
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the connection was closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if body.len() >= len {
                return head.lines().next().unwrap().to_string();
            }
        }
    }
}

/// Waits until new handshakes present `want`.
async fn wait_for_cert(base: &str, trusted: &[&[u8]], want: &[u8], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let c = connect(base, trusted).await;
        if served_cert(&c) == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (a_pem, a_key, a_der) = cert();
    install(dir.path(), &a_pem, &a_key);
    let s = Server::start_in(dir, &[]);
    let (b_pem, b_key, b_der) = cert();
    let (c_pem, c_key, c_der) = cert();
    let trusted: [&[u8]; 3] = [&a_der, &b_der, &c_der];

    let mut old = connect(&s.base, &trusted).await;
    assert_eq!(served_cert(&old), a_der);
    assert_eq!(healthz(&mut old).await, "HTTP/1.1 200 OK");

    // SIGHUP: at once.
    install(s.data_dir(), &b_pem, &b_key);
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let took = wait_for_cert(&s.base, &trusted, &b_der, Duration::from_secs(3)).await;
    eprintln!("new certificate served {took:?} after SIGHUP");
    // The connection made under the old certificate is still served.
    assert_eq!(healthz(&mut old).await, "HTTP/1.1 200 OK");
    assert_eq!(served_cert(&old), a_der);

    // A broken pair (a key that does not match) is refused; the current certificate stays.
    let tls = s.data_dir().join("tls");
    std::fs::write(tls.join("key.pem"), &c_key).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let c = connect(&s.base, &trusted).await;
    assert_eq!(served_cert(&c), b_der);
    assert!(
        s.log().contains("TLS certificate not reloaded"),
        "{}",
        s.log()
    );

    // Files changed on disk without a signal: picked up by the watcher.
    install(s.data_dir(), &c_pem, &c_key);
    let took = wait_for_cert(&s.base, &trusted, &c_der, Duration::from_secs(12)).await;
    eprintln!("new certificate served {took:?} after the files changed");
    assert_eq!(healthz(&mut old).await, "HTTP/1.1 200 OK");
}

/// A CA, a client certificate it signed, and one it did not.
struct Pki {
    ca_pem: String,
    client: (Vec<u8>, Vec<u8>),
    stranger: (Vec<u8>, Vec<u8>),
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Palisade test client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        (p, KeyPair::generate().unwrap())
    };
    let (p, k) = leaf("svc-reporting");
    let client = p.signed_by(&k, &ca_cert, &ca_key).unwrap();
    let (p, k2) = leaf("mallory");
    let stranger = p.self_signed(&k2).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        client: (client.der().to_vec(), k.serialize_der()),
        stranger: (stranger.der().to_vec(), k2.serialize_der()),
    }
}

/// A TLS 1.3 connection presenting `identity` (or none), then one request: the status line,
/// or the error that ended the exchange.
async fn try_with(
    s: &Server,
    identity: Option<&(Vec<u8>, Vec<u8>)>,
    path: &str,
) -> Result<String, String> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let builder = common::trusting(s);
    let cfg = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(cert.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
            )
            .unwrap(),
    };
    let mut c = common::tls_with(cfg, s.base.trim_start_matches("https://"))
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).to_string();
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_string)
        .ok_or_else(|| format!("no answer: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_of_the_configured_ca() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("clients-ca.pem");
    std::fs::write(&ca, &p.ca_pem).unwrap();
    let s = Server::start(&[("PALISADE_TLS__CLIENT_CA", ca.to_str().unwrap())]);
    assert!(
        s.stdout.iter().any(|l| l.contains("mTLS:")),
        "{:?}",
        s.stdout
    );
    assert_eq!(
        try_with(&s, Some(&p.client), "/healthz").await,
        Ok("HTTP/1.1 200 OK".to_string())
    );
    let without = try_with(&s, None, "/healthz").await;
    assert!(without.is_err(), "no certificate: {without:?}");
    let stranger = try_with(&s, Some(&p.stranger), "/healthz").await;
    assert!(
        stranger.is_err(),
        "a certificate of another CA: {stranger:?}"
    );
    // The application's own authentication still applies behind mTLS.
    assert_eq!(
        try_with(&s, Some(&p.client), "/api/auth/me").await,
        Ok("HTTP/1.1 401 Unauthorized".to_string())
    );
}
