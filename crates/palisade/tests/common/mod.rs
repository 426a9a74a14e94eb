//! Black-box test harness: spawns the real `palisade` binary on port 0 with a temporary data
//! dir and the real model, and talks to it over HTTPS trusting its generated certificate.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub mod nginx;
pub mod oidc;
pub mod own_services;
pub mod stub;

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

pub const ADMIN_PASSWORD: &str = "quiet-harbor-falcon-2931";
/// The password `Server::new_user` leaves its users with.
pub const USER_PASSWORD: &str = "Velvet-Glacier-Otter-5820";

pub struct Server {
    child: Child,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub client: Client,
    pub stdout: Vec<String>,
    /// Every line the server wrote to stderr (its log), also passed on to the test's stderr.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_palisade")
}

/// Runs `palisade ARGS… --data-dir DIR` with a clean environment (HOME = the data dir):
/// (exit code, stdout followed by stderr).
pub fn cli(data_dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", data_dir)
        .envs(postgres_url(data_dir).map(|u| ("PALISADE_STORE__URL", u)))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `palisade` for a CLI step on a server's data dir: the shell's `PALISADE_*` variables are
/// dropped and, when the suite runs on PostgreSQL, the data dir's database is named.
pub fn command_in(data_dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PALISADE_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(postgres_url(data_dir).map(|u| ("PALISADE_STORE__URL", u)));
    cmd
}

/// The PostgreSQL database of a test's data dir, when the suite runs on PostgreSQL
/// (`TEST_POSTGRES_URL` set): created on first use and remembered in the data dir, so a
/// restart or a CLI command on the same dir finds the same database.
pub fn postgres_url(data_dir: &Path) -> Option<String> {
    let server = palisade_store::testing::postgres_server()?;
    let remembered = data_dir.join(".test-postgres-url");
    if let Ok(url) = std::fs::read_to_string(&remembered) {
        return Some(url);
    }
    // Its own thread and runtime: callers may be inside a test's runtime.
    let url = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(palisade_store::testing::fresh_postgres(&server))
    })
    .join()
    .unwrap()
    .expect("a fresh PostgreSQL database");
    std::fs::write(&remembered, &url).unwrap();
    Some(url)
}

