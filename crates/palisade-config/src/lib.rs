//! Palisade's configuration: typed, layered (built-in defaults < TOML file < `PALISADE_*`
//! environment < command-line flags) and validated before anything starts. Invalid values are
//! refused with a message naming the key, never silently replaced by defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod metrics;
mod telemetry;

pub use metrics::MetricsConfig;
pub use telemetry::TelemetryConfig;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use palisade_types::guard::{
    GuardAction, GuardSettings, TenantGuardPolicy, ZoneOverrides, ZonePolicy,
};
pub use palisade_types::models::{ModelSpec, ModelTimeouts, ProviderKind, TrustZone};

/// Everything `palisade serve` needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database, keys and certificates live.
    pub data_dir: PathBuf,
    /// Address to listen on, `HOST:PORT` (port 0 picks a free port).
    pub listen: String,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub model: ModelConfig,
    pub chat: ChatConfig,
    pub http: HttpConfig,
    /// The model registry: `[models.NAME]` tables (see `docs/configuration.md`). The embedded
    /// model of `[model]` is added as a `local` entry unless a table of its name exists.
    pub models: BTreeMap<String, ModelSpec>,
    pub providers: ProvidersConfig,
    pub cache: CacheConfig,
    /// The LLM firewall (see `docs/guard.md`).
    pub guard: GuardSettings,
    /// Request limits, budgets and concurrency (see `docs/limits.md`).
    pub limits: LimitsConfig,
    /// The database: SQLite in the data dir (default) or PostgreSQL (see `docs/scale-out.md`).
    pub store: StoreConfig,
    /// Shared state for several replicas (see `docs/limits.md`, `docs/deployment.md`).
    pub redis: RedisConfig,
    /// The tamper-evident audit trail (see `docs/audit.md`).
    pub audit: AuditConfig,
    /// Encryption at rest (see `docs/encryption.md`).
    pub crypto: CryptoConfig,
    /// How long conversations are kept (see `docs/retention.md`).
    pub retention: RetentionConfig,
    /// The background job runner (see `docs/retention.md`).
    pub jobs: JobsConfig,
    /// Prometheus metrics (see `docs/operations.md`).
    pub metrics: MetricsConfig,
    /// OpenTelemetry trace export (see `docs/operations.md`).
    pub telemetry: TelemetryConfig,
}

/// `[retention]`: the default retention of conversations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a conversation is kept after its last message, for tenants without their own
    /// setting (0: forever).
    pub days: u32,
    /// Seconds between purges.
    pub check_every_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            days: 0,
            check_every_secs: 3600,
        }
    }
}

/// `[jobs]`: retries of background jobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Attempts before a job becomes a dead letter.
    pub max_attempts: u32,
    /// Delay before the second attempt; it doubles with each further one (at most an hour).
    pub backoff_secs: u64,
    /// How often an idle runner looks for due jobs (milliseconds).
    pub poll_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff_secs: 30,
            poll_ms: 1000,
        }
    }
}

/// `[crypto]`: the master key of encryption at rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    /// The master key that wraps every tenant's data key: a reference, `env::NAME` or
    /// `file::PATH`, to 64 hex digits. Default: `master.key` in the data dir, created at the
    /// first start, readable by its owner only. Losing it makes every conversation unreadable.
    pub master_key: Option<String>,
}

/// `[audit]`: the audit trail's hash chains.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The key that chains the audit trail (HMAC-SHA-256): a reference, `env::NAME` or
    /// `file::PATH`, to 64 hex digits. Default: `audit.key` in the data dir, created at the
    /// first start, readable by its owner only.
    pub key: Option<String>,
    /// Seconds between the signed checkpoints the server writes into `audit-checkpoints/` of
    /// the data dir (0: none).
    pub checkpoint_every_secs: u64,
    /// A request to a model whose audit record cannot be written (database or file sink
    /// failing) is refused with 503 `audit_unavailable` before any model sees it. `false`:
    /// the request goes on and the failure is only logged.
    pub fail_closed: bool,
    /// Also write every event, as one JSON line, to standard output (for log shippers; the
    /// server's own logs go to standard error).
    pub stdout: bool,
    /// `[audit.file]`: a JSON-lines copy of the trail, rotated and compressed.
    pub file: AuditFileConfig,
    /// Tenants (ids) whose model requests are recorded with their content: the turns sent
    /// and the answer, sealed with the tenant's data key (only `audit:read` holders read
    /// them back; crypto-shredding the tenant destroys them). `"*"`: every tenant. Empty
    /// (default): digests only, never the text.
    pub record_content: Vec<String>,
    /// `[audit.ship]`: delivery of the trail to a collector over HTTP, as a background job.
    pub ship: AuditShipConfig,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            key: None,
            checkpoint_every_secs: 3600,
            fail_closed: true,
            stdout: false,
            file: AuditFileConfig::default(),
            record_content: Vec::new(),
            ship: AuditShipConfig::default(),
        }
    }
}

