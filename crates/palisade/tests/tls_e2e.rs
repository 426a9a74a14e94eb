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
    /// The same client certificate and key, as PEM.
    client_pem: (String, String),
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
        client_pem: (client.pem(), k.serialize_pem()),
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

/// Issue 10's remote engine node: node A serves its embedded model only to callers holding a
/// certificate of the nodes' CA (mTLS) and an API key; gateway B uses it as an `openai`
/// upstream that trusts A's certificate (`tls.ca_cert`, public roots off) and presents its own
/// (`tls.client_cert` + `tls.client_key` by reference). Without the client certificate, or
/// without trusting A, B answers a clean error that names no file, address or key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_uses_a_remote_engine_node_over_mutual_tls() {
    use reqwest::StatusCode;
    use serde_json::{json, Value};

    let p = pki();
    let files = tempfile::tempdir().unwrap();
    let put = |name: &str, content: &str| {
        let f = files.path().join(name);
        std::fs::write(&f, content).unwrap();
        f.to_str().unwrap().to_string()
    };
    let ca = put("nodes-ca.pem", &p.ca_pem);
    let gw_cert = put("gateway.pem", &p.client_pem.0);
    let gw_key = put("gateway.key", &p.client_pem.1);

    // Node A: mTLS on its listener; the test talks to it with the gateway's identity.
    // Only gateways reach it, and they guard input and output: its own guard would judge the
    // gateway's hardened system prompt (delimiters, an instruction hierarchy) as an injection.
    let mut node = Server::start(&[
        ("PALISADE_TLS__CLIENT_CA", ca.as_str()),
        ("PALISADE_GUARD__ENABLED", "false"),
    ]);
    let node_cert_path = node.dir.path().join("tls/cert.pem");
    let node_cert = std::fs::read(&node_cert_path).unwrap();
    let identity = format!("{}\n{}", p.client_pem.0, p.client_pem.1);
    node.client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&node_cert).unwrap())
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let node_admin = node.admin_token().await;
    let r = node
        .post(
            &node_admin,
            "/api/auth/api-keys",
            // The gateway sends its own (hardened) system prompt: the key needs that scope.
            json!({"name": "gateway-b", "expires_in_days": 30,
                   "scopes": ["chat:send", "chat:system_prompt", "model:*:use"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let node_key = created["api_key"].as_str().unwrap().to_string();
    let key_file = put("node-a.apikey", &node_key);

    // Gateway B: the node's model in its registry, three ways.
    let gw = Server::start(&[]);
    let admin = gw.admin_token().await;
    let spec = |tls: Value| {
        json!({
            "provider": "openai",
            "base_url": format!("{}/v1", node.base),
            "upstream_model": "smollm2-135m",
            "api_key": format!("file::{key_file}"),
            "tls": tls,
            "max_retries": 0,
            "description": "node A's embedded model",
        })
    };
    let node_ca = node_cert_path.to_str().unwrap();
    for (name, tls) in [
        (
            "node-a",
            json!({"ca_cert": node_ca, "ca_only": true, "client_cert": &gw_cert, "client_key": format!("file::{gw_key}")}),
        ),
        (
            "node-a-no-cert",
            json!({"ca_cert": node_ca, "ca_only": true}),
        ),
        ("node-a-untrusted", json!({})),
    ] {
        let r = gw
            .client
            .put(gw.url(&format!("/api/admin/models/{name}")))
            .bearer_auth(&admin)
            .json(&spec(tls))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{name}: {}",
            r.text().await.unwrap()
        );
    }
    // An inline client key is refused and not echoed.
    let r = gw
        .client
        .put(gw.url("/api/admin/models/node-a-inline"))
        .bearer_auth(&admin)
        .json(&spec(
            json!({"client_cert": &gw_cert, "client_key": &p.client_pem.1}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!r.text().await.unwrap().contains("PRIVATE KEY"));

    // Through B to A's engine: a real answer.
    let r = gw
        .post(
            &admin,
            "/api/chat/message",
            json!({"message": "Say hi.", "model": "node-a", "max_tokens": 8}),
        )
        .await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = body.to_string();
    assert!(
        body["content"]
            .as_str()
            .is_some_and(|c| !c.trim().is_empty()),
        "{answer}"
    );
    assert_eq!(body["metadata"]["model"], "node-a", "{answer}");
    // A saw the gateway's key.
    let keys: Value = node
        .get(&node_admin, "/api/auth/api-keys")
        .await
        .json()
        .await
        .unwrap();
    assert!(keys[0]["last_used_at"].is_string(), "{keys}");

    // No client certificate: A refuses the handshake. Not trusting A: B refuses A. Both end
    // as a clean upstream error.
    for name in ["node-a-no-cert", "node-a-untrusted"] {
        let r = gw
            .post(
                &admin,
                "/api/chat/message",
                json!({"message": "Say hi.", "model": name, "max_tokens": 8}),
            )
            .await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["error"]["code"], "model_unavailable", "{name}: {text}");
        for leak in [
            node.base.as_str(),
            files.path().to_str().unwrap(),
            node_key.as_str(),
        ] {
            assert!(!text.contains(leak), "{name}: {text}");
        }
    }
    assert!(!gw.log().contains(&node_key));
    assert!(!gw.log().contains("PRIVATE KEY"));
}

/// `http.redirect_listen`: a plain-HTTP listener that sends every request to the same path on
/// HTTPS (the main listener's port) and serves nothing itself; a missing or crafted `Host`
/// gets a 400, not a redirect elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_listener_sends_plain_http_to_https() {
    let s = Server::start(&[("PALISADE_HTTP__REDIRECT_LISTEN", "127.0.0.1:0")]);
    let at = s
        .stdout
        .iter()
        .find_map(|l| l.trim().strip_prefix("redirect:  http://"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no redirect line in {:?}", s.stdout))
        .to_string();
    let https_port = s.base.rsplit(':').next().unwrap().to_string();
    let ask = |host: Option<&str>, path: &str| {
        let at = at.clone();
        let head = match host {
            Some(h) => format!("GET {path} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"),
            None => format!("GET {path} HTTP/1.0\r\n\r\n"),
        };
        async move {
            let mut c = tokio::net::TcpStream::connect(&at).await.unwrap();
            c.write_all(head.as_bytes()).await.unwrap();
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf))
                .await
                .unwrap()
                .unwrap();
            String::from_utf8_lossy(&buf).to_string()
        }
    };
    let location = |answer: &str| {
        answer
            .lines()
            .find_map(|l| {
                l.strip_prefix("location: ")
                    .or_else(|| l.strip_prefix("Location: "))
            })
            .map(str::to_string)
    };
    let a = ask(Some("chat.example.com"), "/api/models?page=2").await;
    assert!(a.starts_with("HTTP/1.1 308"), "{a}");
    assert_eq!(
        location(&a).as_deref(),
        Some(format!("https://chat.example.com:{https_port}/api/models?page=2").as_str())
    );
    assert!(a.contains("x-content-type-options: nosniff"), "{a}");
    // Followed on the HTTPS listener, the same path answers there.
    let a = ask(
        Some(&format!("127.0.0.1:{}", at.rsplit(':').next().unwrap())),
        "/healthz",
    )
    .await;
    let target = location(&a).unwrap();
    assert_eq!(target, format!("{}/healthz", s.base));
    assert_eq!(
        s.client.get(&target).send().await.unwrap().status(),
        reqwest::StatusCode::OK
    );
    // Nothing but redirects: no API on plain HTTP, and no redirect to a crafted place.
    for host in [None, Some("evil.example/phish"), Some("user@evil.example")] {
        let a = ask(host, "/api/auth/me").await;
        assert!(
            a.starts_with("HTTP/1.1 400") || a.starts_with("HTTP/1.0 400"),
            "{host:?}: {a}"
        );
        assert!(location(&a).is_none(), "{a}");
        assert!(a.contains("\"bad_host\""), "{a}");
    }
}

/// `tls.client_accounts`: behind mutual TLS, a request without a bearer whose certificate's
/// subject is mapped acts as that service account, with that account's role; a bearer still
/// wins; an unmapped subject or a missing account is unauthenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_acts_as_its_service_account() {
    use reqwest::StatusCode;
    use serde_json::Value;

    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("clients-ca.pem");
    std::fs::write(&ca, &p.ca_pem).unwrap();
    let mut s = Server::start(&[
        ("PALISADE_TLS__CLIENT_CA", ca.to_str().unwrap()),
        (
            "PALISADE_TLS__CLIENT_ACCOUNTS__SVC-REPORTING",
            "reporting-bot",
        ),
    ]);
    let server_cert = std::fs::read(s.dir.path().join("tls/cert.pem")).unwrap();
    let identity = format!("{}\n{}", p.client_pem.0, p.client_pem.1);
    s.client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&server_cert).unwrap())
        .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let me = |s: &Server| {
        let req = s.client.get(s.url("/api/auth/me"));
        async move { req.send().await.unwrap() }
    };
    // Mapped, but the account does not exist yet.
    assert_eq!(me(&s).await.status(), StatusCode::UNAUTHORIZED);
    let admin = s.admin_token().await;
    s.new_user(&admin, "reporting-bot", "user", None).await;
    let r = me(&s).await;
    assert_eq!(r.status(), StatusCode::OK);
    let who: Value = r.json().await.unwrap();
    assert_eq!(who["username"], "reporting-bot");
    assert_eq!(who["role"], "user");
    // The account's role applies: no administration.
    let r = s
        .client
        .get(s.url("/api/admin/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A bearer on the same connection wins over the certificate.
    let r = s.get(&admin, "/api/auth/me").await;
    let who: Value = r.json().await.unwrap();
    assert_eq!(who["username"], "admin");
    // A deactivated account is refused.
    let users: Value = s
        .get(&admin, "/api/admin/users")
        .await
        .json()
        .await
        .unwrap();
    let id = users
        .as_array()
        .or_else(|| users["users"].as_array())
        .unwrap()
        .iter()
        .find(|u| u["username"] == "reporting-bot")
        .and_then(|u| u["id"].as_str())
        .unwrap()
        .to_string();
    let r = s
        .patch(
            &admin,
            &format!("/api/admin/users/{id}"),
            serde_json::json!({"is_active": false}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(me(&s).await.status(), StatusCode::UNAUTHORIZED);
}

/// Service accounts by certificate need mutual TLS: without `tls.client_ca` the configuration
/// is refused.
#[test]
fn client_accounts_without_a_client_ca_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Server::serve_command(
        dir.path(),
        "127.0.0.1:0",
        &[],
        &[(
            "PALISADE_TLS__CLIENT_ACCOUNTS__SVC-REPORTING",
            "reporting-bot",
        )],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("tls.client_accounts"), "{said}");
}
