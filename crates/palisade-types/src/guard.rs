//! The LLM firewall's policy as configuration and the API show it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a policy does with one finding category.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// Let it through, do not record it.
    Allow,
    /// Let it through, record it (metrics, audit).
    #[default]
    #[serde(alias = "log_only")]
    Log,
    /// Replace the value by `[REDACTED:KIND]` before the model (or the user) sees it.
    Redact,
    /// Replace the value by a stable placeholder (`<EMAIL_1>`), restored in the answer.
    #[serde(alias = "pseudonymize")]
    Pseudonymise,
    /// Refuse the request (input) or cut the answer (output).
    Block,
}

impl GuardAction {
    /// The stronger of two actions.
    pub fn max(self, other: GuardAction) -> GuardAction {
        if self.rank() >= other.rank() {
            self
        } else {
            other
        }
    }

    fn rank(self) -> u8 {
        match self {
            GuardAction::Allow => 0,
            GuardAction::Log => 1,
            GuardAction::Pseudonymise => 2,
            GuardAction::Redact => 3,
            GuardAction::Block => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Allow => "allow",
            GuardAction::Log => "log",
            GuardAction::Redact => "redact",
            GuardAction::Pseudonymise => "pseudonymise",
            GuardAction::Block => "block",
        }
    }
}

/// Actions per finding category for one trust zone. Input categories act on what the user
/// sends; `output_*`, `leak` and `unsafe_markup` on what the model answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ZonePolicy {
    pub injection: GuardAction,
    pub pii: GuardAction,
    pub secret: GuardAction,
    pub toxicity: GuardAction,
    /// Toxicity hits below this severity (1 low .. 3 high) are only logged.
    pub toxicity_min_severity: u8,
    pub output_pii: GuardAction,
    pub output_secret: GuardAction,
    pub output_toxicity: GuardAction,
    /// The answer repeats the system prompt or its canary.
    pub leak: GuardAction,
    /// Images from outside hosts, `javascript:` links.
    pub unsafe_markup: GuardAction,
}

impl ZonePolicy {
    /// Inside the company: block attacks, redact secrets, log personal data.
    pub fn internal() -> Self {
        Self {
            injection: GuardAction::Block,
            pii: GuardAction::Log,
            secret: GuardAction::Redact,
            toxicity: GuardAction::Log,
            toxicity_min_severity: 2,
            output_pii: GuardAction::Log,
            output_secret: GuardAction::Redact,
            output_toxicity: GuardAction::Log,
            leak: GuardAction::Block,
            unsafe_markup: GuardAction::Redact,
        }
    }

    /// Data leaves the company: pseudonymise personal data, block secrets.
    pub fn external() -> Self {
        Self {
            pii: GuardAction::Pseudonymise,
            secret: GuardAction::Block,
            ..Self::internal()
        }
    }
}

impl Default for ZonePolicy {
    fn default() -> Self {
        Self::internal()
    }
}

/// Changes to a zone's policy: each action given replaces the one below it (built-in zone
/// default < `guard.internal`/`guard.external` < the tenant's), the others stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ZoneOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injection: Option<GuardAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pii: Option<GuardAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<GuardAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toxicity: Option<GuardAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub toxicity_min_severity: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_pii: Option<GuardAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_secret: Option<GuardAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_toxicity: Option<GuardAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leak: Option<GuardAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsafe_markup: Option<GuardAction>,
}

impl ZoneOverrides {
    /// `base` with these changes.
    pub fn apply(&self, base: &ZonePolicy) -> ZonePolicy {
        ZonePolicy {
            injection: self.injection.unwrap_or(base.injection),
            pii: self.pii.unwrap_or(base.pii),
            secret: self.secret.unwrap_or(base.secret),
            toxicity: self.toxicity.unwrap_or(base.toxicity),
            toxicity_min_severity: self
                .toxicity_min_severity
                .unwrap_or(base.toxicity_min_severity),
            output_pii: self.output_pii.unwrap_or(base.output_pii),
            output_secret: self.output_secret.unwrap_or(base.output_secret),
            output_toxicity: self.output_toxicity.unwrap_or(base.output_toxicity),
            leak: self.leak.unwrap_or(base.leak),
            unsafe_markup: self.unsafe_markup.unwrap_or(base.unsafe_markup),
        }
    }
}

