//! Wiring: turns configuration into running adapters and hands them to the HTTP router. The one
//! place where the store, the auth service, the engine and the HTTP layer meet.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use palisade_auth::{
    AuthRepos, AuthService, AuthSettings, CreateUser, KeyRing, PasswordPolicy, RegistrationMode,
    ThrottlePolicy,
};
use palisade_config::{
    CacheBackend, CliOverrides, Config, ModelSpec, ProviderKind, Registration, StoreBackend,
    StoreFallback, StoreOverride, TrustZone,
};
use palisade_core::access::{CustomRole, RoleRegistry};
use palisade_core::chat::{ChatPolicy, ChatService};
use palisade_core::ids::DEFAULT_TENANT;
use palisade_core::models::ModelRegistry;
use palisade_core::ports::UserRepository;
use palisade_core::provider::ChatProvider;
use palisade_http::auth::IpLimiter;
use palisade_http::{AppParts, AppState, Readiness};
use palisade_llama::{EngineConfig, LlamaEngine};
use palisade_llm::cache::ResponseCache;
use palisade_llm::{Router, RouterSettings};
use palisade_store::Store;
use rand::RngCore;

use crate::cli::{
    AuditCommand, Cli, Command, CommonArgs, ConfigCommand, DbCommand, GuardCommand, KeysCommand,
    LogFormat, ModelCommand, UserCommand,
};

/// Runs a command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Chat(a) => crate::client::chat::run(a).await,
        Command::Key(c) => crate::client::admin::run_key(c).await,
        Command::Tenant(c) => crate::client::admin::run_tenant(c).await,
        Command::User(UserCommand::Create(a)) if a.server.is_some() => {
            crate::client::admin::run_user(UserCommand::Create(a)).await
        }
        Command::User(
            c @ (UserCommand::List(_)
            | UserCommand::Disable(_)
            | UserCommand::Enable(_)
            | UserCommand::SetRole(_)
            | UserCommand::ResetPassword(_)
            | UserCommand::Sessions(_)
            | UserCommand::Revoke(_)),
        ) => crate::client::admin::run_user(c).await,
        Command::Openapi => {
            println!("{}", palisade_http::openapi::json());
            Ok(0)
        }
        Command::Audit(c) => {
            init_logging(LogFormat::Text);
            match c {
                AuditCommand::Verify(a) => crate::audit::verify(a).await,
                AuditCommand::Checkpoint(a) => crate::audit::checkpoint_cmd(a).await,
                AuditCommand::Export(a) => crate::audit::export_cmd(a).await,
                AuditCommand::Tail(a) => crate::client::admin::run_audit_tail(a).await,
            }
        }
        Command::Db(DbCommand::Migrate(a)) => {
            init_logging(LogFormat::Text);
            let cfg = load_config(&a.common, None)?;
            anyhow::ensure!(
                cfg.store.backend != StoreBackend::Memory,
                "store.backend = \"memory\" keeps no database: there is nothing to migrate"
            );
            match cfg
                .store
                .postgres_url()
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                // Once per deploy, before the replicas start (they migrate too, under the same
                // advisory lock, so a forgotten run is harmless).
                Some(url) => {
                    let n = Store::migrate_postgres(&url)
                        .await
                        .map_err(|e| anyhow::anyhow!("{}: {e}", store_location(&cfg)))?;
                    println!(
                        "database {} is at the current schema ({n} migration(s) applied now)",
                        store_location(&cfg)
                    );
                }
                None => {
                    let (_store, _auth) = open_identity(&cfg).await?;
                    println!("database {} is at the current schema", store_location(&cfg));
                }
            }
            Ok(0)
        }
        Command::Db(DbCommand::Copy(a)) => {
            init_logging(LogFormat::Text);
            let cfg = load_config(&a.common, None)?;
            db_copy(&cfg, a.from.as_deref(), a.to.as_deref()).await?;
            Ok(0)
        }
        other => run_local(other).await.map(|()| 0),
    }
}

/// `palisade db copy`: the SQLite database into PostgreSQL, with a progress bar per table.
async fn db_copy(cfg: &Config, from: Option<&str>, to: Option<&str>) -> anyhow::Result<()> {
    let from = match from {
        Some(f) => PathBuf::from(f.strip_prefix("sqlite://").unwrap_or(f)),
        None => cfg.data_dir.join("palisade.db"),
    };
    if !from.is_file() {
        anyhow::bail!("no SQLite database at {}", from.display());
    }
    let to = match to {
        // A reference is resolved; a plain URL is taken as it is (prefer a reference when it
        // holds a password: command lines are visible to other local users).
        Some(t) if t.starts_with("env::") || t.starts_with("file::") => {
            palisade_config::resolve_secret("--to", t)?
        }
        Some(t) => t.to_string(),
        None => cfg.store.resolved_url()?.ok_or_else(|| {
            anyhow::anyhow!(
                "name the PostgreSQL database with --to postgres://... (or [store] url)"
            )
        })?,
    };
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        anyhow::bail!("--to must be a postgres:// URL");
    }
    let shown = palisade_config::hide_password(&to);
    let source = Store::open_sqlite(&from)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
    println!("copying {} into {shown}", from.display());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("  {msg:<22} [{bar:30}] {pos}/{len} rows")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = palisade_store::copy_sqlite_to_postgres(&source, &to, |table, done, total| {
        if done == 0 {
            bar.set_length(total);
            bar.set_message(table.to_string());
        }
        bar.set_position(done);
    })
    .await
    .map_err(|e| anyhow::anyhow!("copy into {shown}: {e}"))?;
    bar.finish_and_clear();
    let rows: u64 = report.tables.iter().map(|(_, n)| n).sum();
    for (table, n) in report.tables.iter().filter(|(_, n)| *n > 0) {
        println!("  {table:<22} {n:>8} rows");
    }
    println!(
        "copied {rows} rows of {} tables in one transaction.\n\
         Next: set [store] url to that database, keep this data dir's master.key, audit.key and \
         keys/ for every replica, and check the trail there with `palisade audit verify`.",
        report.tables.len()
    );
    Ok(())
}