/// `[audit.ship]`: the trail delivered to a collector (a SIEM's HTTP input) by the
/// `audit_ship` job: every event once per chain position, in chain order, as JSON lines
/// (`application/x-ndjson`, the lines of `palisade audit export`), at least once. Off unless
/// `url` is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditShipConfig {
    /// The collector's endpoint (`https://siem.example.com/ingest`; plain `http://` only to
    /// a loopback address).
    pub url: Option<String>,
    /// A bearer token sent to the collector, by reference (`env::NAME`, `file::PATH`).
    pub token: Option<String>,
    /// A PEM file of CAs trusted for the collector, besides the public roots (a private PKI).
    pub ca_cert: Option<PathBuf>,
    /// Seconds between delivery runs.
    pub every_secs: u64,
    /// Events per request.
    pub batch: u32,
    /// Seconds one request may take.
    pub timeout_secs: u64,
}

impl Default for AuditShipConfig {
    fn default() -> Self {
        Self {
            url: None,
            token: None,
            ca_cert: None,
            every_secs: 60,
            batch: 500,
            timeout_secs: 30,
        }
    }
}

impl AuditShipConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if let Some(url) = &self.url {
            let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|p| {
                    url.strip_prefix(p)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
                });
            let https = url.strip_prefix("https://").is_some_and(|r| {
                !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace)
            });
            if !https && !loopback {
                return invalid(
                    "audit.ship.url",
                    "must be an https:// URL (http:// only to a loopback address)",
                );
            }
        }
        if let Some(t) = &self.token {
            if !(t.starts_with("env::") || t.starts_with("file::")) {
                return invalid(
                    "audit.ship.token",
                    "give a reference (`env::NAME` or `file::PATH`), not the token itself",
                );
            }
        }
        if self.every_secs == 0 || self.batch == 0 || self.batch > 10_000 || self.timeout_secs == 0
        {
            return invalid(
                "audit.ship",
                "`every_secs` and `timeout_secs` must be positive and `batch` 1 to 10000",
            );
        }
        Ok(())
    }
}

/// `[audit.file]`: the JSON-lines file sink (off unless `path` is set).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditFileConfig {
    /// The file (relative paths are under the data dir), e.g. `"audit/audit.jsonl"`.
    pub path: Option<PathBuf>,
    /// Rotate when the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotate when the file is older than this many seconds (0: by size only).
    pub rotate_every_secs: u64,
    /// Rotated files kept (the oldest are removed; 0: keep all).
    pub keep: u32,
    /// Compress rotated files with gzip (`.jsonl.gz`).
    pub compress: bool,
}

impl Default for AuditFileConfig {
    fn default() -> Self {
        Self {
            path: None,
            max_bytes: 100 * 1024 * 1024,
            rotate_every_secs: 86_400,
            keep: 30,
            compress: true,
        }
    }
}

/// `[store]`: where Palisade keeps its data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DB[?sslmode=verify-full&sslrootcert=FILE]`, or a
    /// reference to it (`env::NAME`, `file::PATH`) so a password need not sit in the file.
    /// Unset: SQLite, `palisade.db` in the data dir. The password is never logged.
    pub url: Option<String>,
    /// Which database (spec 002's `--db-backend`): `auto` (PostgreSQL when `url` is set, else
    /// SQLite in the data dir), `postgresql` (`url` required), `sqlite` or `memory` (nothing
    /// is kept after the process ends).
    pub backend: StoreBackend,
    /// What `auto` does when the configured database cannot be opened at start: `none` (a
    /// clear start-up error) or `memory` (serve from an in-memory database, warn loudly, and
    /// `/readyz` reports `degraded`). Never used by `postgresql` or `sqlite`.
    pub fallback: StoreFallback,
    /// Connections of this replica's pool (PostgreSQL).
    pub max_connections: u32,
    /// Seconds a request waits for a free connection before it fails (PostgreSQL).
    pub acquire_timeout_secs: u64,
    /// `statement_timeout` of every connection, in seconds; 0: none (PostgreSQL).
    pub statement_timeout_secs: u64,
    /// The role statements run as (`SET ROLE`, PostgreSQL): the migrations create
    /// `palisade_app`, which cannot bypass row-level security. Empty: the login role itself,
    /// which then must not be able to bypass it either.
    pub role: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            backend: StoreBackend::Auto,
            fallback: StoreFallback::None,
            max_connections: 16,
            acquire_timeout_secs: 10,
            statement_timeout_secs: 30,
            role: "palisade_app".into(),
        }
    }
}

impl StoreConfig {
    /// The URL, with an `env::`/`file::` reference resolved.
    pub fn resolved_url(&self) -> Result<Option<String>, ConfigError> {
        match self.url.as_deref() {
            // Empty (`PALISADE_STORE__URL=`): the embedded SQLite file.
            None | Some("") => Ok(None),
            Some(r) if r.starts_with("env::") || r.starts_with("file::") => {
                resolve_secret("store.url", r).map(Some)
            }
            Some(u) => Ok(Some(u.to_string())),
        }
    }

    /// The PostgreSQL URL that serves: `url` unless `backend` says SQLite or memory.
    pub fn postgres_url(&self) -> Result<Option<String>, ConfigError> {
        match self.backend {
            StoreBackend::Sqlite | StoreBackend::Memory => Ok(None),
            StoreBackend::Auto | StoreBackend::Postgresql => self.resolved_url(),
        }
    }

    /// The URL with any password replaced by `***`, for messages and logs.
    pub fn display_url(&self) -> Option<String> {
        self.url
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(hide_password)
    }
}

