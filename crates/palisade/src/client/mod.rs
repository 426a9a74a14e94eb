//! The terminal client of a Palisade server: `palisade chat` and the admin verbs. It speaks only
//! the public REST API, so permissions, limits, the guard and audit apply as for any client.
//!
//! Trust: `--ca-cert FILE` for a private CA; for a server on this machine, the data dir's own
//! self-signed certificate is the only trusted one (a pin: the system roots are not consulted);
//! otherwise the public web roots. Verification is never turned off.
//!
//! Credentials: `PALISADE_API_KEY`, or an interactive login whose refresh token is kept in
//! `~/.config/palisade/credentials.json` (mode 0600), one per server, rotated on every use.

pub mod admin;
pub mod chat;
pub mod render;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cli::ClientArgs;

/// Exit codes of the client commands (documented in docs/cli.md).
pub mod exit {
    pub const OK: i32 = 0;
    /// Anything else: the server could not be reached, a bad answer, a usage error.
    pub const ERROR: i32 = 1;
    /// Refused by the content guard (422 `guard_blocked`).
    pub const BLOCKED: i32 = 3;
    /// Not signed in, bad credentials, or not allowed (401/403).
    pub const AUTH: i32 = 4;
    /// Rate-limited or the server is busy (429/503); try again later.
    pub const BUSY: i32 = 5;
}

/// An error answer of the server, or a transport failure.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: Option<StatusCode>,
    pub code: String,
    pub message: String,
    pub retry_after: Option<u64>,
    pub categories: Vec<String>,
}

