//! The output guard: checks the answer as it streams.
//!
//! Text is held back in a window (`output_window` characters, at least the longest placeholder
//! and the canary) so that a secret, card number or canary split across chunks is complete
//! before any of it is shown. What leaves the window is checked for values (secrets, PII),
//! the canary and long verbatim runs of the system prompt (leakage), and unsafe markup; then
//! the conversation's placeholders are restored for its owner.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use palisade_core::guard::{FindingSummary, GuardAction, OutputGuard, OutputStep, Pseudonyms};
use palisade_types::guard::ZonePolicy;
use regex::Regex;

use crate::model::{for_each_word, hash_bytes};
use crate::normalize;
use crate::pii::{self, ValueCategory};

/// Words in a row that must match the system prompt to count as leakage.
const SHINGLE: usize = 8;

/// Only restores placeholders (the guard is turned off).
pub struct Restorer {
    vault: Pseudonyms,
    pending: String,
}

impl Restorer {
    pub fn new(vault: Pseudonyms) -> Self {
        Self {
            vault,
            pending: String::new(),
        }
    }
}

impl OutputGuard for Restorer {
    fn push(&mut self, chunk: &str) -> OutputStep {
        if self.vault.is_empty() {
            return OutputStep::Emit(chunk.to_string());
        }
        self.pending.push_str(chunk);
        let cut = placeholder_safe_cut(&self.pending, self.pending.len());
        let head: String = self.pending.drain(..cut).collect();
        OutputStep::Emit(self.vault.restore(&head))
    }
    fn finish(&mut self) -> OutputStep {
        let rest = std::mem::take(&mut self.pending);
        OutputStep::Emit(self.vault.restore(&rest))
    }
    fn findings(&self) -> Vec<FindingSummary> {
        Vec::new()
    }
}

/// The streaming output guard.
pub struct StreamGuard {
    policy: ZonePolicy,
    window: usize,
    vault: Pseudonyms,
    canary: String,
    prompt_shingles: PromptShingles,
    /// Folded words of the recent answer (for shingles across the emitted boundary).
    recent_words: Vec<u32>,
    leak_hits: usize,
    pending: String,
    findings: Vec<FindingSummary>,
    /// Inside a private key block: drop everything until its end marker.
    in_private_key: bool,
    allowed_image_hosts: Vec<String>,
    blocked: bool,
}

impl StreamGuard {
    pub fn new(
        policy: ZonePolicy,
        window: usize,
        vault: Pseudonyms,
        system_prompt: &str,
        canary: &str,
        allowed_image_hosts: Vec<String>,
    ) -> Self {
        let shingles = PromptShingles::of(&PromptShingles::key(system_prompt, canary));
        Self::with_shingles(policy, window, vault, shingles, canary, allowed_image_hosts)
    }

    /// [`StreamGuard::new`] with the system prompt's shingles already made (they are the same
    /// for every request with that prompt; see [`PromptShingles::key`]).
    pub fn with_shingles(
        policy: ZonePolicy,
        window: usize,
        vault: Pseudonyms,
        prompt_shingles: PromptShingles,
        canary: &str,
        allowed_image_hosts: Vec<String>,
    ) -> Self {
        let window = window
            .max(vault.longest_placeholder() + 2)
            .max(canary.len() + 2)
            .max(24);
        Self {
            policy,
            window,
            vault,
            canary: canary.to_string(),
            prompt_shingles,
            recent_words: Vec::new(),
            leak_hits: 0,
            pending: String::new(),
            findings: Vec::new(),
            in_private_key: false,
            allowed_image_hosts,
            blocked: false,
        }
    }

    fn note(&mut self, category: &str, kind: &str, action: GuardAction) {
        if action == GuardAction::Allow {
            return;
        }
        // One finding per kind is enough for the record.
        if self
            .findings
            .iter()
            .any(|f| f.category == category && f.kind == kind && f.action == action)
        {
            return;
        }
        self.findings.push(FindingSummary {
            category: category.into(),
            kind: kind.into(),
            score: 1.0,
            action,
            turn: None,
        });
    }