/// `store.backend`: which database serves.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// PostgreSQL when `store.url` is set, else SQLite in the data dir.
    #[default]
    Auto,
    /// PostgreSQL at `store.url`, or a start-up error.
    #[serde(alias = "postgres")]
    Postgresql,
    /// SQLite (`palisade.db` in the data dir), even when `store.url` is set.
    Sqlite,
    /// A private in-memory database: nothing survives the process.
    Memory,
}

/// `store.fallback`: what `store.backend = "auto"` does when the database cannot be opened.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreFallback {
    /// Refuse to start (nothing is silently lost).
    #[default]
    None,
    /// Serve from memory, say so loudly, report `degraded`.
    Memory,
}

/// `scheme://user:secret@host` → `scheme://***@host`.
pub fn hide_password(u: &str) -> String {
    match (u.find("://"), u.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &u[..scheme], &u[at + 1..])
        }
        _ => u.to_string(),
    }
}

/// `[redis]`: the Redis that replicas share.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[:PASSWORD@]HOST:PORT/DB` (`rediss://` for TLS), or a reference to it,
    /// `env::NAME` or `file::PATH`, so a password need not sit in the config file. The
    /// password is never logged.
    pub url: Option<String>,
}

impl RedisConfig {
    /// The URL, with an `env::`/`file::` reference resolved.
    pub fn resolved_url(&self) -> Result<Option<String>, ConfigError> {
        match self.url.as_deref() {
            None => Ok(None),
            Some(r) if r.starts_with("env::") || r.starts_with("file::") => {
                resolve_secret("redis.url", r).map(Some)
            }
            Some(u) => Ok(Some(u.to_string())),
        }
    }

    /// The URL with any password replaced by `***`, for messages and logs.
    pub fn display_url(&self) -> Option<String> {
        self.url.as_deref().map(hide_password)
    }
}

/// Where limit counters live.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LimitsBackend {
    /// Redis when `redis.url` is set, else this process's memory.
    #[default]
    Auto,
    Memory,
    Redis,
}

/// `[limits.roles.NAME]`: a role's own per-user figures (unset keys keep the defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RoleLimits {
    pub chat_per_user: Option<String>,
    pub api_per_user: Option<String>,
    pub tokens_per_user: Option<String>,
    pub compute_per_user: Option<String>,
    pub streams_per_user: Option<u32>,
}

/// `[limits.models.NAME]`: what one model may serve, all callers together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelLimits {
    /// Prompt + completion tokens, e.g. `"2000000/day"`.
    pub tokens: String,
    /// Compute-seconds, e.g. `"36000/day"`.
    pub compute: String,
    /// Streams at the same time (0: no limit).
    pub streams: u32,
}

/// `[limits]`: rates written `N/UNIT` (UNIT: s, min, h, day, month), `""` for none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub enabled: bool,
    /// Chat API requests (`/api/chat/message`) per user (spec 003: 10 per second).
    pub chat_per_user: String,
    /// `/v1` and scoped-generate requests per user (spec 003: 100 per minute).
    pub api_per_user: String,
    /// Chat and API requests per tenant, all its users together (none by default).
    pub requests_per_tenant: String,
    /// Prompt + completion tokens per user (reserved from the prompt and `max_tokens`, settled
    /// to real usage).
    pub tokens_per_user: String,
    /// Tokens per API key.
    pub tokens_per_key: String,
    /// Tokens per tenant.
    pub tokens_per_tenant: String,
    /// Compute-seconds (wall time of the engine or upstream) per user, e.g. `"3600/day"`.
    pub compute_per_user: String,
    /// Compute-seconds per tenant.
    pub compute_per_tenant: String,
    /// Answers streaming at the same time per user (0: no limit).
    pub streams_per_user: u32,
    /// Answers streaming at the same time per tenant (0: no limit).
    pub streams_per_tenant: u32,
    /// Answers streaming at the same time on this server (or all replicas, with Redis).
    pub streams_global: u32,
    /// Where counters live: `auto` (Redis when `redis.url` is set), `memory` or `redis`.
    pub backend: LimitsBackend,
    /// What happens at a limit: 0 (the default) refuses at once with 429 and `Retry-After`;
    /// N > 0 holds the request up to N seconds for a stream slot or a request-rate window to
    /// free, and refuses only if none does (a budget that resets later than that is refused at
    /// once). At most 300.
    pub queue_seconds: u32,
    /// Per-role figures, e.g. `[limits.roles.user] tokens_per_user = "200000/day"`.
    pub roles: BTreeMap<String, RoleLimits>,
    /// Per-model budgets, e.g. `[limits.models.gpt-4o] tokens = "5000000/day"`.
    pub models: BTreeMap<String, ModelLimits>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            chat_per_user: "10/s".into(),
            api_per_user: "100/min".into(),
            requests_per_tenant: String::new(),
            tokens_per_user: "1000000/day".into(),
            tokens_per_key: String::new(),
            tokens_per_tenant: String::new(),
            compute_per_user: "7200/day".into(),
            compute_per_tenant: String::new(),
            streams_per_user: 4,
            streams_per_tenant: 0,
            streams_global: 0,
            backend: LimitsBackend::Auto,
            queue_seconds: 0,
            roles: BTreeMap::new(),
            models: BTreeMap::new(),
        }
    }
}

