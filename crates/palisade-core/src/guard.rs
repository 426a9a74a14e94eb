//! The guard port: what the chat pipeline asks of the LLM firewall, and the pseudonym vault
//! that keeps placeholders stable across the turns of one conversation.
//!
//! The detectors live in `palisade-guard`; the pipeline only sees verdicts. A verdict never
//! carries the matched text, only categories, kinds and scores, so it is safe to log and audit.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::TenantId;
use crate::provider::PromptMessage;
use palisade_types::models::TrustZone;

pub use palisade_types::guard::{GuardAction, TenantGuardPolicy, ZonePolicy};

/// One finding as the pipeline, logs and audit see it: no matched text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingSummary {
    /// `injection`, `pii`, `secret`, `toxicity`, `leak`, `unsafe_markup`.
    pub category: String,
    /// The detector: `email`, `aws_access_key`, `instruction_override`, `threat`, ...
    pub kind: String,
    /// 0..1.
    pub score: f32,
    pub action: GuardAction,
    /// Which turn of the conversation (0 = first message the client sent); `None` for output.
    pub turn: Option<usize>,
}

/// Whom and where a request goes: what selects the policy.
#[derive(Debug, Clone)]
pub struct GuardScope {
    pub tenant: TenantId,
    pub zone: TrustZone,
    pub model: String,
}

/// The input guard's decision on a conversation.
#[derive(Debug, Clone, Default)]
pub struct InputVerdict {
    /// The conversation to send to the model (redacted / pseudonymised where the policy says).
    pub messages: Vec<PromptMessage>,
    pub findings: Vec<FindingSummary>,
    /// Set when the request must be refused: the categories that caused it.
    pub blocked: Option<Vec<String>>,
}

/// What the output guard lets through after a chunk of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputStep {
    /// Text that is safe to show (may be empty while the window fills).
    Emit(String),
    /// Stop the answer: the categories that caused it.
    Block(Vec<String>),
}

/// Checks an answer as it streams, with a window held back so a value split across chunks is
/// still caught before any of it reaches the user.
pub trait OutputGuard: Send {
    fn push(&mut self, chunk: &str) -> OutputStep;
    /// The end of the answer: releases the held-back window.
    fn finish(&mut self) -> OutputStep;
    fn findings(&self) -> Vec<FindingSummary>;
}

/// The LLM firewall as the pipeline uses it.
pub trait Guard: Send + Sync {
    /// Inspects every turn the model will see (`messages` without the server's system prompt).
    /// Placeholders are taken from and added to `vault`.
    fn check_input(
        &self,
        scope: &GuardScope,
        messages: Vec<PromptMessage>,
        vault: &mut Pseudonyms,
    ) -> InputVerdict;

    /// The hardened system prompt for this scope around the configured base prompt, with the
    /// per-request canary the output guard watches for.
    fn system_prompt(&self, scope: &GuardScope, base: &str, canary: &str) -> String;

    /// A fresh output guard for one answer.
    fn output(
        &self,
        scope: &GuardScope,
        vault: Pseudonyms,
        system_prompt: &str,
        canary: &str,
    ) -> Box<dyn OutputGuard>;

    /// Whether conversations of this scope need a vault (pseudonymisation may happen).
    fn uses_vault(&self, scope: &GuardScope) -> bool;

    /// Replaces a tenant's policy at run time; `None` goes back to the configured one.
    fn set_tenant_policy(&self, _tenant: TenantId, _policy: Option<TenantGuardPolicy>) {}

    /// A tenant's policy: its overrides and what applies in each zone. `None` when there is no
    /// guard.
    fn tenant_policy(&self, _tenant: TenantId) -> Option<TenantPolicyView> {
        None
    }
}

/// What applies to one tenant, for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicyView {
    pub enabled: bool,
    /// The tenant's own changes (from the configuration or an admin), if any.
    pub overrides: Option<TenantGuardPolicy>,
    pub injection_threshold: f32,
    pub internal: ZonePolicy,
    pub external: ZonePolicy,
    /// The same without the tenant's changes (what "inherit" means).
    pub default_injection_threshold: f32,
    pub default_internal: ZonePolicy,
    pub default_external: ZonePolicy,
}