    /// Checks and releases `pending[..limit]` (everything when `finishing`).
    fn release(&mut self, finishing: bool) -> OutputStep {
        if self.blocked {
            return OutputStep::Block(vec!["leak".into()]);
        }
        // The canary anywhere in what we hold is a leak of the system prompt.
        if !self.canary.is_empty() && self.pending.contains(&self.canary) {
            return self.block("leak", "canary", self.policy.leak, "[REDACTED]");
        }
        let mut cut = if finishing {
            self.pending.len()
        } else {
            floor_char(
                &self.pending,
                self.pending.len().saturating_sub(self.window),
            )
        };
        if cut == 0 {
            return OutputStep::Emit(String::new());
        }
        let hits = pii::find_values(&self.pending);
        if !finishing {
            // A value running into the window may still grow: hold it back whole.
            for h in &hits {
                if h.start < cut && h.end > cut {
                    cut = h.start;
                }
            }
            cut = placeholder_safe_cut(&self.pending, cut);
            cut = markup_safe_cut(&self.pending, cut);
        }
        let mut out = String::with_capacity(cut + 16);
        // Where in `out` the body of an unterminated private key begins (what follows is dropped
        // up to its END line): 0 when the key was opened by an earlier release.
        let mut key_from = 0;
        let mut at = 0;
        let mut block: Option<(&'static str, &'static str)> = None;
        for h in hits.iter().filter(|h| h.end <= cut) {
            let action = match h.category {
                ValueCategory::Secret => self.policy.output_secret,
                ValueCategory::Pii => self.policy.output_pii,
            };
            self.note(h.category.as_str(), h.kind, action);
            match action {
                GuardAction::Block => {
                    block = Some((h.category.as_str(), h.kind));
                    break;
                }
                GuardAction::Redact | GuardAction::Pseudonymise => {
                    out.push_str(&self.pending[at..h.start]);
                    out.push_str(&format!("[REDACTED:{}]", h.label()));
                    at = h.end;
                    if h.kind == "private_key" && !self.pending[h.start..h.end].contains("-----END")
                    {
                        self.in_private_key = true;
                        key_from = out.len();
                    }
                }
                _ => {}
            }
        }
        if let Some((category, kind)) = block {
            let action = GuardAction::Block;
            return self.block(category, kind, action, "");
        }
        out.push_str(&self.pending[at..cut]);
        self.pending.drain(..cut);

        if self.in_private_key {
            // The text before the key and its [REDACTED] marker stay; the key's body goes.
            let end = out[key_from..].find("-----END").and_then(|i| {
                let i = key_from + i;
                out[i..].find("KEY-----").map(|j| i + j + 8)
            });
            match end {
                Some(end) => {
                    out.replace_range(key_from..end, "");
                    self.in_private_key = false;
                }
                None => out.truncate(key_from),
            }
        }

        // Leakage: long verbatim runs of the system prompt.
        if !self.prompt_shingles.is_empty() {
            self.recent_words
                .extend(word_hashes(&normalize::fold(&out)));
            let n = self.recent_words.len();
            if n >= SHINGLE {
                self.leak_hits = self.prompt_shingles.distinct_hits(&self.recent_words);
                if self.leak_hits >= 2 {
                    return self.block("leak", "system_prompt", self.policy.leak, "");
                }
            }
            if n > 4 * SHINGLE {
                self.recent_words.drain(..n - 2 * SHINGLE);
            }
        }

        let out = self.markup(out);
        OutputStep::Emit(self.vault.restore(&out))
    }

    fn block(
        &mut self,
        category: &str,
        kind: &str,
        action: GuardAction,
        replacement: &str,
    ) -> OutputStep {
        self.note(category, kind, action);
        match action {
            GuardAction::Block => {
                self.blocked = true;
                self.pending.clear();
                OutputStep::Block(vec![category.to_string()])
            }
            GuardAction::Redact | GuardAction::Pseudonymise if kind == "canary" => {
                self.pending = self.pending.replace(&self.canary, replacement);
                OutputStep::Emit(String::new())
            }
            _ => {
                if kind == "canary" {
                    // Logged only: do not find the same canary again.
                    self.canary.clear();
                }
                self.prompt_shingles = PromptShingles::default();
                OutputStep::Emit(String::new())
            }
        }
    }

    /// Removes images from hosts not allowed and `javascript:`/`data:` links.
    fn markup(&mut self, text: String) -> String {
        if !text.contains("](") && !text.contains("<img") && !text.contains("javascript:") {
            return text;
        }
        let action = self.policy.unsafe_markup;
        if matches!(action, GuardAction::Allow | GuardAction::Log) {
            if unsafe_markup(&text, &self.allowed_image_hosts) {
                self.note("unsafe_markup", "link", action);
            }
            return text;
        }
        let (fixed, changed) = neutralise_markup(&text, &self.allowed_image_hosts);
        if changed {
            self.note("unsafe_markup", "link", action);
        }
        fixed
    }
}

