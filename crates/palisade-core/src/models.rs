//! The model registry: which models exist, who may use them, and how they fall back.
//!
//! The configuration file seeds it; admins change it through the admin API (persisted through
//! [`ModelRegistryRepository`], applied at once without a restart). An admin entry with the
//! same name as a configured one replaces it; deleting a configured model stores a tombstone.
//! Readers take a cheap snapshot (`Arc`) per request; writers swap the snapshot and notify
//! subscribers (the provider router rebuilds its upstream clients).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, RwLock};

use palisade_types::models::{ModelSpec, ProviderKind};
use tokio::sync::watch;

use crate::access::{Grant, ModelsManage};
use crate::entities::{now_millis, Millis, Principal};
use crate::error::{CoreError, CoreResult};

/// An admin change stored in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredModel {
    pub name: String,
    /// `None` is a tombstone: the model was deleted.
    pub spec: Option<ModelSpec>,
    pub updated_at: Millis,
    pub updated_by: String,
}

/// Persistence of admin changes to the registry (platform-wide, not per tenant).
#[async_trait::async_trait]
pub trait ModelRegistryRepository: Send + Sync + 'static {
    async fn list_models(&self) -> CoreResult<Vec<StoredModel>>;
    async fn put_model(&self, model: &StoredModel) -> CoreResult<()>;
}

/// Where an effective entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    Config,
    Admin,
}

impl ModelSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSource::Config => "config",
            ModelSource::Admin => "admin",
        }
    }
}

/// The registry as it is right now.
#[derive(Debug, Clone, Default)]
pub struct RegistrySnapshot {
    models: BTreeMap<String, (Arc<ModelSpec>, ModelSource)>,
    default_model: String,
}

impl RegistrySnapshot {
    /// An enabled model by public name.
    pub fn get(&self, name: &str) -> Option<&Arc<ModelSpec>> {
        self.models.get(name).map(|(s, _)| s).filter(|s| s.enabled)
    }

    /// Every entry (disabled ones included) with its source.
    pub fn all(&self) -> impl Iterator<Item = (&Arc<ModelSpec>, ModelSource)> {
        self.models.values().map(|(s, src)| (s, *src))
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// The model, then its fallbacks (transitively, each once, enabled ones only).
    pub fn chain(&self, name: &str) -> Vec<Arc<ModelSpec>> {
        let mut out: Vec<Arc<ModelSpec>> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([name.to_string()]);
        while let Some(n) = queue.pop_front() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(spec) = self.get(&n) {
                queue.extend(spec.fallback.iter().cloned());
                out.push(spec.clone());
            }
            if out.len() >= 8 {
                break;
            }
        }
        out
    }
}

/// May `who` use `spec`? The role's `model:<name>:use` grant and the model's role list.
pub fn may_use(who: &Principal, spec: &ModelSpec) -> bool {
    if !who.may_use_model(&spec.name) {
        return false;
    }
    spec.roles.is_empty()
        || who.is_platform_admin()
        || spec.roles.iter().any(|r| r == who.role.as_str())
}

/// The registry service.
pub struct ModelRegistry {
    config: Vec<ModelSpec>,
    default_model: String,
    known_roles: BTreeSet<String>,
    repo: Arc<dyn ModelRegistryRepository>,
    current: RwLock<Arc<RegistrySnapshot>>,
    changes: watch::Sender<u64>,
}