async fn run_local(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(a) => {
            let cfg = load_config(&a.common, a.listen.clone())?;
            let traces = crate::otlp::layer(&cfg.telemetry)?;
            let (layer, traces) = match traces {
                Some((l, t)) => (Some(l), Some(t)),
                None => (None, None),
            };
            init_logging_with(a.log_format, layer);
            let served = serve(cfg).await;
            if let Some(t) = traces {
                t.shutdown().await;
            }
            served
        }
        Command::User(UserCommand::Create(a)) => {
            init_logging(LogFormat::Text);
            let cfg = load_config(&a.common, None)?;
            let password = read_password(a.password_stdin)?;
            let (_store, auth) = open_identity(&cfg).await?;
            let role = if a.admin { "admin".to_string() } else { a.role };
            let user = auth
                .create_user(CreateUser {
                    email: a.email,
                    ..CreateUser::local(DEFAULT_TENANT, &a.username, &password, &role)
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "created user {} ({}) with id {}",
                user.username, user.role, user.id
            );
            Ok(())
        }
        Command::User(UserCommand::Import(a)) => {
            init_logging(LogFormat::Text);
            let cfg = load_config(&a.common, None)?;
            let (_store, auth) = open_identity(&cfg).await?;
            crate::import::import_users(&auth, &a.file).await
        }
        Command::Keys(KeysCommand::Rotate(a)) => {
            let cfg = load_config(&a.common, None)?;
            create_private_dir(&cfg.data_dir)?;
            let kid =
                KeyRing::rotate(&cfg.data_dir.join("keys")).map_err(|e| anyhow::anyhow!("{e}"))?;
            if cfg.store.display_url().is_some() || cfg.data_dir.join("palisade.db").exists() {
                let (store, _auth) = open_identity(&cfg).await?;
                use palisade_core::ports::SecurityEventSink;
                let event = palisade_core::identity::SecurityEvent::new(
                    palisade_core::identity::SecurityEventKind::SigningKeyRotated,
                )
                .detail(serde_json::json!({ "kid": kid.to_string(), "by": "cli" }));
                if let Err(e) = store.record(event).await {
                    eprintln!(
                        "warning: the rotation could not be recorded in the audit trail: {e}"
                    );
                }
            }
            println!(
                "new signing key {kid}; tokens of the previous key stay valid until they expire"
            );
            Ok(())
        }
        Command::Keys(KeysCommand::RotateMaster(a)) => crate::masterkey::rotate(a).await,
        Command::Keys(KeysCommand::Shred(a)) => crate::masterkey::shred(a).await,
        Command::Keys(KeysCommand::Status(a)) => crate::masterkey::status(a).await,
        Command::Model(ModelCommand::Pull(a)) => crate::model::pull(a).await,
        Command::Guard(GuardCommand::Check(a)) => {
            let cfg = load_config(&a.common, None)?;
            let guard = build_guard(&cfg)?;
            crate::guardcli::check(&guard, &a)
        }
        Command::Guard(GuardCommand::Eval(a)) => {
            let cfg = load_config(&a.common, None)?;
            let guard = build_guard(&cfg)?;
            crate::guardcli::eval(&guard, &a)
        }
        Command::Config(ConfigCommand::Validate(a)) => {
            let cfg = load_config(&a.common, None)?;
            let roles: std::collections::BTreeSet<String> = role_registry(&cfg)?
                .all()
                .map(|r| r.name.as_str().to_string())
                .collect();
            for spec in configured_models(&cfg, None) {
                palisade_core::models::validate_spec(&spec, &roles)
                    .map_err(|e| anyhow::anyhow!("configuration `models.{}`: {e}", spec.name))?;
            }
            crate::limits::LimitRules::from_config(&cfg.limits)?;
            cfg.redis.resolved_url()?;
            println!("configuration is valid");
            let mut shown = cfg.clone();
            shown.redis.url = cfg.redis.display_url();
            shown.cache.redis_url = shown.cache.redis_url.map(|u| {
                palisade_config::RedisConfig { url: Some(u) }
                    .display_url()
                    .unwrap_or_default()
            });
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        Command::Chat(_)
        | Command::Key(_)
        | Command::Tenant(_)
        | Command::Db(_)
        | Command::Openapi
        | Command::Audit(_) => Ok(()),
        Command::User(_) => Ok(()),
    }
}

fn init_logging(format: LogFormat) {
    init_logging_with(format, None);
}

/// The process's subscriber: the log (filtered by `PALISADE_LOG`, default `info`) and, when
/// traces are exported, the trace layer with its own filter (spans only).
fn init_logging_with(
    format: LogFormat,
    traces: Option<crate::otlp::BoxedLayer<tracing_subscriber::Registry>>,
) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Every log line passes the guard's scrubber: no secret, token or personal data in logs.
    let writer = palisade_guard::scrub::ScrubbingMakeWriter::new(std::io::stderr);
    let log = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(log)
        .try_init();
}

/// Request limits and budgets of `[limits]`, counted in this process or, with `redis.url`
/// (or `limits.backend = "redis"`), in Redis shared by every replica.
struct Limits {
    backend: Arc<dyn palisade_limits::Backend>,
    requests: Arc<dyn palisade_http::limits::RequestLimits>,
    budgets: Arc<dyn palisade_core::quota::Quotas>,
    overrides: Arc<dyn palisade_core::limit_policies::LimitOverrides>,
}