/// How remote providers are called.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    /// Consecutive failures that open an upstream's circuit breaker.
    pub breaker_failures: u32,
    /// Seconds an open circuit fails fast before one probe request is let through.
    pub breaker_cooldown_secs: u64,
    /// First retry delay (doubles per retry, with jitter); retries happen only before the
    /// first token.
    pub retry_backoff_ms: u64,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        Self {
            breaker_failures: 5,
            breaker_cooldown_secs: 30,
            retry_backoff_ms: 200,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    #[default]
    Memory,
    Redis,
}

/// The response cache for deterministic requests (temperature 0 or a fixed seed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    pub backend: CacheBackend,
    /// `redis://HOST:PORT/DB` for the `redis` backend.
    pub redis_url: Option<String>,
    pub ttl_secs: u64,
    /// Answers kept by the in-memory backend.
    pub capacity: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            backend: CacheBackend::Memory,
            redis_url: None,
            ttl_secs: 3600,
            capacity: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`. When both are absent a self-signed certificate for
    /// localhost is generated into the data dir (loopback only).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Mutual TLS: a PEM bundle of the certificate authorities whose client certificates the
    /// listener requires. A client without such a certificate cannot complete the handshake.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: service accounts by certificate. A request without a bearer token
    /// whose verified client certificate has one of these subject common names acts as the
    /// named user of the default tenant (`"svc-reporting" = "reporting-bot"`).
    pub client_accounts: BTreeMap<String, String>,
}

impl TlsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.client_accounts.is_empty() && self.client_ca.is_none() {
            return Err(ConfigError::Invalid {
                key: "tls.client_accounts",
                message: "needs `tls.client_ca`: only certificates of those authorities are \
                          verified"
                    .into(),
            });
        }
        if self
            .client_accounts
            .iter()
            .any(|(cn, user)| cn.trim().is_empty() || user.trim().is_empty())
        {
            return Err(ConfigError::Invalid {
                key: "tls.client_accounts",
                message: "each entry maps a certificate common name to a username".into(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Open,
    /// Only with an invitation code (`POST /api/admin/invites`).
    Invite,
    Closed,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `open`: anyone may register; `invite`: with an invitation code; `closed`: administrators
    /// create accounts.
    pub registration: Registration,
    pub access_token_ttl_secs: u64,
    pub refresh_token_sliding_days: u64,
    pub refresh_token_absolute_days: u64,
    /// Login, register and refresh attempts per client IP per minute (spec 003: 5); 0 = off.
    pub ip_limit_per_minute: u32,
    /// Roles whose members must use TOTP (e.g. `["admin"]`).
    pub require_2fa: Vec<String>,
    /// Lifetime of scoped LLM tokens (spec 004: 60 s).
    pub scoped_token_ttl_secs: u64,
    /// Spec 000/004 compatibility routes (`POST /login`, `/chat`, `/auth/login`, ...).
    pub compat_routes: bool,
    pub password: PasswordConfig,
    /// Custom roles: `[auth.roles.analyst] permissions = ["chat:send", "model:x:use"]`.
    pub roles: BTreeMap<String, RoleConfig>,
    /// Single sign-on and bearer tokens of an OpenID provider (Keycloak, Entra ID, ...).
    pub oidc: Option<OidcConfig>,
    /// Bind authentication against an LDAP directory.
    pub ldap: Option<LdapConfig>,
}

/// `[auth.oidc]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL (https; plain http only on loopback).
    pub issuer: String,
    pub client_id: String,
    /// A reference, never the secret itself: `env::NAME` or `file::PATH`.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// `aud` required on the provider's bearer JWTs sent to the API (default: client_id).
    #[serde(default)]
    pub audience: Option<String>,
    /// `https://<public host>/api/auth/oidc/callback`, registered at the provider.
    pub redirect_uri: String,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// Claim with the user's groups/roles (dotted path, e.g. `realm_access.roles`).
    #[serde(default = "default_groups_claim")]
    pub role_claim: String,
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Provider group → Palisade role.
    #[serde(default)]
    pub role_map: BTreeMap<String, String>,
    /// Role of users in no mapped group; absent refuses them.
    #[serde(default)]
    pub default_role: Option<String>,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_username_claim() -> String {
    "preferred_username".into()
}

/// `[auth.ldap]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// Direct bind DN with `{username}`, e.g. `uid={username},ou=people,dc=example,dc=com`.
    #[serde(default)]
    pub user_dn_template: Option<String>,
    /// Service account for searching users (when there is no template).
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// `env::NAME` or `file::PATH`.
    #[serde(default)]
    pub bind_password: Option<String>,
    #[serde(default)]
    pub user_base: String,
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    #[serde(default)]
    pub group_base: String,
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    #[serde(default = "default_group_attribute")]
    pub group_attribute: String,
    #[serde(default = "default_email_attribute")]
    pub email_attribute: String,
    #[serde(default)]
    pub role_map: BTreeMap<String, String>,
    #[serde(default)]
    pub default_role: Option<String>,
    #[serde(default = "default_ldap_timeout")]
    pub timeout_secs: u64,
}