impl ModelRegistry {
    /// Builds the registry from the configured models and the stored admin changes.
    pub async fn load(
        config: Vec<ModelSpec>,
        default_model: String,
        known_roles: Vec<String>,
        repo: Arc<dyn ModelRegistryRepository>,
    ) -> CoreResult<Self> {
        let known_roles: BTreeSet<String> = known_roles.into_iter().collect();
        for spec in &config {
            validate_spec(spec, &known_roles).map_err(|e| match e {
                CoreError::Validation { message, .. } => CoreError::validation(
                    "invalid_model",
                    format!("configuration `models.{}`: {message}", spec.name),
                ),
                other => other,
            })?;
        }
        let (changes, _) = watch::channel(0);
        let reg = Self {
            config,
            default_model,
            known_roles,
            repo,
            current: RwLock::new(Arc::new(RegistrySnapshot::default())),
            changes,
        };
        reg.reload().await?;
        Ok(reg)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<RegistrySnapshot> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A receiver that changes whenever the registry does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Re-reads the stored admin changes (also used when another replica changed them).
    pub async fn reload(&self) -> CoreResult<()> {
        let stored = self.repo.list_models().await?;
        let mut models: BTreeMap<String, (Arc<ModelSpec>, ModelSource)> = self
            .config
            .iter()
            .map(|s| (s.name.clone(), (Arc::new(s.clone()), ModelSource::Config)))
            .collect();
        for m in stored {
            match m.spec {
                Some(spec) => {
                    models.insert(m.name, (Arc::new(spec), ModelSource::Admin));
                }
                None => {
                    models.remove(&m.name);
                }
            }
        }
        let snap = Arc::new(RegistrySnapshot {
            models,
            default_model: self.default_model.clone(),
        });
        match self.current.write() {
            Ok(mut g) => *g = snap,
            Err(poisoned) => *poisoned.into_inner() = snap,
        }
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    /// The models `who` may use, enabled ones only.
    pub fn usable_by(&self, who: &Principal) -> Vec<Arc<ModelSpec>> {
        self.snapshot()
            .all()
            .filter(|(s, _)| s.enabled && may_use(who, s))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Adds or replaces a model (admin API).
    pub async fn put(
        &self,
        grant: &Grant<ModelsManage>,
        name: &str,
        mut spec: ModelSpec,
    ) -> CoreResult<Arc<ModelSpec>> {
        spec.name = name.to_string();
        validate_spec(&spec, &self.known_roles)?;
        let snap = self.snapshot();
        for f in &spec.fallback {
            if !snap.models.contains_key(f) {
                return Err(CoreError::validation(
                    "invalid_model",
                    format!("fallback `{f}` is not a model of the registry"),
                ));
            }
        }
        self.repo
            .put_model(&StoredModel {
                name: spec.name.clone(),
                spec: Some(spec.clone()),
                updated_at: now_millis(),
                updated_by: grant.principal().username.clone(),
            })
            .await?;
        self.reload().await?;
        tracing::info!(model = %spec.name, by = %grant.principal().username, "model registry entry saved");
        Ok(Arc::new(spec))
    }

    /// Removes a model (admin API). The default model cannot be removed.
    pub async fn delete(&self, grant: &Grant<ModelsManage>, name: &str) -> CoreResult<()> {
        if !self.snapshot().models.contains_key(name) {
            return Err(CoreError::NotFound("model"));
        }
        if name == self.default_model {
            return Err(CoreError::Conflict(
                "the default model cannot be removed; disable it or change `chat.default_model`"
                    .into(),
            ));
        }
        self.repo
            .put_model(&StoredModel {
                name: name.to_string(),
                spec: None,
                updated_at: now_millis(),
                updated_by: grant.principal().username.clone(),
            })
            .await?;
        self.reload().await?;
        tracing::info!(model = %name, by = %grant.principal().username, "model registry entry deleted");
        Ok(())
    }
}

/// A public model name: 1–64 of `A-Z a-z 0-9 . _ - : /`.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
}

/// A secret given by reference (`env::NAME`, `file::PATH`), never inline.
fn is_reference(s: &str) -> bool {
    s.strip_prefix("env::")
        .or_else(|| s.strip_prefix("file::"))
        .is_some_and(|r| !r.is_empty())
}

/// The `tls` table of a remote entry: files by path, the key by reference, both halves of a
/// client identity, and only towards `https://`.
fn validate_tls(spec: &ModelSpec) -> CoreResult<()> {
    let bad = |m: &str| Err(CoreError::validation("invalid_model", m.to_string()));
    let t = &spec.tls;
    if t.is_empty() {
        return Ok(());
    }
    if !spec
        .base_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
    {
        return bad("`tls` applies only to an https:// `base_url`");
    }
    let path_ok = |p: &Option<String>| {
        p.as_deref()
            .is_none_or(|p| !p.trim().is_empty() && !p.starts_with("env::") && p.len() <= 4096)
    };
    if !path_ok(&t.ca_cert) || !path_ok(&t.client_cert) {
        return bad("`tls.ca_cert` and `tls.client_cert` are paths of PEM files");
    }
    if t.ca_only && t.ca_cert.is_none() {
        return bad("`tls.ca_only` needs `tls.ca_cert`");
    }
    if t.client_cert.is_some() != t.client_key.is_some() {
        return bad("a client certificate needs both `tls.client_cert` and `tls.client_key`");
    }
    if let Some(k) = &t.client_key {
        if !is_reference(k) {
            return bad(
                "`tls.client_key` must be a reference, `env::NAME` or `file::PATH`; inline keys are refused",
            );
        }
    }
    Ok(())
}

/// Checks one entry on its own (fallback targets are checked against the registry).
pub fn validate_spec(spec: &ModelSpec, known_roles: &BTreeSet<String>) -> CoreResult<()> {
    let bad = |m: String| Err(CoreError::validation("invalid_model", m));
    if !valid_model_name(&spec.name) {
        return bad("the name must have 1 to 64 of A-Z a-z 0-9 . _ - : /".into());
    }
    match spec.provider {
        ProviderKind::Local => {
            if spec.base_url.is_some() || spec.api_key.is_some() || !spec.tls.is_empty() {
                return bad("a `local` model takes no `base_url`, `api_key` or `tls`".into());
            }
        }
        ProviderKind::Openai | ProviderKind::Ollama => {
            let Some(url) = spec.base_url.as_deref() else {
                return bad(format!(
                    "a `{}` model needs `base_url`",
                    spec.provider.as_str()
                ));
            };
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            match rest {
                Some(r)
                    if !r.is_empty()
                        && !r.starts_with('/')
                        && !url.contains(char::is_whitespace) => {}
                _ => return bad("`base_url` must be an http:// or https:// URL".into()),
            }
        }
    }
    if let Some(k) = &spec.api_key {
        if !is_reference(k) {
            // Never echo the value: it may be a pasted secret.
            return bad(
                "`api_key` must be a reference, `env::NAME` or `file::PATH`; inline keys are refused"
                    .into(),
            );
        }
    }
    validate_tls(spec)?;
    if spec.upstream_model.len() > 256 {
        return bad("`upstream_model` is too long".into());
    }
    if !(16..=10_000_000).contains(&spec.context_size) {
        return bad("`context_size` must be between 16 and 10000000".into());
    }
    if spec.max_tokens < 1 || spec.max_tokens > spec.context_size {
        return bad("`max_tokens` must be between 1 and `context_size`".into());
    }
    if spec.default_max_tokens < 1 || spec.default_max_tokens > spec.max_tokens {
        return bad("`default_max_tokens` must be between 1 and `max_tokens`".into());
    }
    if spec.max_retries > 5 {
        return bad("`max_retries` must be at most 5".into());
    }
    let t = &spec.timeouts;
    if t.connect_ms == 0 || t.first_token_ms == 0 || t.request_ms < t.first_token_ms {
        return bad("timeouts must be positive and `request_ms` at least `first_token_ms`".into());
    }
    if spec.fallback.len() > 8 || spec.fallback.iter().any(|f| f == &spec.name) {
        return bad("`fallback` takes at most 8 other models".into());
    }
    if let Some(r) = spec.roles.iter().find(|r| !known_roles.contains(*r)) {
        return bad(format!("unknown role `{r}` in `roles`"));
    }
    if spec.description.chars().count() > 500 {
        return bad("`description` has at most 500 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_types::models::{TrustZone, UpstreamTls};

    fn roles() -> BTreeSet<String> {
        ["admin", "user"].iter().map(|s| s.to_string()).collect()
    }

    fn remote(name: &str) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            provider: ProviderKind::Openai,
            base_url: Some("http://127.0.0.1:9/v1".into()),
            api_key: Some("env::KEY".into()),
            trust_zone: TrustZone::External,
            ..ModelSpec::default()
        }
    }

    #[test]
    fn validation_refuses_bad_entries() {
        assert!(validate_spec(&remote("gpt-4o"), &roles()).is_ok());
        let inline = ModelSpec {
            api_key: Some("sk-live-123".into()),
            ..remote("x")
        };
        let err = validate_spec(&inline, &roles())
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| !e.contains("sk-live")));
        for bad in [
            ModelSpec {
                base_url: None,
                ..remote("x")
            },
            ModelSpec {
                base_url: Some("ftp://h".into()),
                ..remote("x")
            },
            ModelSpec {
                roles: vec!["ghost".into()],
                ..remote("x")
            },
            ModelSpec {
                fallback: vec!["x".into()],
                ..remote("x")
            },
            ModelSpec {
                default_max_tokens: 5000,
                ..remote("x")
            },
            remote("bad name"),
        ] {
            assert!(validate_spec(&bad, &roles()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upstream_tls_takes_files_and_a_key_by_reference() {
        let https = |tls: UpstreamTls| ModelSpec {
            base_url: Some("https://node-1:8443/v1".into()),
            tls,
            ..remote("x")
        };
        let full = UpstreamTls {
            ca_cert: Some("/etc/palisade/nodes-ca.pem".into()),
            ca_only: true,
            client_cert: Some("/etc/palisade/gw.pem".into()),
            client_key: Some("file::/etc/palisade/gw.key".into()),
            http2: true,
        };
        assert!(validate_spec(&https(full.clone()), &roles()).is_ok());
        let h2_only = UpstreamTls {
            http2: true,
            ..UpstreamTls::default()
        };
        assert!(validate_spec(&https(h2_only.clone()), &roles()).is_ok());
        let inline_key = UpstreamTls {
            client_key: Some("-----BEGIN PRIVATE KEY-----MIIE".into()),
            ..full.clone()
        };
        let err = validate_spec(&https(inline_key), &roles())
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| !e.contains("MIIE")));
        for bad in [
            // Half an identity.
            https(UpstreamTls {
                client_key: None,
                ..full.clone()
            }),
            https(UpstreamTls {
                client_cert: None,
                ..full.clone()
            }),
            // Trusting only a CA that is not given.
            https(UpstreamTls {
                ca_cert: None,
                ca_only: true,
                ..UpstreamTls::default()
            }),
            https(UpstreamTls {
                ca_cert: Some(" ".into()),
                ..UpstreamTls::default()
            }),
            // TLS settings (HTTP/2 by ALPN among them) on plain HTTP, and on the embedded
            // engine.
            ModelSpec {
                tls: full.clone(),
                ..remote("x")
            },
            ModelSpec {
                tls: h2_only,
                ..remote("x")
            },
            ModelSpec {
                name: "local".into(),
                provider: ProviderKind::Local,
                tls: full.clone(),
                ..ModelSpec::default()
            },
        ] {
            assert!(validate_spec(&bad, &roles()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chains_follow_fallbacks_once() {
        let mut snap = RegistrySnapshot::default();
        for (n, f) in [("a", vec!["b", "c"]), ("b", vec!["a", "c"]), ("c", vec![])] {
            let spec = ModelSpec {
                fallback: f.into_iter().map(String::from).collect(),
                ..remote(n)
            };
            snap.models
                .insert(n.into(), (Arc::new(spec), ModelSource::Config));
        }
        let names: Vec<String> = snap.chain("a").iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(snap.chain("zzz").is_empty());
    }
}