impl ApiFailure {
    fn transport(e: impl std::fmt::Display) -> Self {
        Self {
            status: None,
            code: "unreachable".into(),
            message: format!("cannot reach the server: {e}"),
            retry_after: None,
            categories: Vec::new(),
        }
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self.status.map(|s| s.as_u16()) {
            Some(401 | 403) => exit::AUTH,
            Some(422) if self.code == "guard_blocked" => exit::BLOCKED,
            Some(429 | 503) => exit::BUSY,
            _ => exit::ERROR,
        }
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status.map(|s| s.as_u16()) {
            Some(401) => write!(
                f,
                "not signed in ({}): sign in again with `palisade chat`, or set PALISADE_API_KEY",
                self.message
            ),
            Some(403) => write!(f, "not allowed: {}", self.message),
            Some(422) if self.code == "guard_blocked" => write!(f, "{}", self.message),
            Some(429) => match self.retry_after {
                Some(s) => write!(f, "{} (try again in {s} s)", self.message),
                None => write!(f, "{}", self.message),
            },
            Some(503) => match self.retry_after {
                Some(s) => write!(
                    f,
                    "the server is busy: {} (try again in {s} s)",
                    self.message
                ),
                None => write!(f, "the server is busy: {}", self.message),
            },
            _ => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for ApiFailure {}

/// The guard categories of an error (`["injection", ...]`).
pub(crate) fn categories(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The parsed events of a streamed answer.
pub type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Value, ApiFailure>> + Send>>;

/// How requests are authenticated.
#[derive(Debug, Clone)]
enum Credential {
    None,
    ApiKey(String),
    Session { access: String, refresh: String },
}

/// A connection to one server.
pub struct Conn {
    pub base: String,
    http: reqwest::Client,
    cred: Credential,
    store: TokenStore,
}

/// Where a server's certificate is found when it runs on this machine.
fn local_cert(args: &ClientArgs) -> Option<PathBuf> {
    let dir = args
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("PALISADE_DATA_DIR").map(PathBuf::from))
        .or_else(|| dirs::data_dir().map(|d| d.join("palisade")))?;
    let cert = dir.join("tls/cert.pem");
    cert.is_file().then_some(cert)
}

fn is_loopback(url: &str) -> bool {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

impl Conn {
    /// A connection with the trust and credentials the arguments and environment give.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Conn> {
        let base = args.server.trim_end_matches('/').to_string();
        anyhow::ensure!(
            base.starts_with("https://"),
            "the server address must start with https:// (got {base})"
        );
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("palisade-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &args.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        } else if is_loopback(&base) {
            if let Some(path) = local_cert(args) {
                let pem =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let cert = reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
                // Pinned: only this server's own certificate is trusted.
                builder = builder
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(cert);
            }
        }
        let http = builder.build().context("building the HTTPS client")?;
        let store = TokenStore::open()?;
        let cred = match std::env::var("PALISADE_API_KEY") {
            Ok(k) if !k.trim().is_empty() => Credential::ApiKey(k.trim().to_string()),
            _ => match store.get(&base) {
                Some(refresh) => Credential::Session {
                    access: String::new(),
                    refresh,
                },
                None => Credential::None,
            },
        };
        Ok(Conn {
            base,
            http,
            cred,
            store,
        })
    }

    /// Forgets any saved or environment credential and never saves one (embedded runs).
    pub fn ephemeral(&mut self) {
        self.cred = Credential::None;
        self.store.path = None;
    }

    pub fn signed_in(&self) -> bool {
        !matches!(self.cred, Credential::None)
    }

    pub fn uses_api_key(&self) -> bool {
        matches!(self.cred, Credential::ApiKey(_))
    }

    fn bearer(&self) -> Option<&str> {
        match &self.cred {
            Credential::None => None,
            Credential::ApiKey(k) => Some(k),
            Credential::Session { access, .. } => (!access.is_empty()).then_some(access.as_str()),
        }
    }

    async fn failure(resp: reqwest::Response) -> ApiFailure {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let e = &body["error"];
        ApiFailure {
            status: Some(status),
            code: e["code"].as_str().unwrap_or("error").to_string(),
            message: e["message"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| format!("the server answered {status}")),
            retry_after,
            categories: categories(&e["categories"]),
        }
    }

    /// Spends the refresh token for a new pair (and keeps the new refresh token).
    async fn refresh(&mut self) -> Result<(), ApiFailure> {
        let Credential::Session { refresh, .. } = &self.cred else {
            return Err(ApiFailure {
                status: Some(StatusCode::UNAUTHORIZED),
                code: "unauthenticated".into(),
                message: "no credential".into(),
                retry_after: None,
                categories: Vec::new(),
            });
        };
        let resp = self
            .http
            .post(format!("{}/api/auth/refresh", self.base))
            .json(&json!({"refresh_token": refresh}))
            .send()
            .await
            .map_err(ApiFailure::transport)?;
        if !resp.status().is_success() {
            let f = Self::failure(resp).await;
            if f.status == Some(StatusCode::UNAUTHORIZED) {
                self.store.remove(&self.base);
                self.cred = Credential::None;
            }
            return Err(f);
        }
        let v: Value = resp.json().await.map_err(ApiFailure::transport)?;
        self.adopt(&v);
        Ok(())
    }

    /// Takes the tokens of a login/refresh answer.
    fn adopt(&mut self, v: &Value) {
        let access = v["access_token"].as_str().unwrap_or_default().to_string();
        let refresh = v["refresh_token"].as_str().unwrap_or_default().to_string();
        if !refresh.is_empty() {
            self.store.put(&self.base, &refresh);
        }
        self.cred = Credential::Session { access, refresh };
    }

    /// Sends a request, refreshing the session once when the access token has expired.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, ApiFailure> {
        if matches!(&self.cred, Credential::Session { access, .. } if access.is_empty()) {
            self.refresh().await?;
        }
        for attempt in 0..2 {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some(b) = self.bearer() {
                req = req.bearer_auth(b);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(ApiFailure::transport)?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && attempt == 0
                && matches!(self.cred, Credential::Session { .. })
            {
                self.refresh().await?;
                continue;
            }
            if !resp.status().is_success() {
                return Err(Self::failure(resp).await);
            }
            return Ok(resp);
        }
        Err(ApiFailure::transport("retry loop ended"))
    }

    /// A JSON request; `Value::Null` for an empty answer.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ApiFailure> {
        let resp = self.send(method, path, body.as_ref()).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let text = resp.text().await.map_err(ApiFailure::transport)?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| ApiFailure {
            status: None,
            code: "bad_answer".into(),
            message: format!("the server's answer is not JSON: {e}"),
            retry_after: None,
            categories: Vec::new(),
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Value, ApiFailure> {
        self.call(Method::GET, path, None).await
    }

    /// Starts a streamed chat answer: the SSE events, parsed, as they arrive.
    pub async fn stream_chat(&mut self, body: Value) -> Result<EventStream, ApiFailure> {
        let resp = self
            .send(Method::POST, "/api/chat/message", Some(&body))
            .await?;
        let bytes = resp.bytes_stream();
        Ok(Box::pin(futures::stream::unfold(
            (bytes, Vec::<u8>::new(), false),
            |(mut bytes, mut buf, done)| async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&line);
                        let Some(data) = line.trim_end().strip_prefix("data:") else {
                            continue;
                        };
                        let item =
                            serde_json::from_str::<Value>(data.trim()).map_err(|e| ApiFailure {
                                status: None,
                                code: "bad_answer".into(),
                                message: format!("a streamed event is not JSON: {e}"),
                                retry_after: None,
                                categories: Vec::new(),
                            });
                        return Some((item, (bytes, buf, false)));
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(e)) => {
                            return Some((Err(ApiFailure::transport(e)), (bytes, buf, true)))
                        }
                        None => return None,
                    }
                }
            },
        )))
    }

    /// Signs in with a password (and a second factor when the account has one).
    pub async fn login(
        &mut self,
        username: &str,
        password: &str,
        totp: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/api/auth/login", self.base))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .map_err(ApiFailure::transport)?;
        if !resp.status().is_success() {
            return Err(Self::failure(resp).await.into());
        }
        let mut v: Value = resp.json().await.map_err(ApiFailure::transport)?;
        if v["mfa_required"] == true {
            let code = totp()?;
            let resp = self
                .http
                .post(format!("{}/api/auth/login/2fa", self.base))
                .json(&json!({"mfa_token": v["mfa_token"], "code": code.trim()}))
                .send()
                .await
                .map_err(ApiFailure::transport)?;
            if !resp.status().is_success() {
                return Err(Self::failure(resp).await.into());
            }
            v = resp.json().await.map_err(ApiFailure::transport)?;
        }
        self.adopt(&v);
        Ok(())
    }

    /// Changes the password (a forced change after an admin created or reset the account).
    pub async fn change_password(&mut self, current: &str, new: &str) -> Result<(), ApiFailure> {
        let v = self
            .call(
                Method::POST,
                "/api/auth/password",
                Some(json!({"current_password": current, "new_password": new})),
            )
            .await?;
        self.adopt(&v);
        Ok(())
    }

    /// Ends the session on the server and forgets the stored token.
    pub async fn logout(&mut self) {
        if let Credential::Session { refresh, .. } = self.cred.clone() {
            let mut req = self
                .http
                .post(format!("{}/api/auth/logout", self.base))
                .json(&json!({"refresh_token": refresh}));
            if let Some(b) = self.bearer() {
                req = req.bearer_auth(b);
            }
            let _ = req.send().await;
        }
        self.store.remove(&self.base);
        self.cred = Credential::None;
    }
}