async fn build_limits(cfg: &Config) -> anyhow::Result<Option<Limits>> {
    use palisade_config::LimitsBackend;
    let l = &cfg.limits;
    if !l.enabled {
        tracing::warn!("limits are turned off (limits.enabled = false)");
        return Ok(None);
    }
    let rules = Arc::new(crate::limits::LimitRules::from_config(l)?);
    let url = cfg.redis.resolved_url()?;
    let backend: Arc<dyn palisade_limits::Backend> = match (l.backend, url) {
        (LimitsBackend::Memory, _) | (LimitsBackend::Auto, None) => {
            Arc::new(palisade_limits::MemoryBackend::new())
        }
        (_, Some(url)) => {
            let shown = cfg.redis.display_url().unwrap_or_default();
            let b = palisade_limits::RedisBackend::connect(&url)
                .await
                .map_err(|e| anyhow::anyhow!("limits: Redis at {shown}: {e}"))?;
            tracing::info!(redis = %shown, "limit counters are shared in Redis");
            Arc::new(b)
        }
        (LimitsBackend::Redis, None) => anyhow::bail!("limits.backend = \"redis\" needs redis.url"),
    };
    Ok(Some(Limits {
        backend: backend.clone(),
        requests: Arc::new(crate::limits::RouteLimits::new(
            backend.clone(),
            rules.clone(),
        )),
        budgets: Arc::new(crate::limits::Budgets::new(backend, rules.clone())),
        overrides: rules,
    }))
}

/// The LLM firewall from `[guard]`, with its extra word lists read from disk.
fn build_guard(cfg: &Config) -> anyhow::Result<Arc<palisade_guard::PalisadeGuard>> {
    let mut lists = Vec::new();
    for path in &cfg.guard.toxicity_lists {
        lists.push(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the toxicity list {path}"))?,
        );
    }
    let guard = palisade_guard::PalisadeGuard::new(cfg.guard.clone(), &lists)
        .map_err(|e| anyhow::anyhow!("guard.toxicity_lists: {e}"))?;
    if !cfg.guard.enabled {
        tracing::warn!("the content guard is turned off (guard.enabled = false)");
    }
    Ok(Arc::new(guard))
}