/// Runs one SQL statement on a data dir's database as an outside tool would (psql as the
/// database's owner on PostgreSQL, Python's `sqlite3` on the SQLite file) and returns what it
/// printed, trimmed: the first column of each row, one row per line. The test builds the SQL
/// from values it chose itself.
pub fn sql(data_dir: &Path, statement: &str) -> String {
    let out = match postgres_url(data_dir) {
        Some(url) => Command::new("psql")
            .args([
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                &url,
                "-c",
                statement,
            ])
            .output()
            .expect("psql (scripts/setup --test installs postgresql-client)"),
        None => Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys\n\
                 con = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 con.execute('PRAGMA busy_timeout = 10000')\n\
                 for row in con.execute(sys.argv[2]): print(row[0])",
            ])
            .arg(data_dir.join("palisade.db"))
            .arg(statement)
            .output()
            .expect("python3"),
    };
    assert!(
        out.status.success(),
        "{statement}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// True when the suite runs on PostgreSQL (tests that look into the SQLite file skip then).
pub fn on_postgres() -> bool {
    palisade_store::testing::postgres_server().is_some()
}

/// On PostgreSQL, says why the calling test does not apply there and returns true.
pub fn skip_on_postgres(why: &str) -> bool {
    let skip = on_postgres();
    if skip {
        eprintln!("skipped on PostgreSQL: {why}");
    }
    skip
}

/// The model directory shared by tests (`PALISADE_MODEL_DIR`, as `scripts/test` sets it).
pub fn model_dir() -> PathBuf {
    std::env::var_os("PALISADE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs_home().join(".cache/palisade/models"))
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

impl Server {
    /// Starts a server; `env` adds/overrides `PALISADE_*` settings.
    pub fn start(env: &[(&str, &str)]) -> Server {
        Self::start_in(tempfile::tempdir().unwrap(), env)
    }

    /// Stops this server and starts a new one on the same data dir.
    pub fn restart(self, env: &[(&str, &str)]) -> Server {
        self.restart_with(&[], env)
    }

    /// As [`Server::restart`], with extra `serve` flags.
    pub fn restart_with(mut self, args: &[&str], env: &[(&str, &str)]) -> Server {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::start_with(dir, "127.0.0.1:0", args, env)
    }

    /// Starts a server on an existing data dir.
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Server {
        Self::start_listening(dir, "127.0.0.1:0", env)
    }

    /// Starts a server listening on `listen` (for flows whose redirect address must be known
    /// before the server starts, such as single sign-on).
    pub fn start_listening(dir: tempfile::TempDir, listen: &str, env: &[(&str, &str)]) -> Server {
        Self::start_with(dir, listen, &[], env)
    }

    /// The command [`Server::start_with`] runs (for tests of a start that must fail).
    pub fn serve_command(dir: &Path, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
        let model = model_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            model.is_file(),
            "the model is missing at {}; run `palisade model pull` (scripts/test does)",
            model.display()
        );
        // Only the settings below and the test's own reach the server: a `PALISADE_*` variable
        // of the shell that runs the tests would be read as configuration.
        let mut cmd = command_in(dir);
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .args(args)
            .env("PALISADE_MODEL_DIR", model_dir())
            .env("PALISADE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("PALISADE_MODEL__PARALLEL", "4")
            .env("PALISADE_MODEL__AUTO_PULL", "false")
            .env("PALISADE_LOG", "warn")
            // Tests log in often from one address; the per-IP limit has its own test.
            .env("PALISADE_AUTH__IP_LIMIT_PER_MINUTE", "100000")
            // Likewise the per-user request limits (tests/limits_e2e.rs sets its own).
            .env("PALISADE_LIMITS__CHAT_PER_USER", "100000/s")
            .env("PALISADE_LIMITS__API_PER_USER", "100000/s")
            .env("PALISADE_LIMITS__TOKENS_PER_USER", "off")
            .env("PALISADE_LIMITS__COMPUTE_PER_USER", "off")
            .env("PALISADE_LIMITS__STREAMS_PER_USER", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts a server with extra `serve` flags (`args`) and settings (`env`).
    pub fn start_with(
        dir: tempfile::TempDir,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut child = Self::serve_command(dir.path(), listen, args, env)
            .spawn()
            .expect("spawn palisade");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut lines = Vec::new();
        let base = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .expect("server did not print its address in time");
            let found = line
                .split_once("listening on ")
                .map(|(_, url)| url.trim().to_string());
            lines.push(line);
            if let Some(url) = found {
                break url;
            }
        };
        assert!(base.starts_with("https://127.0.0.1:"), "{base}");
        let cert = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
        let client = Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        Server {
            child,
            dir,
            base,
            client,
            stdout: lines,
            stderr,
        }
    }

    /// The server's log so far, as one string.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Kills the server at once (SIGKILL: no draining), as a crashed replica would go.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `within` for the server to exit on its own; its status, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The server process's id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn login(&self, username: &str, password: &str) -> Value {
        let r = self
            .client
            .post(self.url("/api/auth/login"))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "login of {username}");
        r.json().await.unwrap()
    }

    pub async fn admin_token(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await["access_token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn get(&self, token: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A POST without credentials (login, register, refresh).
    pub async fn post_public(&self, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, token: &str, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }
}

impl Server {
    /// A client trusting this server's certificate that does not follow redirects.
    pub fn no_redirect_client(&self) -> Client {
        let cert = std::fs::read(self.dir.path().join("tls/cert.pem")).unwrap();
        Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    pub async fn put(&self, token: &str, path: &str, body: Value) -> Response {
        self.client
            .put(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, token: &str, path: &str, body: Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a user through the admin API, then logs in and replaces the administrator-set
    /// password (as the first login must). Returns (user id, access token, final password).
    pub async fn new_user(
        &self,
        admin: &str,
        username: &str,
        role: &str,
        tenant: Option<&str>,
    ) -> (String, String, String) {
        let first = "Lantern-Quarry-Mosaic-4417".to_string();
        let mut body = json!({"username": username, "password": first, "role": role});
        if let Some(t) = tenant {
            body["tenant_id"] = json!(t);
        }
        let r = self.post(admin, "/api/admin/users", body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "create {username}");
        let created: Value = r.json().await.unwrap();
        assert_eq!(created["user"]["must_change_password"], true);
        let id = created["user"]["id"].as_str().unwrap().to_string();
        let tenant_name = match tenant {
            Some(t) => self.tenant_name(admin, t).await,
            None => None,
        };
        let mut login = json!({"username": username, "password": first});
        if let Some(n) = &tenant_name {
            login["tenant"] = json!(n);
        }
        let r = self.post_public("/api/auth/login", login).await;
        assert_eq!(r.status(), StatusCode::OK, "first login of {username}");
        let t: Value = r.json().await.unwrap();
        let tmp = t["access_token"].as_str().unwrap().to_string();
        let password = USER_PASSWORD.to_string();
        let r = self
            .post(
                &tmp,
                "/api/auth/password",
                json!({"current_password": first, "new_password": password}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "password change of {username}");
        let t: Value = r.json().await.unwrap();
        (
            id,
            t["access_token"].as_str().unwrap().to_string(),
            password,
        )
    }

    /// The first dead letter (`GET /api/admin/jobs?state=dead`) of jobs of `kind`, waiting up
    /// to 30 s for one; `Null` when none came.
    pub async fn dead_letter(&self, admin: &str, kind: &str) -> Value {
        for _ in 0..150 {
            let v: Value = self
                .get(admin, "/api/admin/jobs?state=dead")
                .await
                .json()
                .await
                .unwrap();
            if let Some(j) = v["jobs"]
                .as_array()
                .and_then(|a| a.iter().find(|j| j["kind"] == kind))
            {
                return j.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Value::Null
    }

    async fn tenant_name(&self, admin: &str, id: &str) -> Option<String> {
        let list: Value = self
            .get(admin, "/api/admin/tenants")
            .await
            .json()
            .await
            .ok()?;
        list.as_array()?
            .iter()
            .find(|t| t["id"] == id)
            .and_then(|t| t["name"].as_str())
            .map(String::from)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts the status and the error shape, returning the error code.
pub async fn error_code(r: Response, status: StatusCode) -> String {
    assert_eq!(r.status(), status, "unexpected status");
    let v: Value = r.json().await.expect("error body is JSON");
    let code = v["error"]["code"].as_str().expect("error.code").to_string();
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    code
}

/// Reads an SSE response into its parsed `data:` events.
pub async fn sse_events(r: Response) -> Vec<Value> {
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let text = r.text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .collect()
}

/// The server's certificate as a trust root, for a TLS client: the builder stops before the
/// client-authentication choice (none, or a client certificate for mutual TLS).
pub fn trusting(
    s: &Server,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let pem = std::fs::read(s.data_dir().join("tls/cert.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
}

/// A TLS connection made with `cfg` to `addr` (the server, or a proxy serving its
/// certificate), named `127.0.0.1`.
pub async fn tls_with(
    cfg: rustls::ClientConfig,
    addr: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// A TLS connection to `addr` trusting the server's certificate, for tests that speak raw HTTP
/// or WebSocket over it.
pub async fn tls_to(
    s: &Server,
    addr: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_with(trusting(s).with_no_client_auth(), addr)
        .await
        .unwrap()
}

/// A TLS connection to the server itself.
pub async fn tls_stream(s: &Server) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_to(s, s.base.trim_start_matches("https://")).await
}