impl OutputGuard for StreamGuard {
    fn push(&mut self, chunk: &str) -> OutputStep {
        self.pending.push_str(chunk);
        self.release(false)
    }

    fn finish(&mut self) -> OutputStep {
        self.release(true)
    }

    fn findings(&self) -> Vec<FindingSummary> {
        self.findings.clone()
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Never cut inside `<KIND_N>`: move the cut before an unclosed `<` near it.
fn placeholder_safe_cut(s: &str, cut: usize) -> usize {
    let from = floor_char(s, cut.saturating_sub(40));
    match s[from..cut].rfind('<') {
        Some(i) if !s[from + i..cut].contains('>') => from + i,
        _ => cut,
    }
}

/// Never cut inside a markdown link or image: move the cut before its `[`/`![`.
fn markup_safe_cut(s: &str, cut: usize) -> usize {
    let from = floor_char(s, cut.saturating_sub(300));
    let region = &s[from..cut];
    if let Some(i) = region.rfind('[') {
        let tail = &region[i..];
        // `[text](url` without its `)` yet, or `[text` without `]`.
        let open_link = match tail.find("](") {
            Some(j) => !tail[j..].contains(')'),
            None => !tail.contains(']'),
        };
        if open_link {
            let start = if i > 0 && region.as_bytes()[i - 1] == b'!' {
                i - 1
            } else {
                i
            };
            return from + start;
        }
    }
    cut
}

fn markup_res() -> Option<&'static (Regex, Regex, Regex)> {
    static R: OnceLock<Option<(Regex, Regex, Regex)>> = OnceLock::new();
    R.get_or_init(|| {
        let img = Regex::new(
            r#"!\[([^\]]{0,200})\]\(\s*<?([a-zA-Z][a-zA-Z0-9+.\-]*:[^)\s>]*)>?(?:\s+"[^"]*")?\s*\)"#,
        );
        let link =
            Regex::new(r#"\[([^\]]{0,200})\]\(\s*<?((?i:javascript|vbscript|data):[^)]*)\)"#);
        let html =
            Regex::new(r#"(?i)<img\b[^>]*>|<a\b[^>]*href\s*=\s*["']?\s*javascript:[^>]*>"#);
        match (img, link, html) {
            (Ok(a), Ok(b), Ok(c)) => Some((a, b, c)),
            _ => {
                tracing::error!("markup patterns do not compile");
                None
            }
        }
    })
    .as_ref()
}

fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let host = rest.split(['/', '?', '#']).next()?;
    let host = host.rsplit('@').next()?;
    Some(host.split(':').next()?.to_ascii_lowercase())
}

fn image_allowed(url: &str, allowed: &[String]) -> bool {
    match host_of(url) {
        Some(h) => allowed.iter().any(|a| {
            h == a.to_ascii_lowercase() || h.ends_with(&format!(".{}", a.to_ascii_lowercase()))
        }),
        None => false,
    }
}

pub fn unsafe_markup(text: &str, allowed: &[String]) -> bool {
    let Some((img, link, html)) = markup_res() else {
        return false;
    };
    img.captures_iter(text).any(|c| {
        c.get(2)
            .is_some_and(|u| !image_allowed(u.as_str(), allowed))
    }) || link.is_match(text)
        || html.is_match(text)
}

/// Rewrites unsafe markup into plain text: images from other hosts become `[image: alt]`,
/// script links keep their text only, a raw `<img>` becomes `[image removed]` and a
/// `javascript:` anchor tag `[link removed]` (its text stays).
pub fn neutralise_markup(text: &str, allowed: &[String]) -> (String, bool) {
    let Some((img, link, html)) = markup_res() else {
        return (text.to_string(), false);
    };
    let mut changed = false;
    let step1 = img.replace_all(text, |c: &regex::Captures<'_>| {
        let url = c.get(2).map_or("", |m| m.as_str());
        if image_allowed(url, allowed) {
            c.get(0).map_or(String::new(), |m| m.as_str().to_string())
        } else {
            changed = true;
            format!("[image: {}]", c.get(1).map_or("", |m| m.as_str()))
        }
    });
    let step2 = link.replace_all(&step1, |c: &regex::Captures<'_>| {
        changed = true;
        c.get(1).map_or(String::new(), |m| m.as_str().to_string())
    });
    // A visible trace where a tag was: an answer made only of unsafe markup never comes out
    // empty, which would read as a fault (found by fuzz/run guard).
    let step3 = html.replace_all(&step2, |c: &regex::Captures<'_>| {
        changed = true;
        let tag = c.get(0).map_or("", |m| m.as_str());
        if tag.len() >= 4 && tag[..4].eq_ignore_ascii_case("<img") {
            "[image removed]".to_string()
        } else {
            "[link removed]".to_string()
        }
    });
    (step3.into_owned(), changed)
}