/// Refresh tokens per server in a 0600 file under the user's config dir.
struct TokenStore {
    path: Option<PathBuf>,
}

impl TokenStore {
    fn open() -> anyhow::Result<TokenStore> {
        Ok(TokenStore {
            path: dirs::config_dir().map(|d| d.join("palisade").join("credentials.json")),
        })
    }

    fn read(&self) -> BTreeMap<String, String> {
        self.path
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default()
    }

    fn get(&self, server: &str) -> Option<String> {
        self.read().get(server).cloned()
    }

    fn write(&self, map: &BTreeMap<String, String>) {
        let Some(path) = &self.path else { return };
        if let Err(e) = write_private(path, &serde_json::to_vec_pretty(map).unwrap_or_default()) {
            eprintln!(
                "warning: could not keep the session in {}: {e}",
                path.display()
            );
        }
    }

    fn put(&self, server: &str, refresh: &str) {
        let mut m = self.read();
        m.insert(server.to_string(), refresh.to_string());
        self.write(&m);
    }

    fn remove(&self, server: &str) {
        let mut m = self.read();
        if m.remove(server).is_some() {
            self.write(&m);
        }
    }
}

/// Writes a file only its owner can read (directory 0700, file 0600), atomically.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Asks for a line on the terminal (`hidden`: without echo).
pub fn ask(prompt: &str, hidden: bool) -> anyhow::Result<String> {
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "not signed in and no terminal to ask on: run `palisade chat` once interactively, or set PALISADE_API_KEY"
    );
    if hidden {
        return rpassword::prompt_password(prompt).context("reading the password");
    }
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the terminal")?;
    Ok(line.trim().to_string())
}

/// Makes sure the connection has a usable credential: asks for username, password (hidden) and
/// a TOTP code when needed, and walks through a forced password change.
pub async fn ensure_signed_in(conn: &mut Conn, username: Option<&str>) -> anyhow::Result<()> {
    let mut password = String::new();
    if conn.signed_in() {
        match conn.get("/api/auth/me").await {
            Ok(me) if me["must_change_password"] != true => return Ok(()),
            Ok(_) => {}
            Err(f) if f.status == Some(StatusCode::UNAUTHORIZED) => {
                conn.cred = Credential::None;
            }
            Err(f) => return Err(f.into()),
        }
    }
    if !conn.signed_in() {
        eprintln!("Sign in to {}", conn.base);
        let user = match username {
            Some(u) => u.to_string(),
            None => ask("Username: ", false)?,
        };
        password = ask("Password: ", true)?;
        conn.login(&user, &password, || ask("Two-factor code: ", false))
            .await?;
    }
    let me = conn.get("/api/auth/me").await?;
    if me["must_change_password"] != true {
        return Ok(());
    }
    eprintln!("Your password must be changed before you can go on.");
    if password.is_empty() {
        password = ask("Current password: ", true)?;
    }
    loop {
        let new = ask("New password: ", true)?;
        let again = ask("New password again: ", true)?;
        if new != again {
            eprintln!("The two entries differ; try again.");
            continue;
        }
        match conn.change_password(&password, &new).await {
            Ok(()) => {
                eprintln!("Password changed.");
                return Ok(());
            }
            Err(f) if f.status == Some(StatusCode::UNPROCESSABLE_ENTITY) => {
                eprintln!("{f}");
            }
            Err(f) => return Err(f.into()),
        }
    }
}