fn default_user_filter() -> String {
    "(uid={username})".into()
}

fn default_group_filter() -> String {
    "(&(objectClass=groupOfNames)(member={dn}))".into()
}

fn default_group_attribute() -> String {
    "cn".into()
}

fn default_email_attribute() -> String {
    "mail".into()
}

fn default_ldap_timeout() -> u64 {
    5
}

/// Resolves a secret reference: `env::NAME` reads an environment variable, `file::PATH` a file
/// (trailing newline removed). Inline secrets are refused so they never sit in config files.
pub fn resolve_secret(key: &'static str, reference: &str) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid { key, message };
    if let Some(name) = reference.strip_prefix("env::") {
        std::env::var(name).map_err(|_| invalid(format!("environment variable {name} is not set")))
    } else if let Some(path) = reference.strip_prefix("file::") {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| invalid(format!("cannot read {path}: {e}")))
    } else {
        Err(invalid(
            "give a reference (`env::NAME` or `file::PATH`), not the secret itself".into(),
        ))
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            registration: Registration::Closed,
            access_token_ttl_secs: 900,
            refresh_token_sliding_days: 7,
            refresh_token_absolute_days: 30,
            ip_limit_per_minute: 5,
            require_2fa: Vec::new(),
            scoped_token_ttl_secs: 60,
            compat_routes: true,
            password: PasswordConfig::default(),
            roles: BTreeMap::new(),
            oidc: None,
            ldap: None,
        }
    }
}

/// Password rules: NIST SP 800-63B-4 by default.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    /// Minimum length when the password is the only factor.
    pub min_length: u32,
    /// Minimum length for accounts with 2FA.
    pub min_length_with_2fa: u32,
    /// Minimum zxcvbn strength score, 0-4.
    pub min_strength: u8,
    /// Spec 003's upper/lower/digit rule (off by default, as NIST advises).
    pub require_composition: bool,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        Self {
            min_length: 15,
            min_length_with_2fa: 8,
            min_strength: 3,
            require_composition: false,
        }
    }
}

/// A custom role.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    pub permissions: Vec<String>,
    pub require_2fa: bool,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Public name of the embedded model.
    pub name: String,
    /// A GGUF file to serve instead of the default model.
    pub file: Option<PathBuf>,
    /// Model cache shared by data dirs (`PALISADE_MODEL_DIR`); default: the user's cache dir.
    pub dir: Option<PathBuf>,
    /// Tokens of context per conversation.
    pub context_size: u32,
    /// Conversations decoded together in one batch.
    pub parallel: u32,
    /// Requests that may wait for a free slot; beyond it they get 503 + Retry-After.
    pub queue_size: u32,
    /// Percent of `parallel + queue_size` one tenant may hold (at least `parallel`), so one
    /// tenant's flood leaves room for the others; free slots go to the least-served tenant.
    pub tenant_share_percent: u32,
    /// CPU threads for decoding (0 = all cores).
    pub threads: u32,
    pub default_max_tokens: u32,
    pub max_tokens_cap: u32,
    /// Fetch the default model on start when it is missing.
    pub auto_pull: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            name: "smollm2-135m".into(),
            file: None,
            dir: None,
            context_size: 2048,
            parallel: 8,
            queue_size: 32,
            tenant_share_percent: 75,
            threads: 0,
            default_max_tokens: 512,
            max_tokens_cap: 2048,
            auto_pull: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChatConfig {
    /// The model used when a request names none; `model.name` when absent.
    pub default_model: Option<String>,
    pub system_prompt: String,
    pub max_message_chars: u32,
    pub history_messages: u32,
    /// A model of the registry that writes the titles of new conversations (a background
    /// job); none: the first line of the first message is the title.
    pub title_model: Option<String>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            default_model: None,
            system_prompt: "You are a helpful, concise assistant.".into(),
            max_message_chars: 16_000,
            history_messages: 50,
            title_model: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest accepted request body.
    pub body_limit_bytes: u64,
    /// Reverse proxies (addresses or CIDR ranges, e.g. `"10.0.0.0/8"`) whose
    /// `X-Forwarded-For` is believed. From any other peer the header is ignored and the TCP
    /// peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Web origins (`https://chat.example.com`) whose pages may call the API from a browser
    /// (CORS). Empty: none but Palisade's own UI. Never `*` nor `null`.
    pub cors_origins: Vec<String>,
    /// A client that has not sent a whole request head within this many seconds is cut off
    /// (slow-header attacks); TLS handshakes get the same bound.
    pub header_read_timeout_secs: u64,
    /// A plain-HTTP listener (`IP:PORT`, e.g. `0.0.0.0:80`) that answers every request with a
    /// permanent redirect to the same path on HTTPS, and serves nothing else. Off when unset.
    pub redirect_listen: Option<String>,
    /// The HTTPS port the redirects name: the main listener's port when unset (set 443 when
    /// a port mapping or a load balancer puts the listener there).
    pub redirect_https_port: Option<u16>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 256 * 1024,
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            header_read_timeout_secs: 30,
            redirect_listen: None,
            redirect_https_port: None,
        }
    }
}