pub(crate) fn load_config(common: &CommonArgs, listen: Option<String>) -> anyhow::Result<Config> {
    use crate::cli::DbBackend;
    let cli = CliOverrides {
        data_dir: common.data_dir.clone(),
        listen,
        store: common.db_backend.map(|b| StoreOverride {
            backend: match b {
                DbBackend::Auto => StoreBackend::Auto,
                DbBackend::Postgresql => StoreBackend::Postgresql,
                DbBackend::Sqlite => StoreBackend::Sqlite,
                DbBackend::Memory => StoreBackend::Memory,
            },
        }),
    };
    Ok(Config::load(common.config.as_deref(), &cli)?)
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if !from_stdin && stdin.is_terminal() {
        anyhow::bail!("pass the password on standard input with --password-stdin");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password")?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    anyhow::ensure!(!pw.is_empty(), "no password given on standard input");
    Ok(pw)
}

/// The configured database (`store.backend`): PostgreSQL when `store.url` is set (and the
/// backend is not `sqlite`), else SQLite in the data dir; in memory for `store.backend =
/// "memory"` or `memory` (an `--embedded` run without a data dir). `create`: a missing SQLite
/// file is created (else it is an error: the tools that read an existing database).
pub(crate) async fn open_store(cfg: &Config, memory: bool, create: bool) -> anyhow::Result<Store> {
    let in_memory = cfg.store.backend == StoreBackend::Memory;
    anyhow::ensure!(
        create || !in_memory,
        "store.backend = \"memory\": there is no kept database to open"
    );
    let url = cfg
        .store
        .postgres_url()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(url) = url {
        let shown = cfg.store.display_url().unwrap_or_default();
        return Store::open_postgres(&url, &pg_settings(&cfg.store))
            .await
            .map_err(|e| anyhow::anyhow!("opening {shown}: {e}"));
    }
    if memory || in_memory {
        return Store::open_in_memory()
            .await
            .map_err(|e| anyhow::anyhow!("opening the in-memory database: {e}"));
    }
    let db = cfg.data_dir.join("palisade.db");
    anyhow::ensure!(
        create || db.exists(),
        "no database at {} (give --data-dir or --config)",
        db.display()
    );
    Store::open_sqlite(&db)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", db.display()))
}

/// Why `/readyz` says `degraded` when the in-memory stand-in serves (public: what, not where).
const FALLBACK_REASON: &str =
    "in-memory stand-in (store.fallback): the configured database did not open at start; \
     nothing is kept after the server stops";

/// The database a server runs on: [`open_store`], and with `store.backend = "auto"` and
/// `store.fallback = "memory"` an in-memory stand-in when that fails, announced loudly; the
/// second value is then the reason `/readyz` reports. Any other failure stops the start with
/// the cause and the setting that would have let it run degraded.
async fn open_serving_store(cfg: &Config, memory: bool) -> anyhow::Result<(Store, Option<String>)> {
    let err = match open_store(cfg, memory, true).await {
        Ok(store) => return Ok((store, None)),
        Err(e) => e,
    };
    if cfg.store.backend != StoreBackend::Auto || cfg.store.fallback != StoreFallback::Memory {
        let hint = if cfg.store.backend == StoreBackend::Auto {
            " (the server does not start without its database; `store.fallback = \"memory\"` \
             would serve from memory instead, keeping nothing)"
        } else {
            ""
        };
        anyhow::bail!("{err}{hint}");
    }
    tracing::error!(
        error = %err,
        "THE DATABASE DID NOT OPEN: serving from an in-memory database (store.fallback = \"memory\"); \
         accounts, conversations and the audit trail of this run are lost when it stops"
    );
    eprintln!(
        "WARNING: {err}\nWARNING: serving from an IN-MEMORY database (store.fallback = \"memory\"): \
         nothing of this run is kept; /readyz reports `degraded`"
    );
    let store = Store::open_in_memory()
        .await
        .map_err(|e| anyhow::anyhow!("opening the in-memory database: {e}"))?;
    Ok((store, Some(FALLBACK_REASON.into())))
}

/// `[store]` as the store's PostgreSQL settings.
pub(crate) fn pg_settings(s: &palisade_config::StoreConfig) -> palisade_store::PgSettings {
    palisade_store::PgSettings {
        max_connections: s.max_connections,
        acquire_timeout: std::time::Duration::from_secs(s.acquire_timeout_secs.max(1)),
        statement_timeout: std::time::Duration::from_secs(s.statement_timeout_secs),
        role: Some(s.role.clone()).filter(|r| !r.is_empty()),
    }
}

/// Where the database is, for messages: the PostgreSQL URL without its password, the file, or
/// memory.
pub(crate) fn store_location(cfg: &Config) -> String {
    match cfg.store.backend {
        StoreBackend::Memory => "in memory (nothing is kept after the process ends)".into(),
        StoreBackend::Sqlite => cfg.data_dir.join("palisade.db").display().to_string(),
        StoreBackend::Auto | StoreBackend::Postgresql => cfg
            .store
            .display_url()
            .unwrap_or_else(|| cfg.data_dir.join("palisade.db").display().to_string()),
    }
}

/// Creates the data dir (owner-only) and opens the store and the identity service.
async fn open_identity(cfg: &Config) -> anyhow::Result<(Store, Arc<AuthService>)> {
    create_private_dir(&cfg.data_dir)?;
    let store = open_store(cfg, false, true).await?;
    open_identity_in(cfg, store, None)
}

/// As [`open_identity`] over an opened `store` (keys and certificate in `cfg.data_dir` even
/// when the database lives in memory); `shared`: where revoked tokens are kept (Redis for a
/// server with `redis.url`; this process's memory otherwise).
fn open_identity_in(
    cfg: &Config,
    store: Store,
    shared: Option<Arc<dyn palisade_core::shared::SharedState>>,
) -> anyhow::Result<(Store, Arc<AuthService>)> {
    let (master_keys, master_source) = crate::masterkey::load(cfg)?;
    let store = store
        .with_audit_key(crate::audit::load_key(cfg)?)
        .with_master_keys(master_keys, Some(master_source));
    let keys = KeyRing::load_or_create(&cfg.data_dir.join("keys"), "palisade", "palisade")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let a = &cfg.auth;
    let settings = AuthSettings {
        access_ttl_secs: a.access_token_ttl_secs as i64,
        refresh_sliding_secs: a.refresh_token_sliding_days as i64 * 86_400,
        refresh_absolute_secs: a.refresh_token_absolute_days as i64 * 86_400,
        registration: match a.registration {
            Registration::Open => RegistrationMode::Open,
            Registration::Invite => RegistrationMode::Invite,
            Registration::Closed => RegistrationMode::Closed,
        },
        password: PasswordPolicy {
            min_length: a.password.min_length as usize,
            min_length_with_2fa: a.password.min_length_with_2fa as usize,
            min_strength: a.password.min_strength,
            require_composition: a.password.require_composition,
            ..PasswordPolicy::default()
        },
        throttle: ThrottlePolicy::default(),
        scoped_ttl_secs: a.scoped_token_ttl_secs as i64,
        scoped_max_tokens_cap: cfg.model.max_tokens_cap,
        totp_issuer: "Palisade".into(),
        certificate_accounts: cfg.tls.client_accounts.clone(),
    };
    let roles = role_registry(cfg)?;
    let repos = AuthRepos {
        users: Arc::new(store.clone()),
        tenants: Arc::new(store.clone()),
        tokens: Arc::new(store.clone()),
        api_keys: Arc::new(store.clone()),
        links: Arc::new(store.clone()),
        events: Arc::new(store.clone()),
        invites: Arc::new(store.clone()),
    };
    let mut auth = AuthService::new(repos, Arc::new(keys), Arc::new(roles), settings)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(shared) = shared {
        auth = auth.with_shared(shared);
    }
    if let Some(o) = &a.oidc {
        let secret = o
            .client_secret
            .as_deref()
            .map(|r| palisade_config::resolve_secret("auth.oidc.client_secret", r))
            .transpose()?;
        let oidc = palisade_auth::oidc::Oidc::new(palisade_auth::oidc::OidcSettings {
            issuer: o.issuer.trim_end_matches('/').to_string(),
            client_id: o.client_id.clone(),
            client_secret: secret,
            audience: o.audience.clone().unwrap_or_else(|| o.client_id.clone()),
            redirect_uri: o.redirect_uri.clone(),
            scopes: o.scopes.clone(),
            role_claim: o.role_claim.clone(),
            username_claim: o.username_claim.clone(),
            role_map: o.role_map.clone(),
            default_role: o.default_role.clone(),
        })
        .map_err(|e| anyhow::anyhow!("configuration `auth.oidc`: {e}"))?;
        auth = auth.with_oidc(oidc);
    }
    if let Some(l) = &a.ldap {
        let bind_password = l
            .bind_password
            .as_deref()
            .map(|r| palisade_config::resolve_secret("auth.ldap.bind_password", r))
            .transpose()?;
        let ldap = palisade_auth::ldap::Ldap::new(palisade_auth::ldap::LdapSettings {
            url: l.url.clone(),
            user_dn_template: l.user_dn_template.clone(),
            bind_dn: l.bind_dn.clone(),
            bind_password,
            user_base: l.user_base.clone(),
            user_filter: l.user_filter.clone(),
            group_base: l.group_base.clone(),
            group_filter: l.group_filter.clone(),
            group_attribute: l.group_attribute.clone(),
            email_attribute: l.email_attribute.clone(),
            role_map: l.role_map.clone(),
            default_role: l.default_role.clone(),
            timeout_secs: l.timeout_secs,
        })
        .map_err(|e| anyhow::anyhow!("configuration `auth.ldap`: {e}"))?;
        auth = auth.with_ldap(ldap);
    }
    Ok((store, Arc::new(auth)))
}

/// The built-in roles plus the configured ones; refuses unknown permissions.
fn role_registry(cfg: &Config) -> anyhow::Result<RoleRegistry> {
    let custom: Vec<CustomRole> = cfg
        .auth
        .roles
        .iter()
        .map(|(name, r)| CustomRole {
            name: name.clone(),
            permissions: r.permissions.clone(),
            require_2fa: r.require_2fa,
            description: r.description.clone(),
        })
        .collect();
    RoleRegistry::new(&custom, &cfg.auth.require_2fa)
        .map_err(|e| anyhow::anyhow!("configuration key `auth.roles`: {e}"))
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(())
}

/// Creates the first admin when the database has no user yet.
async fn bootstrap_admin(store: &Store, auth: &AuthService) -> anyhow::Result<()> {
    if store
        .count_users()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        > 0
    {
        return Ok(());
    }
    let (password, generated) = match std::env::var("PALISADE_ADMIN_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => {
            let mut b = [0u8; 18];
            rand::rngs::OsRng.fill_bytes(&mut b);
            (
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
                true,
            )
        }
    };
    auth.create_user(CreateUser {
        // A generated password is shown once and must be replaced at the first login.
        must_change_password: generated,
        skip_policy: generated,
        ..CreateUser::local(DEFAULT_TENANT, "admin", &password, "admin")
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the first admin: {e}"))?;
    let mut out = std::io::stdout().lock();
    if generated {
        writeln!(
            out,
            "created the first admin: username `admin`, one-time password: {password}"
        )?;
        writeln!(
            out,
            "  (shown only now; you will be asked to choose a new one at the first login)"
        )?;
    } else {
        writeln!(
            out,
            "created the first admin: username `admin`, password from PALISADE_ADMIN_PASSWORD"
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The database, and Redis when limits (and the other shared state) live there.
struct StoreReadiness {
    store: Store,
    /// Why the database is a stand-in (`store.fallback`), reported as `degraded`.
    degraded: Option<String>,
    limits: Option<Arc<dyn palisade_limits::Backend>>,
    shared: Arc<dyn palisade_core::shared::SharedState>,
}

#[async_trait::async_trait]
impl Readiness for StoreReadiness {
    async fn checks(&self) -> Vec<palisade_http::routes::health::Check> {
        use palisade_http::routes::health::Check;
        let at = std::time::Instant::now();
        let mut checks =
            vec![Check::took("database", self.store.ping().await, at)
                .degraded(self.degraded.clone())];
        let at = std::time::Instant::now();
        // `None`: counters in this process's memory, nothing to reach.
        let limits = match &self.limits {
            Some(b) => b.ping().await,
            None => None,
        };
        match limits {
            Some(ok) => checks.push(Check::took("redis", ok, at)),
            // Tickets and revocations may live in Redis without the limits.
            None if self.shared.is_shared() => {
                let ok = self.shared.ping().await.is_ok();
                checks.push(Check::took("redis", ok, at));
            }
            None => {}
        }
        checks
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    serve_with(cfg, None).await
}

/// What an in-process (`palisade chat --embedded`) server tells its client.
pub struct Embedded {
    pub url: String,
    pub data_dir: PathBuf,
    pub username: String,
    pub password: String,
}

/// How an embedded server is run: where the database is, and whom to tell when it listens.
pub struct EmbeddedRun {
    pub memory: bool,
    pub ready: tokio::sync::oneshot::Sender<Embedded>,
}

/// The local account of embedded runs: an administrator whose random password is kept in the
/// data dir (0600), so a kept `--data-dir` signs in again next time.
async fn embedded_user(
    cfg: &Config,
    store: &Store,
    auth: &AuthService,
) -> anyhow::Result<(String, String)> {
    let secret = cfg.data_dir.join("embedded-user.secret");
    let password = match std::fs::read_to_string(&secret) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            let mut b = [0u8; 24];
            rand::rngs::OsRng.fill_bytes(&mut b);
            let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
            write_private_file(&secret, p.as_bytes())?;
            p
        }
    };
    if store
        .find_by_username(DEFAULT_TENANT, "local")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .is_none()
    {
        auth.create_user(CreateUser {
            skip_policy: true,
            ..CreateUser::local(DEFAULT_TENANT, "local", &password, "admin")
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the local user: {e}"))?;
    }
    Ok(("local".into(), password))
}

fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// The job runner (retention purge, conversation titles, audit shipping) and the schedules: a
/// `retention_purge` job every `retention.check_every_secs` and, with `[audit.ship]`, an
/// `audit_ship` job every `audit.ship.every_secs`, each unless one is pending.
fn start_jobs(
    cfg: &Config,
    store: &Store,
    chat: &Arc<ChatService>,
    retention: &Arc<palisade_core::retention::Retention>,
    ship: Option<Arc<crate::audit_ship::ShipJob>>,
) {
    use palisade_core::jobs::JobRunner;
    let mut runner = JobRunner::new(
        Arc::new(store.clone()),
        Duration::from_secs(cfg.jobs.backoff_secs),
    )
    .with_events(Arc::new(store.clone()))
    .handle(Arc::new(palisade_core::retention::PurgeJob(
        retention.clone(),
    )))
    .handle(Arc::new(palisade_core::chat::TitleJob(chat.clone())));
    if let Some(ship) = ship {
        runner = runner.handle(ship);
        schedule(
            store,
            crate::audit_ship::SHIP_JOB,
            Duration::from_secs(cfg.audit.ship.every_secs),
            cfg.jobs.max_attempts,
        );
    }
    runner.spawn(Duration::from_millis(cfg.jobs.poll_ms));
    schedule(
        store,
        palisade_core::retention::PURGE_JOB,
        Duration::from_secs(cfg.retention.check_every_secs),
        cfg.jobs.max_attempts,
    );
}

/// Queues a job of `kind` every `every`, unless one is still queued or running (a dead letter
/// does not block the schedule: the next run starts afresh).
fn schedule(store: &Store, kind: &'static str, every: Duration, attempts: u32) {
    use palisade_core::jobs::{JobRepository, NewJob};
    let jobs = store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match jobs.pending(kind).await {
                Ok(false) => {
                    let job = NewJob {
                        kind: kind.into(),
                        tenant_id: None,
                        payload: serde_json::Value::Null,
                        max_attempts: attempts,
                        run_at: palisade_core::entities::now_millis(),
                    };
                    if let Err(e) = jobs.enqueue(&job).await {
                        tracing::error!(error = ?e, kind, "could not queue a scheduled job");
                    }
                }
                Ok(true) => {}
                Err(e) => tracing::error!(error = ?e, "could not look at the job queue"),
            }
        }
    });
}

/// Runs the whole server; `embedded`: in-process for `palisade chat --embedded` (no banner, a
/// local account instead of the first-admin bootstrap).
pub async fn serve_with(cfg: Config, embedded: Option<EmbeddedRun>) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let addr: SocketAddr = cfg.listen_addr()?;
    // First, so the engine and the store record from their first step.
    let metrics = crate::telemetry::install(&cfg)?;
    let memory = embedded.as_ref().is_some_and(|e| e.memory);
    let is_embedded = embedded.is_some();
    let shared = crate::shared::open(&cfg).await?;
    create_private_dir(&cfg.data_dir)?;
    let (store, store_degraded) = open_serving_store(&cfg, memory).await?;
    let (store, auth) = open_identity_in(&cfg, store, Some(shared.clone()))?;
    let audit_sinks = crate::audit_sink::attach(&cfg, &store)?;
    let local_user = match &embedded {
        Some(_) => Some(embedded_user(&cfg, &store, &auth).await?),
        None => {
            bootstrap_admin(&store, &auth).await?;
            None
        }
    };

    let model_path = crate::model::locate(
        cfg.model.file.as_deref(),
        cfg.model.dir.as_deref(),
        cfg.model.auto_pull,
    )
    .await?;
    let mut ecfg = EngineConfig::new(&model_path, cfg.model.name.clone());
    ecfg.context_size = cfg.model.context_size;
    ecfg.parallel = cfg.model.parallel;
    ecfg.queue_capacity = cfg.model.queue_size;
    ecfg.tenant_share_percent = cfg.model.tenant_share_percent;
    if cfg.model.threads > 0 {
        ecfg.threads = cfg.model.threads;
    }
    ecfg.default_max_tokens = cfg.model.default_max_tokens;
    ecfg.max_output_tokens = cfg.model.max_tokens_cap;
    ecfg.batch_size = ecfg.batch_size.max(ecfg.parallel);
    let engine = tokio::task::spawn_blocking(move || LlamaEngine::start(ecfg))
        .await
        .context("engine start task failed")?
        .map_err(|e| anyhow::anyhow!("starting the engine: {e}"))?;

    let registry = Arc::new(model_registry(&cfg, &store, engine.models().first()).await?);
    let router = model_router(&cfg, registry.clone(), engine.clone()).await?;
    let policy = ChatPolicy {
        system_prompt: cfg.chat.system_prompt.clone(),
        max_message_chars: cfg.chat.max_message_chars as usize,
        history_messages: cfg.chat.history_messages,
        ..ChatPolicy::default()
    };
    let guard = build_guard(&cfg)?;
    let guard_policies = Arc::new(palisade_core::guard_policies::GuardPolicies::new(
        guard.clone(),
        Arc::new(store.clone()),
    ));
    let applied = guard_policies.load().await?;
    if applied > 0 {
        tracing::info!(tenants = applied, "guard policies set by admins applied");
    }
    let limits = build_limits(&cfg).await?;
    let mut chat = ChatService::new(Arc::new(store.clone()), router, registry.clone(), policy)
        .with_guard(guard)
        .with_usage(Arc::new(store.clone()))
        .with_audit(Arc::new(store.clone()), cfg.audit.fail_closed)
        .with_audit_content(cfg.audit.record_content.clone());
    if let Some(model) = &cfg.chat.title_model {
        chat = chat.with_titles(
            Arc::new(store.clone()),
            model.clone(),
            cfg.jobs.max_attempts,
        );
    }
    if let Some(l) = &limits {
        chat = chat.with_quotas(l.budgets.clone());
    }
    let limit_policies = Arc::new(palisade_core::limit_policies::LimitPolicies::new(
        limits.as_ref().map(|l| l.overrides.clone()),
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        Arc::new(store.clone()),
    ));
    let applied = limit_policies.load().await?;
    if applied > 0 {
        tracing::info!(overrides = applied, "limit overrides set by admins applied");
    }
    // Overrides stored by other replicas (or before a restart of this one's peers) apply here
    // within seconds.
    crate::shared::spawn_reloads(
        &shared,
        crate::shared::Reloadable {
            models: registry.clone(),
            guard: guard_policies.clone(),
            limits: limit_policies.clone(),
        },
    );
    let chat = Arc::new(chat);
    let retention = Arc::new(palisade_core::retention::Retention::new(
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        Arc::new(store.clone()),
        cfg.retention.days,
    ));
    let ship = crate::audit_ship::ShipJob::from_config(&cfg, &store)?;
    let audit_sinks = match &ship {
        Some(_) => format!(
            "{audit_sinks}, collector (audit.ship, every {} s)",
            cfg.audit.ship.every_secs
        ),
        None => audit_sinks,
    };
    start_jobs(&cfg, &store, &chat, &retention, ship);
    let state = AppState::new(AppParts {
        identity: auth.clone(),
        account: auth.clone(),
        admin: auth.clone(),
        chat,
        readiness: Arc::new(StoreReadiness {
            store: store.clone(),
            degraded: store_degraded.clone(),
            limits: limits.as_ref().map(|l| l.backend.clone()),
            shared: shared.clone(),
        }),
        body_limit_bytes: cfg.http.body_limit_bytes as usize,
        auth_limiter: IpLimiter::per_minute(cfg.auth.ip_limit_per_minute),
        compat_routes: cfg.auth.compat_routes,
        guard_policies,
        limit_policies,
        limits: limits.map(|l| l.requests),
        ws_tickets: Arc::new(palisade_http::routes::ws::WsTickets::new(shared.clone())),
        shared: shared.clone(),
        trusted_proxies: Arc::new(
            palisade_http::client_ip::TrustedProxies::parse(&cfg.http.trusted_proxies)
                .map_err(|e| anyhow::anyhow!("configuration `http.trusted_proxies`: {e}"))?,
        ),
        events: Arc::new(store.clone()),
        refusals: Arc::new(palisade_http::audit::RefusalThrottle::default()),
        retention,
        jobs: Arc::new(palisade_core::jobs::Jobs::new(
            Arc::new(store.clone()),
            Arc::new(store.clone()),
        )),
        metrics: metrics.as_ref().and_then(|m| m.endpoint.clone()),
        cors_origins: Arc::new(cfg.http.cors_origins.clone()),
    });
    if cfg.audit.checkpoint_every_secs > 0 {
        crate::audit::spawn_checkpoints(
            cfg.clone(),
            store.clone(),
            Duration::from_secs(cfg.audit.checkpoint_every_secs),
        );
    }
    // Pick up signing keys added by `palisade keys rotate`.
    let keys = auth.keys().clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            match keys.reload() {
                Ok(true) => tracing::info!(kid = %keys.current_kid(), "signing keys reloaded"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "reloading signing keys failed"),
            }
        }
    });
    let app = palisade_http::router(state);

    let tls = crate::tls::ensure(
        &cfg.data_dir,
        cfg.tls.cert.as_deref(),
        cfg.tls.key.as_deref(),
    )?;
    let rustls_cfg = axum_server::tls_rustls::RustlsConfig::from_config(
        crate::tls::server_config(&tls, cfg.tls.client_ca.as_deref())
            .context("loading the TLS certificate")?,
    );
    crate::tls::spawn_reload(
        rustls_cfg.clone(),
        &tls,
        cfg.tls.client_ca.clone(),
        Duration::from_secs(5),
    );
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let metrics_at = match &metrics {
        Some(m) => m.serve_listener(&cfg)?,
        None => None,
    };
    let https_port = cfg.http.redirect_https_port.unwrap_or(local.port());
    let redirect_at = match cfg.http.redirect_addr()? {
        Some(at) => Some(crate::redirect::spawn(
            at,
            https_port,
            Duration::from_secs(cfg.http.header_read_timeout_secs),
        )?),
        None => None,
    };

    let handle = axum_server::Handle::new();
    // An embedded server ends with its client's process; Ctrl-C there stops an answer.
    if !is_embedded {
        let h = handle.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            h.graceful_shutdown(Some(Duration::from_secs(10)));
        });
    }

    if let (Some(run), Some((username, password))) = (embedded, local_user) {
        let _ = run.ready.send(Embedded {
            url: format!("https://{local}"),
            data_dir: cfg.data_dir.clone(),
            username,
            password,
        });
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "palisade {} ready", env!("CARGO_PKG_VERSION"))?;
        writeln!(out, "  data dir:  {}", cfg.data_dir.display())?;
        match &store_degraded {
            Some(_) => writeln!(
                out,
                "  database:  IN MEMORY, standing in for {} (store.fallback; nothing is kept)",
                store_location(&cfg)
            )?,
            None => writeln!(out, "  database:  {}", store_location(&cfg))?,
        }
        writeln!(
            out,
            "  model:     {} ({})",
            cfg.model.name,
            model_path.display()
        )?;
        let snap = registry.snapshot();
        let names: Vec<String> = snap
            .all()
            .filter(|(s, _)| s.enabled)
            .map(|(s, _)| format!("{} ({})", s.name, s.provider.as_str()))
            .collect();
        writeln!(
            out,
            "  models:    {} [default {}]",
            names.join(", "),
            snap.default_model()
        )?;
        writeln!(out, "  OpenAI-compatible API: https://{local}/v1")?;
        writeln!(
            out,
            "  audit:     {}{}",
            audit_sinks,
            if cfg.audit.fail_closed {
                " (fail-closed: model requests stop when the trail cannot record)"
            } else {
                ""
            }
        )?;
        if tls.self_signed {
            writeln!(
                out,
                "  TLS:       self-signed certificate {}",
                tls.cert.display()
            )?;
        }
        if let Some(ca) = &cfg.tls.client_ca {
            writeln!(
                out,
                "  mTLS:      client certificates required (CAs in {})",
                ca.display()
            )?;
        }
        match (metrics_at, &metrics) {
            (Some(at), _) => writeln!(out, "  metrics:   http://{at}/metrics")?,
            (None, Some(_)) => writeln!(
                out,
                "  metrics:   https://{local}/metrics (bearer token of `metrics.token`)"
            )?,
            (None, None) => {}
        }
        if let Some(url) = cfg.telemetry.traces_url() {
            writeln!(
                out,
                "  traces:    OTLP/HTTP to {url} (sample ratio {})",
                cfg.telemetry.sample_ratio
            )?;
        }
        if let Some(at) = redirect_at {
            writeln!(
                out,
                "  redirect:  http://{at} answers every request with a redirect to HTTPS (port {https_port})"
            )?;
        }
        writeln!(out, "listening on https://{local}")?;
        out.flush()?;
    }
    // TCP_NODELAY on every accepted connection: with Nagle's algorithm each small SSE event
    // could wait for a delayed ACK (~40 ms).
    // A client gets `http.header_read_timeout_secs` for its TLS handshake and again for each
    // request head: a slow-header client is cut off instead of holding a connection forever
    // (hyper applies its header timeout only once it is given a timer).
    let head_timeout = Duration::from_secs(cfg.http.header_read_timeout_secs);
    // Requests carry the client certificate's subject (mutual TLS, `tls.client_accounts`).
    let mut server = axum_server::from_tcp_rustls(listener, rustls_cfg).map(|tls| {
        crate::tls::PeerIdentityAcceptor::new(
            tls.handshake_timeout(head_timeout)
                .acceptor(axum_server::accept::NoDelayAcceptor::new()),
        )
    });
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout);
    server
        .http_builder()
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let served = server
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await;
    engine.shutdown();
    store.close().await;
    served.context("server error")
}