/// A guard that lets everything through (tests of other parts, `guard.enabled = false`).
pub struct NoGuard;

struct PassThrough;

impl OutputGuard for PassThrough {
    fn push(&mut self, chunk: &str) -> OutputStep {
        OutputStep::Emit(chunk.to_string())
    }
    fn finish(&mut self) -> OutputStep {
        OutputStep::Emit(String::new())
    }
    fn findings(&self) -> Vec<FindingSummary> {
        Vec::new()
    }
}

impl Guard for NoGuard {
    fn check_input(
        &self,
        _scope: &GuardScope,
        messages: Vec<PromptMessage>,
        _vault: &mut Pseudonyms,
    ) -> InputVerdict {
        InputVerdict {
            messages,
            ..InputVerdict::default()
        }
    }
    fn system_prompt(&self, _scope: &GuardScope, base: &str, _canary: &str) -> String {
        base.to_string()
    }
    fn output(
        &self,
        _scope: &GuardScope,
        _vault: Pseudonyms,
        _system_prompt: &str,
        _canary: &str,
    ) -> Box<dyn OutputGuard> {
        Box::new(PassThrough)
    }
    fn uses_vault(&self, _scope: &GuardScope) -> bool {
        false
    }
}

/// Placeholders of one conversation: `<EMAIL_1>` always stands for the same value within it.
/// Never sent upstream; kept per session by the repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pseudonyms {
    /// value → placeholder, keyed by `KIND\u{1f}value`.
    forward: HashMap<String, String>,
    /// placeholder → value.
    reverse: HashMap<String, String>,
    /// Next number per kind.
    counters: HashMap<String, u32>,
}

impl Pseudonyms {
    /// The placeholder for `value` of `kind` (e.g. `EMAIL`), made on first use.
    pub fn placeholder(&mut self, kind: &str, value: &str) -> String {
        let key = format!("{kind}\u{1f}{value}");
        if let Some(p) = self.forward.get(&key) {
            return p.clone();
        }
        let n = self.counters.entry(kind.to_string()).or_insert(0);
        *n += 1;
        let p = format!("<{kind}_{n}>");
        self.forward.insert(key, p.clone());
        self.reverse.insert(p.clone(), value.to_string());
        p
    }

    pub fn is_empty(&self) -> bool {
        self.reverse.is_empty()
    }

    pub fn len(&self) -> usize {
        self.reverse.len()
    }

    /// The value a placeholder stands for.
    pub fn value_of(&self, placeholder: &str) -> Option<&str> {
        self.reverse.get(placeholder).map(String::as_str)
    }

    /// Replaces every intact placeholder in `text` by its value. A placeholder the model mangled
    /// (`<EMAIL 1>`, `EMAIL_1`) is left as it is: readable, and never guessed.
    pub fn restore(&self, text: &str) -> String {
        if self.reverse.is_empty() || !text.contains('<') {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find('<') {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            match tail.find('>') {
                Some(end) if end <= 40 => {
                    let candidate = &tail[..=end];
                    match self.reverse.get(candidate) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(candidate),
                    }
                    rest = &tail[end + 1..];
                }
                _ => {
                    out.push('<');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Length of the longest placeholder (the output guard holds back at least this much).
    pub fn longest_placeholder(&self) -> usize {
        self.reverse.keys().map(String::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_stable_and_restored() {
        let mut v = Pseudonyms::default();
        let a = v.placeholder("EMAIL", "a@example.com");
        let b = v.placeholder("EMAIL", "b@example.com");
        assert_eq!(a, "<EMAIL_1>");
        assert_eq!(b, "<EMAIL_2>");
        assert_eq!(v.placeholder("EMAIL", "a@example.com"), a);
        assert_eq!(
            v.restore("write to <EMAIL_1> and <EMAIL_2>, not <EMAIL 1> or <EMAIL_9>"),
            "write to a@example.com and b@example.com, not <EMAIL 1> or <EMAIL_9>"
        );
        assert_eq!(v.restore("a < b > c"), "a < b > c");
        let json = serde_json::to_string(&v).unwrap_or_default();
        let back: Pseudonyms = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, v);
    }
}