impl HttpConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for o in &self.cors_origins {
            let (scheme, rest) = o.split_once("://").unwrap_or(("", ""));
            let host_ok = !rest.is_empty()
                && !rest.contains('/')
                && !rest.contains('*')
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !matches!(scheme, "https" | "http") || !host_ok {
                return Err(ConfigError::Invalid {
                    key: "http.cors_origins",
                    message: format!(
                        "{o:?} is not an origin like `https://chat.example.com` (no path, no \
                         wildcard, not `null`)"
                    ),
                });
            }
        }
        if !(1..=300).contains(&self.header_read_timeout_secs) {
            return Err(ConfigError::Invalid {
                key: "http.header_read_timeout_secs",
                message: "must be in 1..=300".into(),
            });
        }
        self.redirect_addr()?;
        if self.redirect_https_port == Some(0) {
            return Err(ConfigError::Invalid {
                key: "http.redirect_https_port",
                message: "must be a port number, 1 to 65535".into(),
            });
        }
        Ok(())
    }

    /// The redirect listener's address, parsed.
    pub fn redirect_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        self.redirect_listen
            .as_deref()
            .map(|l| {
                l.parse().map_err(|_| ConfigError::Invalid {
                    key: "http.redirect_listen",
                    message: format!("{l:?} is not IP:PORT"),
                })
            })
            .transpose()
    }
}

/// The default data directory: `$XDG_DATA_HOME/palisade` (e.g. `~/.local/share/palisade`).
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("palisade")
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            listen: "127.0.0.1:8443".into(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            model: ModelConfig::default(),
            chat: ChatConfig::default(),
            http: HttpConfig::default(),
            models: BTreeMap::new(),
            providers: ProvidersConfig::default(),
            cache: CacheConfig::default(),
            guard: GuardSettings::default(),
            limits: LimitsConfig::default(),
            store: StoreConfig::default(),
            redis: RedisConfig::default(),
            audit: AuditConfig::default(),
            crypto: CryptoConfig::default(),
            retention: RetentionConfig::default(),
            jobs: JobsConfig::default(),
            metrics: MetricsConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// Configuration problems, each naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(String),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Values given on the command line; they win over every other layer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CliOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--db-backend`: `store.backend`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// The `[store]` keys a command-line flag may set.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StoreOverride {
    pub backend: StoreBackend,
}

/// Environment variables read by the binary itself, not part of the config tree.
const NON_CONFIG_ENV: &[&str] = &[
    "ADMIN_PASSWORD",
    "CONFIG",
    "LOG",
    "API_KEY",
    "SERVER",
    "TEST_MODEL",
];