/// Overrides for one tenant (keyed by tenant id in `guard.tenants`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TenantGuardPolicy {
    pub injection_threshold: Option<f32>,
    pub internal: ZoneOverrides,
    pub external: ZoneOverrides,
    /// Extra text of the hardened system prompt for this tenant.
    pub system_prompt: Option<String>,
}

/// Prompt settings for one model (keyed by the model's public name in `guard.models`): small
/// models follow a short hierarchy best, large ones can take delimiting and more rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ModelGuardPolicy {
    /// Overrides `guard.hardened_prompt` for this model.
    pub hardened_prompt: Option<bool>,
    /// Overrides `guard.delimit_user_content` for this model.
    pub delimit_user_content: Option<bool>,
    /// Extra text of the hardened system prompt for this model (after the tenant's).
    pub system_prompt: Option<String>,
}

/// `[guard]` in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSettings {
    pub enabled: bool,
    /// Injection score (0..1) at or above which a prompt counts as an attack.
    pub injection_threshold: f32,
    /// Changes to the built-in `internal` zone policy ([`ZonePolicy::internal`]).
    pub internal: ZoneOverrides,
    /// Changes to the built-in `external` zone policy ([`ZonePolicy::external`]).
    pub external: ZoneOverrides,
    pub tenants: BTreeMap<String, TenantGuardPolicy>,
    /// Prompt settings per model (public name).
    pub models: BTreeMap<String, ModelGuardPolicy>,
    /// Characters of the answer held back while streaming so a value split across chunks is
    /// caught before any of it is shown.
    pub output_window: usize,
    /// Wrap the configured system prompt in the instruction hierarchy and the canary.
    pub hardened_prompt: bool,
    /// Wrap user messages in `<user_input>` tags for the model.
    pub delimit_user_content: bool,
    /// Extra toxicity word lists (files in the shipped TSV format).
    pub toxicity_lists: Vec<String>,
    /// Hosts whose images the answer may show (markdown images from others are removed).
    pub allowed_image_hosts: Vec<String>,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            injection_threshold: 0.65,
            internal: ZoneOverrides::default(),
            external: ZoneOverrides::default(),
            tenants: BTreeMap::new(),
            models: BTreeMap::new(),
            output_window: 96,
            hardened_prompt: true,
            delimit_user_content: false,
            toxicity_lists: Vec::new(),
            allowed_image_hosts: Vec::new(),
        }
    }
}

impl GuardSettings {
    /// Whether the system prompt of `model` is hardened.
    pub fn hardened_prompt_for(&self, model: &str) -> bool {
        self.models
            .get(model)
            .and_then(|m| m.hardened_prompt)
            .unwrap_or(self.hardened_prompt)
    }

    /// Whether user messages to `model` are wrapped in `<user_input>` tags.
    pub fn delimit_user_content_for(&self, model: &str) -> bool {
        self.models
            .get(model)
            .and_then(|m| m.delimit_user_content)
            .unwrap_or(self.delimit_user_content)
    }

    /// The effective policy of a zone, for a tenant (by id) when it has overrides.
    pub fn zone_policy(&self, zone: crate::models::TrustZone, tenant: Option<&str>) -> ZonePolicy {
        use crate::models::TrustZone;
        let (builtin, global) = match zone {
            TrustZone::Internal => (ZonePolicy::internal(), &self.internal),
            TrustZone::External => (ZonePolicy::external(), &self.external),
        };
        let p = global.apply(&builtin);
        match tenant.and_then(|t| self.tenants.get(t)) {
            Some(t) => match zone {
                TrustZone::Internal => t.internal.apply(&p),
                TrustZone::External => t.external.apply(&p),
            },
            None => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::TrustZone;

    #[test]
    fn overrides_layer() {
        let mut s = GuardSettings::default();
        s.external.injection = Some(GuardAction::Log);
        let mut t = TenantGuardPolicy::default();
        t.external.pii = Some(GuardAction::Block);
        s.tenants.insert("t1".into(), t);
        let p = s.zone_policy(TrustZone::External, None);
        assert_eq!(p.injection, GuardAction::Log);
        assert_eq!(p.pii, GuardAction::Pseudonymise);
        assert_eq!(p.secret, GuardAction::Block);
        let p = s.zone_policy(TrustZone::External, Some("t1"));
        assert_eq!(p.pii, GuardAction::Block);
        assert_eq!(p.injection, GuardAction::Log);
        assert_eq!(
            s.zone_policy(TrustZone::Internal, Some("t1")),
            ZonePolicy::internal()
        );
    }
}
