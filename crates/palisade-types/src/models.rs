//! The model registry's wire shape: one entry per model Palisade serves, as written in the
//! configuration file (`[models.NAME]`) and in the admin API (`PUT /api/admin/models/NAME`).

use serde::{Deserialize, Serialize};

/// Which backend serves a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The embedded llama.cpp engine.
    #[default]
    Local,
    /// Any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama-server, LM Studio).
    Openai,
    /// Ollama's native `/api/chat`.
    Ollama,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Openai => "openai",
            ProviderKind::Ollama => "ollama",
        }
    }
}

/// Where the data goes when this model is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrustZone {
    /// Runs inside the company (the embedded engine, an on-premises server).
    #[default]
    Internal,
    /// Data leaves the company (a cloud API).
    External,
}

/// Time limits for one upstream call, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelTimeouts {
    /// Establishing the TCP/TLS connection.
    pub connect_ms: u64,
    /// From sending the request to the first token of the answer.
    pub first_token_ms: u64,
    /// The whole request, streaming included.
    pub request_ms: u64,
}

impl Default for ModelTimeouts {
    fn default() -> Self {
        Self {
            connect_ms: 5_000,
            first_token_ms: 30_000,
            request_ms: 300_000,
        }
    }
}

/// TLS settings of one remote upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// A PEM file of CA certificates trusted for this upstream, in addition to the public
    /// roots (a private PKI, or a node's self-signed certificate).
    pub ca_cert: Option<String>,
    /// Trust only `ca_cert`, not the public roots as well.
    pub ca_only: bool,
    /// A PEM file with the client certificate (and its chain) presented to the upstream.
    pub client_cert: Option<String>,
    /// The client certificate's private key (PEM) **by reference**: `env::NAME` or
    /// `file::PATH`.
    pub client_key: Option<String>,
    /// Offer HTTP/2 (ALPN) and, when the upstream takes it, carry every request to it over one
    /// connection: thousands of concurrent streams without a socket each. Off: HTTP/1.1, a
    /// pooled connection per concurrent request. With HTTP/2, a burst of more than about 50
    /// streams cancelled within a second (clients leaving while the upstream still sends) can
    /// make the client end the shared connection (HTTP/2 reset-flood protection), failing the
    /// streams still on it.
    pub http2: bool,
}

impl UpstreamTls {
    pub fn is_empty(&self) -> bool {
        *self == UpstreamTls::default()
    }
}

/// One model of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSpec {
    /// Public name clients use (`model` in requests). Taken from the key in the config file and
    /// from the path in the admin API.
    pub name: String,
    pub provider: ProviderKind,
    /// The model id the upstream expects; the public name when empty.
    pub upstream_model: String,
    /// Base URL of a remote provider, e.g. `https://api.openai.com/v1` or `http://ollama:11434`.
    pub base_url: Option<String>,
    /// The upstream credential **by reference**: `env::NAME` or `file::PATH`. Never inline.
    pub api_key: Option<String>,
    /// TLS towards an `https://` upstream beyond the public roots: a private CA, a client
    /// certificate (mutual TLS, e.g. to another Palisade node serving its embedded model).
    #[serde(skip_serializing_if = "UpstreamTls::is_empty")]
    pub tls: UpstreamTls,
    /// Tokens of context the model accepts (prompt + answer).
    pub context_size: u32,
    /// `max_tokens` when the request names none.
    pub default_max_tokens: u32,
    /// The largest `max_tokens` a request may ask for.
    pub max_tokens: u32,
    pub trust_zone: TrustZone,
    /// Roles that may use the model; empty means every role allowed to chat.
    pub roles: Vec<String>,
    /// Models tried in order when this one fails before its first token.
    pub fallback: Vec<String>,
    /// Retries of one upstream call before its first token (with back-off).
    pub max_retries: u32,
    pub timeouts: ModelTimeouts,
    pub description: String,
    /// A disabled model is not listed and not served.
    pub enabled: bool,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            provider: ProviderKind::Local,
            upstream_model: String::new(),
            base_url: None,
            api_key: None,
            tls: UpstreamTls::default(),
            context_size: 4096,
            default_max_tokens: 512,
            max_tokens: 2048,
            trust_zone: TrustZone::Internal,
            roles: Vec::new(),
            fallback: Vec::new(),
            max_retries: 2,
            timeouts: ModelTimeouts::default(),
            description: String::new(),
            enabled: true,
        }
    }
}

impl ModelSpec {
    /// The id sent upstream.
    pub fn upstream_id(&self) -> &str {
        if self.upstream_model.is_empty() {
            &self.name
        } else {
            &self.upstream_model
        }
    }
}

/// A model as `GET /api/models` shows it to a user who may use it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ModelView {
    pub name: String,
    pub provider: ProviderKind,
    pub trust_zone: TrustZone,
    pub context_size: u32,
    pub default_max_tokens: u32,
    pub max_tokens: u32,
    pub description: String,
    /// The model used when a request names none.
    pub default: bool,
    /// False when the upstream is failing (circuit open) or the engine is not running.
    pub available: bool,
}

/// `GET /api/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelView>,
}

/// An entry of `GET /api/admin/models`: the full spec plus where it comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AdminModelView {
    #[serde(flatten)]
    pub spec: ModelSpec,
    /// `config` (the configuration file), `admin` (changed through the API).
    pub source: String,
    pub available: bool,
}

/// `GET /api/admin/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AdminModelList {
    pub models: Vec<AdminModelView>,
}