/// The configured model entries plus the embedded model (unless a `[models.NAME]` table of its
/// name replaces it).
pub(crate) fn configured_models(
    cfg: &Config,
    engine: Option<&palisade_core::provider::ModelInfo>,
) -> Vec<ModelSpec> {
    let mut specs: Vec<ModelSpec> = cfg
        .models
        .iter()
        .map(|(name, spec)| {
            let mut spec = ModelSpec {
                name: name.clone(),
                ..spec.clone()
            };
            // An entry that lowers `max_tokens` without naming `default_max_tokens` gets the
            // lower figure as its default (an explicit default above the cap is refused).
            if spec.default_max_tokens == ModelSpec::default().default_max_tokens {
                spec.default_max_tokens = spec.default_max_tokens.min(spec.max_tokens);
            }
            spec
        })
        .collect();
    if !cfg.models.contains_key(&cfg.model.name) {
        let context = engine.map_or(cfg.model.context_size, |m| m.context_size);
        let max_tokens = engine
            .map_or(cfg.model.max_tokens_cap, |m| m.max_output_tokens)
            .min(context)
            .max(1);
        specs.push(ModelSpec {
            name: cfg.model.name.clone(),
            provider: ProviderKind::Local,
            context_size: context.max(16),
            max_tokens,
            default_max_tokens: cfg.model.default_max_tokens.min(max_tokens),
            trust_zone: TrustZone::Internal,
            description: "the embedded llama.cpp model".into(),
            ..ModelSpec::default()
        });
    }
    specs
}