fn word_hashes(folded: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for_each_word(folded, |w| {
        if w.len() > 1 || w[0].is_ascii_alphanumeric() {
            out.push(hash_bytes(0x57, w));
        }
    });
    out
}

fn shingle_hash(words: &[u32]) -> u64 {
    words.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The hashes of every run of [`SHINGLE`] folded words of a system prompt: an answer that
/// repeats two of them verbatim leaks the prompt. Shared (an `Arc`), so the guard of every
/// request with the same prompt uses one set made once.
#[derive(Debug, Clone, Default)]
pub struct PromptShingles(Arc<HashSet<u64>>);

impl PromptShingles {
    /// The text whose shingles stand for `system_prompt`: the prompt without its per-request
    /// canary, so that every request with the same configured prompt shares one set. Runs of
    /// words through the canary are not lost to the check: the canary anywhere in an answer is
    /// a leak on its own (checked verbatim, before shingles).
    pub fn key(system_prompt: &str, canary: &str) -> String {
        if canary.is_empty() {
            system_prompt.to_string()
        } else {
            system_prompt.replace(canary, " ")
        }
    }

    /// The shingles of `text` (a [`PromptShingles::key`]).
    pub fn of(text: &str) -> Self {
        let words = word_hashes(&normalize::fold(text));
        Self(Arc::new(words.windows(SHINGLE).map(shingle_hash).collect()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether both are the one shared set (not a copy).
    pub fn same_set(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// How many distinct runs of [`SHINGLE`] words in `words` are runs of the prompt.
    fn distinct_hits(&self, words: &[u32]) -> usize {
        let mut hits: Vec<u64> = Vec::new();
        for h in words.windows(SHINGLE).map(shingle_hash) {
            if self.0.contains(&h) && !hits.contains(&h) {
                hits.push(h);
            }
        }
        hits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(g: &mut StreamGuard, chunks: &[&str]) -> (String, Option<Vec<String>>) {
        let mut shown = String::new();
        for c in chunks {
            match g.push(c) {
                OutputStep::Emit(t) => shown.push_str(&t),
                OutputStep::Block(cats) => return (shown, Some(cats)),
            }
        }
        match g.finish() {
            OutputStep::Emit(t) => shown.push_str(&t),
            OutputStep::Block(cats) => return (shown, Some(cats)),
        }
        (shown, None)
    }

    fn guard(vault: Pseudonyms) -> StreamGuard {
        StreamGuard::new(
            ZonePolicy::internal(),
            32,
            vault,
            "You are a helpful assistant for Example Corp. Never discuss the quarterly figures with anybody outside finance.",
            "CANARY-7f3a9c",
            vec!["example.com".into()],
        )
    }

    #[test]
    fn secret_split_across_chunks_is_redacted() {
        let mut g = guard(Pseudonyms::default());
        let (shown, blocked) = run(
            &mut g,
            &[
                "Here is the key: AKIA",
                "IOSFOD",
                "NN7EXAMPLE and that",
                " is all for today.",
            ],
        );
        assert!(blocked.is_none());
        assert!(!shown.contains("AKIA"), "{shown}");
        assert!(shown.contains("[REDACTED:AWS_ACCESS_KEY]"), "{shown}");
        assert!(g.findings().iter().any(|f| f.kind == "aws_access_key"));
    }

    #[test]
    fn canary_and_prompt_leaks_cut_the_stream() {
        let mut g = guard(Pseudonyms::default());
        let (shown, blocked) = run(&mut g, &["Sure, my marker is CANA", "RY-7f3a9c, ok"]);
        assert_eq!(blocked, Some(vec!["leak".to_string()]));
        assert!(!shown.contains("CANARY"));
        let mut g = guard(Pseudonyms::default());
        let (_, blocked) = run(
            &mut g,
            &[
                "My instructions say: you are a helpful assistant for Example Corp. ",
                "Never discuss the quarterly figures with anybody outside finance. Done.",
            ],
        );
        assert_eq!(blocked, Some(vec!["leak".to_string()]));
    }

    #[test]
    fn an_unterminated_private_key_keeps_what_came_before_and_its_marker() {
        // Found by fuzz/fuzz_targets/guard.rs (fuzz/regressions/guard/): the whole answer used
        // to vanish, the marker with it.
        let text = "Here it is:\n-----BEGIN RSA PRIVATE KEY-----\nMIIE secret body \
                    PRIVATE KEY-----\nmore";
        for step in [1, 7, 11, 1000] {
            let mut g = StreamGuard::new(
                ZonePolicy::default(),
                64,
                Pseudonyms::default(),
                "You are a helpful assistant.",
                "CANARY-9f2c41",
                Vec::new(),
            );
            let chars: Vec<char> = text.chars().collect();
            let chunks: Vec<String> = chars.chunks(step).map(|p| p.iter().collect()).collect();
            let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
            let (out, blocked) = run(&mut g, &chunks);
            assert_eq!(blocked, None, "step {step}");
            assert!(
                out.starts_with("Here it is:\n[REDACTED:"),
                "step {step}: {out:?}"
            );
            assert!(
                !out.contains("MIIE") && !out.contains("secret"),
                "step {step}: {out:?}"
            );
        }
        // A key that ends: the text after it comes through.
        let mut g = StreamGuard::new(
            ZonePolicy::default(),
            64,
            Pseudonyms::default(),
            "",
            "",
            Vec::new(),
        );
        let mut out = String::new();
        for chunk in [
            "Key: -----BEGIN PRIVATE KEY-----\nMIIE",
            "abc\n-----END PRIVATE KEY----- and then the rest of a long enough answer to pass the window of sixty-four characters",
        ] {
            if let OutputStep::Emit(s) = g.push(chunk) {
                out.push_str(&s);
            }
        }
        if let OutputStep::Emit(s) = g.finish() {
            out.push_str(&s);
        }
        assert!(out.starts_with("Key: [REDACTED:"), "{out:?}");
        assert!(out.ends_with("sixty-four characters"), "{out:?}");
        assert!(!out.contains("MIIE"), "{out:?}");
    }

    #[test]
    fn raw_unsafe_tags_leave_a_visible_trace() {
        // Found by fuzz/run guard: an answer that was one long `<img ...>` came out empty.
        let (out, changed) = neutralise_markup(
            "<img src=x onerror=alert(1)> and <a href=\"javascript:go()\">go</a>",
            &[],
        );
        assert!(changed);
        assert_eq!(out, "[image removed] and [link removed]go</a>");
        assert!(!unsafe_markup(&out, &[]));
    }

    #[test]
    fn placeholders_restored_even_when_split() {
        let mut vault = Pseudonyms::default();
        let p = vault.placeholder("EMAIL", "jane@example.com");
        assert_eq!(p, "<EMAIL_1>");
        let mut g = guard(vault);
        let (shown, _) = run(&mut g, &["I wrote to <EMA", "IL_1> and <EMAIL 2> today."]);
        assert_eq!(shown, "I wrote to jane@example.com and <EMAIL 2> today.");
    }

    #[test]
    fn markup_is_neutralised() {
        let mut g = guard(Pseudonyms::default());
        let (shown, _) = run(
            &mut g,
            &[
                "See ![chart](https://evil.example.net/x.png?d=secret) and ",
                "![logo](https://cdn.example.com/l.png) and [click](javascript:alert(1)) ok",
            ],
        );
        assert!(!shown.contains("evil.example.net"), "{shown}");
        assert!(shown.contains("[image: chart]"));
        assert!(shown.contains("https://cdn.example.com/l.png"));
        assert!(!shown.contains("javascript:"), "{shown}");
    }

    #[test]
    fn plain_text_streams_unchanged() {
        let mut g = guard(Pseudonyms::default());
        let text = "The capital of France is Paris. It has about two million inhabitants.";
        let chunks: Vec<String> = text.chars().map(|c| c.to_string()).collect();
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let (shown, blocked) = run(&mut g, &refs);
        assert!(blocked.is_none());
        assert_eq!(shown, text);
    }
}