impl Config {
    /// Loads defaults < `file` < `PALISADE_*` env (nested keys with `__`, e.g.
    /// `PALISADE_MODEL__PARALLEL`; `PALISADE_MODEL_DIR` is `model.dir`) < `cli`, then validates.
    pub fn load(file: Option<&Path>, cli: &CliOverrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Load(format!("file {} not found", f.display())));
            }
            fig = fig.merge(Toml::file(f));
        }
        let env = Env::prefixed("PALISADE_").ignore(NON_CONFIG_ENV).map(|k| {
            if k.as_str().eq_ignore_ascii_case("model_dir") {
                "model.dir".into()
            } else {
                k.as_str().replace("__", ".").into()
            }
        });
        fig = fig.merge(env).merge(Serialized::defaults(cli));
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| ConfigError::Invalid {
            key: "listen",
            message: format!("{:?} is not HOST:PORT with an IP address", self.listen),
        })
    }

    /// Refuses unsafe or impossible settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(u) = self.store.url.as_deref().filter(|u| !u.is_empty()) {
            let known = ["postgres://", "postgresql://", "env::", "file::"];
            if !known.iter().any(|k| u.starts_with(k)) {
                return Err(ConfigError::Invalid {
                    key: "store.url",
                    message: format!(
                        "{} is not a postgres:// URL (leave store.url unset for SQLite in the \
                         data dir)",
                        self.store.display_url().unwrap_or_default()
                    ),
                });
            }
        }
        self.audit.ship.validate()?;
        for t in &self.audit.record_content {
            let uuid_like = t.len() == 36
                && t.chars().enumerate().all(|(i, c)| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if t != "*" && !uuid_like {
                return Err(ConfigError::Invalid {
                    key: "audit.record_content",
                    message: format!("{t:?} is neither a tenant id nor \"*\""),
                });
            }
        }
        let has_url = self.store.url.as_deref().is_some_and(|u| !u.is_empty());
        if self.store.backend == StoreBackend::Postgresql && !has_url {
            return Err(ConfigError::Invalid {
                key: "store.backend",
                message: "`postgresql` needs `store.url` (postgres://USER@HOST:PORT/DB)".into(),
            });
        }
        if self.store.fallback == StoreFallback::Memory && self.store.backend != StoreBackend::Auto
        {
            return Err(ConfigError::Invalid {
                key: "store.fallback",
                message: format!(
                    "`memory` applies only to store.backend = \"auto\" (it is {:?}): an explicit \
                     backend never falls back",
                    self.store.backend
                ),
            });
        }
        let addr = self.listen_addr()?;
        let own_cert = self.tls.cert.is_some() || self.tls.key.is_some();
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Invalid {
                key: "tls",
                message: "set both `tls.cert` and `tls.key`, or neither".into(),
            });
        }
        if !own_cert && !addr.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                key: "tls",
                message: "a self-signed certificate is only for loopback; give `tls.cert` and \
                          `tls.key` to listen on a public address"
                    .into(),
            });
        }
        let m = &self.model;
        let checks: [(&'static str, bool, &str); 13] = [
            (
                "model.context_size",
                (256..=131_072).contains(&m.context_size),
                "256..=131072",
            ),
            ("model.parallel", (1..=64).contains(&m.parallel), "1..=64"),
            ("model.queue_size", m.queue_size <= 10_000, "0..=10000"),
            (
                "model.tenant_share_percent",
                (1..=100).contains(&m.tenant_share_percent),
                "1..=100",
            ),
            ("model.max_tokens_cap", m.max_tokens_cap >= 1, ">= 1"),
            (
                "model.default_max_tokens",
                (1..=m.max_tokens_cap).contains(&m.default_max_tokens),
                "1..=model.max_tokens_cap",
            ),
            (
                "limits.queue_seconds",
                self.limits.queue_seconds <= 300,
                "0..=300",
            ),
            (
                "chat.max_message_chars",
                (1..=1_000_000).contains(&self.chat.max_message_chars),
                "1..=1000000",
            ),
            (
                "audit.file.max_bytes",
                self.audit.file.max_bytes >= 4096,
                ">= 4096",
            ),
            ("retention.days", self.retention.days <= 3650, "0..=3650"),
            (
                "retention.check_every_secs",
                self.retention.check_every_secs >= 1,
                ">= 1",
            ),
            (
                "jobs.max_attempts",
                (1..=100).contains(&self.jobs.max_attempts),
                "1..=100",
            ),
            (
                "jobs.poll_ms",
                (10..=60_000).contains(&self.jobs.poll_ms),
                "10..=60000",
            ),
        ];
        for (key, ok, range) in checks {
            if !ok {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("must be in {range}"),
                });
            }
        }
        let pw = &self.auth.password;
        if !(8..=128).contains(&pw.min_length)
            || !(8..=pw.min_length).contains(&pw.min_length_with_2fa)
        {
            return Err(ConfigError::Invalid {
                key: "auth.password",
                message: "min_length must be 8..=128 and min_length_with_2fa 8..=min_length".into(),
            });
        }
        if pw.min_strength > 4 {
            return Err(ConfigError::Invalid {
                key: "auth.password.min_strength",
                message: "must be 0..=4".into(),
            });
        }
        if !(10..=3600).contains(&self.auth.scoped_token_ttl_secs) {
            return Err(ConfigError::Invalid {
                key: "auth.scoped_token_ttl_secs",
                message: "must be in 10..=3600".into(),
            });
        }
        for (name, spec) in &self.models {
            if !spec.name.is_empty() && &spec.name != name {
                return Err(ConfigError::Invalid {
                    key: "models",
                    message: format!("`models.{name}` sets a different `name`; leave it out"),
                });
            }
        }
        if let Some(d) = &self.chat.default_model {
            if d != &self.model.name && !self.models.contains_key(d) {
                return Err(ConfigError::Invalid {
                    key: "chat.default_model",
                    message: format!("`{d}` is neither `model.name` nor a `[models.…]` entry"),
                });
            }
        }
        if self.cache.enabled
            && self.cache.backend == CacheBackend::Redis
            && self.cache.redis_url.is_none()
            && self.redis.url.is_none()
        {
            return Err(ConfigError::Invalid {
                key: "cache.redis_url",
                message: "the redis cache backend needs `redis.url` (or `cache.redis_url`)".into(),
            });
        }
        if self.limits.backend == LimitsBackend::Redis && self.redis.url.is_none() {
            return Err(ConfigError::Invalid {
                key: "limits.backend",
                message: "the redis limits backend needs `redis.url`".into(),
            });
        }
        if self.providers.breaker_failures == 0 || self.providers.breaker_cooldown_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "providers",
                message: "`breaker_failures` and `breaker_cooldown_secs` must be at least 1".into(),
            });
        }
        let g = &self.guard;
        for name in g.models.keys() {
            if name != &self.model.name && !self.models.contains_key(name) {
                return Err(ConfigError::Invalid {
                    key: "guard.models",
                    message: format!("`{name}` is neither `model.name` nor a `[models.…]` entry"),
                });
            }
        }
        let thresholds = std::iter::once(g.injection_threshold)
            .chain(g.tenants.values().filter_map(|t| t.injection_threshold));
        for t in thresholds {
            if !(t > 0.0 && t <= 1.0) {
                return Err(ConfigError::Invalid {
                    key: "guard.injection_threshold",
                    message: "must be greater than 0 and at most 1".into(),
                });
            }
        }
        let zones = [&g.internal, &g.external]
            .into_iter()
            .chain(g.tenants.values().flat_map(|t| [&t.internal, &t.external]));
        for z in zones {
            if z.toxicity_min_severity
                .is_some_and(|s| !(1..=3).contains(&s))
            {
                return Err(ConfigError::Invalid {
                    key: "guard.toxicity_min_severity",
                    message: "must be 1, 2 or 3".into(),
                });
            }
        }
        if !(16..=4096).contains(&g.output_window) {
            return Err(ConfigError::Invalid {
                key: "guard.output_window",
                message: "must be in 16..=4096".into(),
            });
        }
        self.metrics.validate()?;
        self.telemetry.validate()?;
        self.http.validate()?;
        self.tls.validate()?;
        if self.http.body_limit_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "http.body_limit_bytes",
                message: "must be at least 1024".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)]
    fn layers_and_validation() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "p.toml",
                "listen = \"127.0.0.1:9000\"\n[model]\nparallel = 4\n",
            )?;
            jail.set_env("PALISADE_MODEL__PARALLEL", "2");
            jail.set_env("PALISADE_ADMIN_PASSWORD", "ignored");
            let cli = CliOverrides {
                listen: Some("127.0.0.1:0".into()),
                ..CliOverrides::default()
            };
            let c = Config::load(Some(Path::new("p.toml")), &cli).map_err(|e| e.to_string())?;
            assert_eq!(c.listen, "127.0.0.1:0");
            assert_eq!(c.model.parallel, 2);

            jail.set_env("PALISADE_MODEL__PARALLEL", "0");
            assert!(Config::load(None, &cli).is_err());
            jail.set_env("PALISADE_MODEL__PARALLEL", "2");
            jail.set_env("PALISADE_LISTEN", "0.0.0.0:8443");
            assert!(Config::load(None, &CliOverrides::default()).is_err());
            jail.create_file("bad.toml", "nonsense_key = 1\n")?;
            assert!(Config::load(Some(Path::new("bad.toml")), &cli).is_err());
            Ok(())
        });
    }

    #[test]
    fn cors_origins_are_exact_origins() {
        let with = |o: &str| HttpConfig {
            cors_origins: vec![o.to_string()],
            ..HttpConfig::default()
        };
        for ok in [
            "https://chat.example.com",
            "http://127.0.0.1:3000",
            "https://[::1]:8443",
        ] {
            assert!(with(ok).validate().is_ok(), "{ok}");
        }
        for bad in [
            "*",
            "null",
            "https://*.example.com",
            "https://chat.example.com/",
            "https://chat.example.com/app",
            "chat.example.com",
            "ftp://chat.example.com",
            "https://",
        ] {
            assert!(with(bad).validate().is_err(), "{bad}");
        }
        let slow = HttpConfig {
            header_read_timeout_secs: 0,
            ..HttpConfig::default()
        };
        assert!(slow.validate().is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn db_backend_flag_and_fallback() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "pg.toml",
                "[store]\nurl = \"postgres://p@127.0.0.1:1/x\"\nfallback = \"memory\"\n",
            )?;
            let none = CliOverrides::default();
            let c = Config::load(Some(Path::new("pg.toml")), &none).map_err(|e| e.to_string())?;
            assert_eq!(c.store.backend, StoreBackend::Auto);
            assert_eq!(c.store.fallback, StoreFallback::Memory);
            // The flag wins over the file and keeps the file's other [store] keys.
            let flag = |b| CliOverrides {
                store: Some(StoreOverride { backend: b }),
                ..CliOverrides::default()
            };
            jail.create_file("plain.toml", "[store]\nurl = \"postgres://p@h/x\"\n")?;
            let c = Config::load(Some(Path::new("plain.toml")), &flag(StoreBackend::Memory))
                .map_err(|e| e.to_string())?;
            assert_eq!(c.store.backend, StoreBackend::Memory);
            assert_eq!(c.store.url.as_deref(), Some("postgres://p@h/x"));
            // An explicit backend never falls back.
            let e = Config::load(Some(Path::new("pg.toml")), &flag(StoreBackend::Postgresql))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("store.fallback"), "{e}");
            // postgresql without a URL is refused; env sets the backend too.
            jail.set_env("PALISADE_STORE__BACKEND", "postgresql");
            let e = Config::load(None, &none)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("store.url"), "{e}");
            jail.set_env("PALISADE_STORE__BACKEND", "memory");
            let c = Config::load(None, &none).map_err(|e| e.to_string())?;
            assert_eq!(c.store.backend, StoreBackend::Memory);
            jail.set_env("PALISADE_STORE__BACKEND", "mongodb");
            assert!(Config::load(None, &none).is_err());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn guard_model_settings_name_a_configured_model() {
        figment::Jail::expect_with(|jail| {
            let cli = CliOverrides::default();
            jail.create_file(
                "ok.toml",
                "[guard.models.smollm2-135m]\nhardened_prompt = false\n",
            )?;
            let c = Config::load(Some(Path::new("ok.toml")), &cli).map_err(|e| e.to_string())?;
            assert!(!c.guard.hardened_prompt_for("smollm2-135m"));
            assert!(c.guard.hardened_prompt_for("other"));
            jail.create_file(
                "typo.toml",
                "[guard.models.smolm2]\nhardened_prompt = false\n",
            )?;
            let err = Config::load(Some(Path::new("typo.toml")), &cli)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("smolm2"), "{err}");
            jail.create_file(
                "bad.toml",
                "[guard.models.smollm2-135m]\nhardened = false\n",
            )?;
            assert!(Config::load(Some(Path::new("bad.toml")), &cli).is_err());
            Ok(())
        });
    }
}