/// The model registry: configured entries overlaid with the admins' stored changes.
async fn model_registry(
    cfg: &Config,
    store: &Store,
    engine: Option<&palisade_core::provider::ModelInfo>,
) -> anyhow::Result<ModelRegistry> {
    let roles: Vec<String> = role_registry(cfg)?
        .all()
        .map(|r| r.name.as_str().to_string())
        .collect();
    let default = cfg
        .chat
        .default_model
        .clone()
        .unwrap_or_else(|| cfg.model.name.clone());
    ModelRegistry::load(
        configured_models(cfg, engine),
        default,
        roles,
        Arc::new(store.clone()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The provider router over the embedded engine and the remote upstreams, with the cache.
async fn model_router(
    cfg: &Config,
    registry: Arc<ModelRegistry>,
    engine: Arc<LlamaEngine>,
) -> anyhow::Result<Arc<dyn ChatProvider>> {
    let p = &cfg.providers;
    let settings = RouterSettings {
        breaker_failures: p.breaker_failures,
        breaker_cooldown: Duration::from_secs(p.breaker_cooldown_secs),
        retry_backoff: Duration::from_millis(p.retry_backoff_ms),
    };
    let resolver: palisade_llm::router::SecretResolver = Arc::new(|reference: &str| {
        palisade_config::resolve_secret("models.*.api_key", reference).map_err(|e| e.to_string())
    });
    let local: Arc<dyn ChatProvider> = engine;
    let mut router = Router::new(registry, Some(local), resolver, settings);
    let c = &cfg.cache;
    if c.enabled {
        let ttl = Duration::from_secs(c.ttl_secs.max(1));
        let shared = cfg.redis.resolved_url()?;
        let url = c.redis_url.clone().or(shared);
        let cache = match (c.backend, url.as_deref()) {
            (CacheBackend::Redis, Some(url)) => ResponseCache::redis(url, ttl)
                .await
                .map_err(|e| anyhow::anyhow!("configuration `cache.redis_url`: {e}"))?,
            _ => ResponseCache::memory(c.capacity.max(1), ttl),
        };
        tracing::info!(backend = cache.backend_name(), "response cache on");
        router = router.with_cache(Arc::new(cache));
    }
    Ok(Arc::new(router))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
