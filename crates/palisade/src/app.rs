//! Wiring: turns configuration into running adapters and hands them to the HTTP router. The one
//! place where the store, the auth service, the engine and the HTTP layer meet.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use palisade_auth::{AuthService, AuthSettings, KeyRing, RegistrationMode};
use palisade_config::{CliOverrides, Config, Registration};
use palisade_core::chat::{ChatPolicy, ChatService};
use palisade_core::entities::UserRole;
use palisade_core::ids::DEFAULT_TENANT;
use palisade_core::ports::UserRepository;
use palisade_http::{AppState, Readiness};
use palisade_llama::{EngineConfig, LlamaEngine};
use palisade_store::Store;
use rand::RngCore;

use crate::cli::{
    Cli, Command, CommonArgs, ConfigCommand, LogFormat, ModelCommand, RoleArg, UserCommand,
};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => {
            init_logging(a.log_format);
            let cfg = load_config(&a.common, a.listen.clone())?;
            serve(cfg).await
        }
        Command::User(UserCommand::Create(a)) => {
            init_logging(LogFormat::Text);
            let cfg = load_config(&a.common, None)?;
            let password = read_password(a.password_stdin)?;
            let role = match a.role {
                RoleArg::Admin => UserRole::Admin,
                RoleArg::User => UserRole::User,
            };
            let (_store, auth) = open_identity(&cfg).await?;
            let user = auth
                .create_user(DEFAULT_TENANT, &a.username, a.email, &password, role)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "created user {} ({}) with id {}",
                user.username,
                role.as_str(),
                user.id
            );
            Ok(())
        }
        Command::Model(ModelCommand::Pull(a)) => crate::model::pull(a).await,
        Command::Config(ConfigCommand::Validate(a)) => {
            let cfg = load_config(&a.common, None)?;
            println!("configuration is valid");
            println!("{}", serde_json::to_string_pretty(&cfg)?);
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn load_config(common: &CommonArgs, listen: Option<String>) -> anyhow::Result<Config> {
    let cli = CliOverrides {
        data_dir: common.data_dir.clone(),
        listen,
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

/// Creates the data dir (owner-only) and opens the store and the identity service.
async fn open_identity(cfg: &Config) -> anyhow::Result<(Store, Arc<AuthService>)> {
    create_private_dir(&cfg.data_dir)?;
    let db = cfg.data_dir.join("palisade.db");
    let store = Store::open_sqlite(&db)
        .await
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", db.display()))?;
    let keys = KeyRing::load_or_create(&cfg.data_dir.join("keys"), "palisade", "palisade")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let settings = AuthSettings {
        access_ttl_secs: cfg.auth.access_token_ttl_secs as i64,
        refresh_sliding_secs: cfg.auth.refresh_token_sliding_days as i64 * 86_400,
        refresh_absolute_secs: cfg.auth.refresh_token_absolute_days as i64 * 86_400,
        registration: match cfg.auth.registration {
            Registration::Open => RegistrationMode::Open,
            Registration::Closed => RegistrationMode::Closed,
        },
    };
    let users: Arc<dyn UserRepository> = Arc::new(store.clone());
    let auth = AuthService::new(users, Arc::new(store.clone()), keys, settings)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((store, Arc::new(auth)))
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
    auth.create_user(DEFAULT_TENANT, "admin", None, &password, UserRole::Admin)
        .await
        .map_err(|e| anyhow::anyhow!("creating the first admin: {e}"))?;
    let mut out = std::io::stdout().lock();
    if generated {
        writeln!(
            out,
            "created the first admin: username `admin`, one-time password: {password}"
        )?;
        writeln!(out, "  (shown only now; store it safely)")?;
    } else {
        writeln!(
            out,
            "created the first admin: username `admin`, password from PALISADE_ADMIN_PASSWORD"
        )?;
    }
    out.flush()?;
    Ok(())
}

struct StoreReadiness(Store);

#[async_trait::async_trait]
impl Readiness for StoreReadiness {
    async fn checks(&self) -> Vec<(String, bool)> {
        vec![("database".into(), self.0.ping().await)]
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let addr: SocketAddr = cfg.listen_addr()?;
    let (store, auth) = open_identity(&cfg).await?;
    bootstrap_admin(&store, &auth).await?;

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

    let policy = ChatPolicy {
        default_model: cfg.model.name.clone(),
        system_prompt: cfg.chat.system_prompt.clone(),
        max_message_chars: cfg.chat.max_message_chars as usize,
        default_max_tokens: cfg.model.default_max_tokens,
        max_tokens_cap: cfg.model.max_tokens_cap,
        history_messages: cfg.chat.history_messages,
        ..ChatPolicy::default()
    };
    let chat = ChatService::new(Arc::new(store.clone()), engine.clone(), policy);
    let jwks = serde_json::json!({ "keys": auth.keys().jwks() });
    let state = AppState {
        identity: auth.clone(),
        chat: Arc::new(chat),
        readiness: Arc::new(StoreReadiness(store.clone())),
        jwks: Arc::new(jwks),
        body_limit_bytes: cfg.http.body_limit_bytes as usize,
    };
    let app = palisade_http::router(state);

    let tls = crate::tls::ensure(
        &cfg.data_dir,
        cfg.tls.cert.as_deref(),
        cfg.tls.key.as_deref(),
    )?;
    let rustls_cfg = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .context("loading the TLS certificate")?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;

    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "palisade {} ready", env!("CARGO_PKG_VERSION"))?;
        writeln!(out, "  data dir:  {}", cfg.data_dir.display())?;
        writeln!(
            out,
            "  model:     {} ({})",
            cfg.model.name,
            model_path.display()
        )?;
        if tls.self_signed {
            writeln!(
                out,
                "  TLS:       self-signed certificate {}",
                tls.cert.display()
            )?;
        }
        writeln!(out, "listening on https://{local}")?;
        out.flush()?;
    }
    let served = axum_server::from_tcp_rustls(listener, rustls_cfg)
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await;
    engine.shutdown();
    store.close().await;
    served.context("server error")
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
