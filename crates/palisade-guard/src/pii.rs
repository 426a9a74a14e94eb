//! Detectors of values: personal data (PII) and secrets. Each finds candidate spans with a
//! regular expression and then checks them (Luhn, mod 97, date and region structure, address
//! parsing), so near misses are rejected rather than flagged.
//!
//! Spans are byte ranges in the text given (the `clean` view).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use regex::Regex;

/// `pii` or `secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueCategory {
    Pii,
    Secret,
}

impl ValueCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueCategory::Pii => "pii",
            ValueCategory::Secret => "secret",
        }
    }
}

/// One value found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueHit {
    pub category: ValueCategory,
    /// `email`, `phone`, `card`, `iban`, `ssn`, `egypt_national_id`, `ip`, `dob`,
    /// `aws_access_key`, `github_token`, ...
    pub kind: &'static str,
    pub start: usize,
    pub end: usize,
}

impl ValueHit {
    /// The placeholder label: `EMAIL`, `CARD`, ...
    pub fn label(&self) -> String {
        self.kind.to_ascii_uppercase()
    }
}

struct Detector {
    category: ValueCategory,
    kind: &'static str,
    re: Regex,
    /// Capture group holding the value (0 = whole match).
    group: usize,
    check: fn(&str, &str, usize) -> bool,
}

fn always(_: &str, _: &str, _: usize) -> bool {
    true
}

fn detectors() -> &'static [Detector] {
    static D: OnceLock<Vec<Detector>> = OnceLock::new();
    D.get_or_init(|| {
        let mut v = Vec::new();
        let mut add = |category, kind, pattern: &str, group, check| match Regex::new(pattern) {
            Ok(re) => v.push(Detector {
                category,
                kind,
                re,
                group,
                check,
            }),
            Err(e) => tracing::error!(error = %e, kind, "a value detector does not compile"),
        };
        use ValueCategory::{Pii, Secret};
        // --- secrets (first: a secret inside a URL is a secret, not a URL) ---
        add(
            Secret,
            "private_key",
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]{0,8000}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?",
            0,
            always,
        );
        add(Secret, "aws_access_key", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b", 0, always);
        add(
            Secret,
            "aws_secret_key",
            r#"(?i)\baws_?(?:secret)?_?(?:access)?_?key\b["']?\s*[:=]\s*["']?([A-Za-z0-9/+=]{40})\b"#,
            1,
            always,
        );
        add(Secret, "github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,255})\b", 0, always);
        add(Secret, "gitlab_token", r"\bglpat-[A-Za-z0-9_\-]{20,}\b", 0, always);
        add(Secret, "openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}\b", 0, always);
        add(Secret, "anthropic_key", r"\bsk-ant-[A-Za-z0-9_\-]{20,}\b", 0, always);
        add(Secret, "slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b", 0, always);
        add(Secret, "slack_webhook", r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}", 0, always);
        add(Secret, "google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}\b", 0, always);
        add(Secret, "stripe_key", r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b", 0, always);
        add(Secret, "palisade_key", r"\bpk_[A-Za-z0-9_\-]{32,}\b", 0, always);
        add(Secret, "jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\b", 0, always);
        add(Secret, "bearer_token", r"(?i)\bbearer\s+([A-Za-z0-9._~+/\-]{20,}=*)", 1, always);
        add(
            Secret,
            "password",
            r#"(?i)\b(?:password|passwd|pwd|passphrase|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)\b["']?\s*(?:[:=]|=>|\bis\b)\s*["']?([^\s"',;]{6,})"#,
            1,
            password_value,
        );
        add(Secret, "url_credentials", r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:([^\s:/@]{3,})@[^\s/]+", 1, always);
        // --- personal data ---
        add(
            Pii,
            "email",
            r"\b[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b",
            0,
            always,
        );
        add(
            Pii,
            "iban",
            r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
            0,
            iban_ok,
        );
        add(Pii, "egypt_national_id", r"\b[23][0-9]{13}\b", 0, egypt_id_ok);
        add(
            Pii,
            "card",
            r"\b[0-9]{4}(?:[ \-]?[0-9]{4}){2}[ \-]?[0-9]{1,7}\b|\b3[47][0-9]{2}[ \-]?[0-9]{6}[ \-]?[0-9]{5}\b",
            0,
            card_ok,
        );
        add(Pii, "ssn", r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b|\b[0-9]{9}\b", 0, ssn_ok);
        add(
            Pii,
            "phone",
            r"(?:\+|\b00)[1-9][0-9]{0,2}[ .\-]?(?:\([0-9]{1,4}\)[ .\-]?)?[0-9]{1,4}(?:[ .\-]?[0-9]{2,4}){1,4}\b|\(\d{3}\)[ .\-]?\d{3}[ .\-]\d{4}\b|\b\d{3}[.\-]\d{3}[.\-]\d{4}\b",
            0,
            phone_ok,
        );
        add(Pii, "ipv4", r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b", 0, ipv4_ok);
        add(
            Pii,
            "ipv6",
            r"(?i)(?:^|[^0-9a-f:])((?:[0-9a-f]{1,4}:){2,7}(?::|[0-9a-f]{1,4})(?:(?::[0-9a-f]{1,4}){0,6})?)",
            1,
            ipv6_ok,
        );
        add(
            Pii,
            "dob",
            r"(?i)\b(?:born(?: on)?|date of birth|d\.?o\.?b\.?|birth ?date|birthday|geburtsdatum|né(?:e)? le|fecha de nacimiento)\b[\s:,-]{0,4}(?:is |was |on )?((?:[0-9]{1,2}[./\- ][0-9]{1,2}[./\- ](?:19|20)[0-9]{2})|(?:(?:19|20)[0-9]{2}-[0-9]{2}-[0-9]{2})|(?:[0-9]{1,2}(?:st|nd|rd|th)? (?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?,? (?:19|20)[0-9]{2})|(?:(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? [0-9]{1,2}(?:st|nd|rd|th)?,? (?:19|20)[0-9]{2}))",
            1,
            always,
        );
        v
    })
}

/// What one cheap pass over a text found; a detector whose trigger is absent cannot match and
/// is skipped, so ordinary prose does not pay for twenty regular-expression passes.
struct Triggers {
    /// Detector kinds whose literal appears (ASCII case-insensitively).
    literals: Vec<&'static str>,
    /// Most digits in one run of `[0-9 .()+/-]` (numbers written in groups).
    grouped_digits: usize,
    /// Most digits in one unbroken run.
    contiguous_digits: usize,
    /// A run of `[0-9.]` with at least four digits and three dots.
    dotted_quad: bool,
    /// Two upper-case letters followed by two digits (an IBAN's start).
    iban_start: bool,
    /// `h:h:` with hex digits (an IPv6 address's start).
    hex_colons: bool,
    has_digit: bool,
}

/// Literals of which every match of a detector contains at least one.
const LITERALS: &[(&str, &[&str])] = &[
    ("private_key", &["-----begin "]),
    (
        "aws_access_key",
        &[
            "akia", "asia", "agpa", "aida", "aroa", "anpa", "anva", "aipa",
        ],
    ),
    ("aws_secret_key", &["aws"]),
    (
        "github_token",
        &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
    ),
    ("gitlab_token", &["glpat-"]),
    ("openai_key", &["sk-"]),
    ("anthropic_key", &["sk-ant-"]),
    ("slack_token", &["xox"]),
    ("slack_webhook", &["hooks.slack.com/services/"]),
    ("google_api_key", &["aiza"]),
    ("stripe_key", &["_live_", "_test_"]),
    ("palisade_key", &["pk_"]),
    ("jwt", &["eyj"]),
    ("bearer_token", &["bearer"]),
    (
        "password",
        &[
            "passw",
            "pwd",
            "passphrase",
            "secret",
            "apikey",
            "api_key",
            "api-key",
            "token",
        ],
    ),
    ("url_credentials", &["://"]),
    ("email", &["@"]),
    (
        "dob",
        &[
            "born",
            "birth",
            "dob",
            "d.ob",
            "do.b",
            "d.o.b",
            "geburtsdatum",
            "\u{e9} le",
            "\u{e9}e le",
            "\u{c9} le",
            "\u{c9}e le",
            "\u{c9}E le",
            "nacimiento",
        ],
    ),
];

fn literal_matcher() -> Option<&'static (aho_corasick::AhoCorasick, Vec<&'static str>)> {
    static AC: OnceLock<Option<(aho_corasick::AhoCorasick, Vec<&'static str>)>> = OnceLock::new();
    AC.get_or_init(|| {
        let mut kinds = Vec::new();
        let mut patterns = Vec::new();
        for (kind, lits) in LITERALS {
            for l in *lits {
                kinds.push(*kind);
                patterns.push(*l);
            }
        }
        match aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(&patterns)
        {
            Ok(ac) => Some((ac, kinds)),
            Err(e) => {
                tracing::error!(error = %e, "the value detectors' literals do not compile");
                None
            }
        }
    })
    .as_ref()
}

fn triggers(text: &str) -> Triggers {
    let b = text.as_bytes();
    let mut t = Triggers {
        literals: Vec::new(),
        grouped_digits: 0,
        contiguous_digits: 0,
        dotted_quad: false,
        iban_start: false,
        hex_colons: false,
        has_digit: false,
    };
    match literal_matcher() {
        Some((ac, kinds)) => {
            for m in ac.find_overlapping_iter(text) {
                let k = kinds[m.pattern().as_usize()];
                if !t.literals.contains(&k) {
                    t.literals.push(k);
                }
            }
        }
        // Without the matcher every detector runs.
        None => t.literals = LITERALS.iter().map(|(k, _)| *k).collect(),
    }
    let mut st = DigitRuns::default();
    // Sixteen bytes at a time: a block with no digit, '.' or ':' (most of prose) only resets
    // the runs, which a vectorised test of the block finds without looking at each byte.
    let mut at = 0;
    for block in b.chunks_exact(16) {
        let special = block.iter().fold(false, |acc, &c| {
            acc | (c.wrapping_sub(b'0') < 10) | (c == b'.') | (c == b':')
        });
        if special {
            for i in at..at + 16 {
                st.byte(b, i, &mut t);
            }
        } else {
            let all_separators = block
                .iter()
                .fold(true, |acc, &c| acc & is_group_separator(c));
            st.contiguous = 0;
            st.dq_digits = 0;
            st.dq_dots = 0;
            if !all_separators {
                st.grouped = 0;
            }
        }
        at += 16;
    }
    for i in at..b.len() {
        st.byte(b, i, &mut t);
    }
    t
}

/// Bytes that continue a run of grouped digits (`+1 (555) 010-9999`, `4111 1111 ...`).
#[inline]
fn is_group_separator(c: u8) -> bool {
    matches!(c, b' ' | b'.' | b'(' | b')' | b'+' | b'/' | b'-')
}

/// The digit runs [`triggers`] follows, byte by byte.
#[derive(Default)]
struct DigitRuns {
    grouped: usize,
    contiguous: usize,
    dq_digits: usize,
    dq_dots: usize,
}

impl DigitRuns {
    #[inline]
    fn byte(&mut self, b: &[u8], i: usize, t: &mut Triggers) {
        let c = b[i];
        if c.is_ascii_digit() {
            t.has_digit = true;
            self.grouped += 1;
            self.contiguous += 1;
            self.dq_digits += 1;
            if self.dq_digits >= 4 && self.dq_dots >= 3 {
                t.dotted_quad = true;
            }
            t.grouped_digits = t.grouped_digits.max(self.grouped);
            t.contiguous_digits = t.contiguous_digits.max(self.contiguous);
            if i >= 3
                && b[i - 1].is_ascii_digit()
                && b[i - 2].is_ascii_uppercase()
                && b[i - 3].is_ascii_uppercase()
            {
                t.iban_start = true;
            }
            return;
        }
        self.contiguous = 0;
        if !is_group_separator(c) {
            self.grouped = 0;
        }
        if c == b'.' {
            self.dq_dots += 1;
        } else {
            self.dq_digits = 0;
            self.dq_dots = 0;
        }
        if c == b':' && i >= 1 && b[i - 1].is_ascii_hexdigit() {
            let n = b[i + 1..]
                .iter()
                .take(5)
                .take_while(|x| x.is_ascii_hexdigit())
                .count();
            if (1..=4).contains(&n) && b.get(i + 1 + n) == Some(&b':') {
                t.hex_colons = true;
            }
        }
    }
}

impl Triggers {
    /// Whether detector `kind` can match at all.
    fn allows(&self, kind: &str) -> bool {
        match kind {
            "card" => self.grouped_digits >= 13,
            "ssn" => self.grouped_digits >= 9,
            "phone" => self.grouped_digits >= 8,
            "egypt_national_id" => self.contiguous_digits >= 14,
            "ipv4" => self.dotted_quad,
            "iban" => self.iban_start,
            "ipv6" => self.hex_colons,
            "dob" => self.has_digit && self.literals.contains(&"dob"),
            k => self.literals.contains(&k),
        }
    }
}

/// Finds every value in `text`. Overlaps are resolved in favour of the earlier detector
/// (secrets before PII, specific before generic).
pub fn find_values(text: &str) -> Vec<ValueHit> {
    let mut hits: Vec<ValueHit> = Vec::new();
    let triggers = triggers(text);
    for d in detectors() {
        if !triggers.allows(d.kind) {
            continue;
        }
        for caps in d.re.captures_iter(text) {
            let Some(m) = caps.get(d.group) else { continue };
            if !(d.check)(m.as_str(), text, m.start()) {
                continue;
            }
            if hits.iter().any(|h| h.start < m.end() && m.start() < h.end) {
                continue;
            }
            hits.push(ValueHit {
                category: d.category,
                kind: d.kind,
                start: m.start(),
                end: m.end(),
            });
        }
    }
    hits.sort_by_key(|h| h.start);
    hits
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect()
}

pub fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = u32::from(x);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !d.is_empty() && sum.is_multiple_of(10)
}

/// A payment card number: Luhn and a known issuer prefix.
pub fn card_valid(s: &str) -> bool {
    card_ok(s, "", 0)
}

fn card_ok(s: &str, text: &str, at: usize) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) || !luhn(&d) {
        return false;
    }
    // Fourteen digits after "ID"/"national" are an identity number, not a card.
    if d.len() == 14 && context_mentions(text, at, &["id", "national", "identity", "قومي"]) {
        return false;
    }
    // A known issuer prefix: Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro, Mir.
    let p2 = u32::from(d[0]) * 10 + u32::from(d[1]);
    let p4 = p2 * 100 + u32::from(d[2]) * 10 + u32::from(d[3]);
    let p3 = p4 / 10;
    matches!(d[0], 4)
        || (51..=55).contains(&p2)
        || (2221..=2720).contains(&p4)
        || matches!(
            p2,
            34 | 37 | 36 | 38 | 62 | 65 | 35 | 50 | 56..=58 | 67 | 63
        )
        || p4 == 6011
        || (300..=305).contains(&p3)
        || (2200..=2204).contains(&p4)
        || (644..=649).contains(&p3)
}

/// IBAN lengths by country (ISO 13616 registry).
fn iban_length(cc: &str) -> Option<usize> {
    Some(match cc {
        "AL" => 28,
        "AD" => 24,
        "AT" => 20,
        "AZ" => 28,
        "BH" => 22,
        "BY" => 28,
        "BE" => 16,
        "BA" => 20,
        "BR" => 29,
        "BG" => 22,
        "CR" => 22,
        "HR" => 21,
        "CY" => 28,
        "CZ" => 24,
        "DK" => 18,
        "DO" => 28,
        "TL" => 23,
        "EG" => 29,
        "SV" => 28,
        "EE" => 20,
        "FO" => 18,
        "FI" => 18,
        "FR" => 27,
        "GE" => 22,
        "DE" => 22,
        "GI" => 23,
        "GR" => 27,
        "GL" => 18,
        "GT" => 28,
        "HU" => 28,
        "IS" => 26,
        "IQ" => 23,
        "IE" => 22,
        "IL" => 23,
        "IT" => 27,
        "JO" => 30,
        "KZ" => 20,
        "XK" => 20,
        "KW" => 30,
        "LV" => 21,
        "LB" => 28,
        "LY" => 25,
        "LI" => 21,
        "LT" => 20,
        "LU" => 20,
        "MT" => 31,
        "MR" => 27,
        "MU" => 30,
        "MC" => 27,
        "MD" => 24,
        "ME" => 22,
        "NL" => 18,
        "MK" => 19,
        "NO" => 15,
        "PK" => 24,
        "PS" => 29,
        "PL" => 28,
        "PT" => 25,
        "QA" => 29,
        "RO" => 24,
        "LC" => 32,
        "SM" => 27,
        "ST" => 25,
        "SA" => 24,
        "RS" => 22,
        "SC" => 31,
        "SK" => 24,
        "SI" => 19,
        "ES" => 24,
        "SD" => 18,
        "SE" => 24,
        "CH" => 21,
        "TN" => 24,
        "TR" => 26,
        "UA" => 29,
        "AE" => 23,
        "GB" => 22,
        "VA" => 22,
        "VG" => 24,
        _ => return None,
    })
}

pub fn iban_valid(compact: &str) -> bool {
    let b = compact.as_bytes();
    if b.len() < 15 || b.len() > 34 {
        return false;
    }
    match iban_length(&compact[..2]) {
        Some(n) if n == b.len() => {}
        _ => return false,
    }
    let mut rem: u32 = 0;
    for &c in b[4..].iter().chain(b[..4].iter()) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn iban_ok(s: &str, _: &str, _: usize) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    iban_valid(&compact)
}

/// Egyptian national ID: century digit (2 = 1900s, 3 = 2000s), birth date YYMMDD, governorate
/// code, four serial digits (the last of them odd for men, even for women) and a check digit.
pub fn egypt_id_valid(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 14 {
        return false;
    }
    let century = match d[0] {
        2 => 1900,
        3 => 2000,
        _ => return false,
    };
    let year = century + u32::from(d[1]) * 10 + u32::from(d[2]);
    let month = u32::from(d[3]) * 10 + u32::from(d[4]);
    let day = u32::from(d[5]) * 10 + u32::from(d[6]);
    if !valid_date(year, month, day) {
        return false;
    }
    let gov = u32::from(d[7]) * 10 + u32::from(d[8]);
    matches!(gov, 1..=4 | 11..=19 | 21..=35 | 88)
}

fn egypt_id_ok(s: &str, text: &str, at: usize) -> bool {
    // A Diners Club card can look like an ID of someone born in 2000-2005.
    egypt_id_valid(s)
        && !context_mentions(text, at, &["card", "visa", "mastercard", "diners", "amex"])
}

/// Up to `n` bytes of `text` before `at` (a match's start), from a character boundary.
fn before(text: &str, at: usize, n: usize) -> &str {
    let mut from = at.saturating_sub(n);
    while from > 0 && !text.is_char_boundary(from) {
        from -= 1;
    }
    text.get(from..at).unwrap_or_default()
}

/// Whether one of `words` (lower case) appears as a word in the 40 bytes before `at`.
fn context_mentions(text: &str, at: usize, words: &[&str]) -> bool {
    let before = before(text, at, 40).to_lowercase();
    before
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| words.contains(&w))
}

pub fn valid_date(year: u32, month: u32, day: u32) -> bool {
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000. Nine digits without dashes
/// count only next to a context word.
fn ssn_ok(s: &str, text: &str, at: usize) -> bool {
    let d = digits(s);
    if d.len() != 9 {
        return false;
    }
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = u32::from(d[3]) * 10 + u32::from(d[4]);
    let serial = d[5..].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return false;
    }
    if s.contains('-') {
        return true;
    }
    let lower = before(text, at, 40).to_ascii_lowercase();
    lower.contains("ssn") || lower.contains("social security")
}

fn phone_ok(s: &str, text: &str, at: usize) -> bool {
    let d = digits(s);
    let international = s.starts_with('+') || s.starts_with("00");
    let n = if s.starts_with("00") {
        d.len() - 2
    } else {
        d.len()
    };
    if international {
        if !(8..=15).contains(&n) {
            return false;
        }
    } else if d.len() != 10 {
        return false;
    }
    // Not the tail of a longer code (an IBAN or account number in groups of digits).
    if let Some(token) = text[..at].trim_end().rsplit(char::is_whitespace).next() {
        if !token.is_empty()
            && text[..at].ends_with(char::is_whitespace)
            && token.chars().all(|c| c.is_ascii_alphanumeric())
            && token.chars().any(|c| c.is_ascii_digit())
        {
            return false;
        }
    }
    // Not part of a longer number or a date/version.
    let prev = text[..at].chars().next_back();
    if matches!(prev, Some(c) if c.is_ascii_alphanumeric() || c == '.' || c == '/') {
        return false;
    }
    // Separators must be consistent enough: a run of digits with dots only is an IP or version.
    !(s.matches('.').count() >= 3 && !s.contains(' ') && !s.starts_with('+'))
}

fn ipv4_ok(s: &str, text: &str, at: usize) -> bool {
    if s.parse::<Ipv4Addr>().is_err() {
        return false;
    }
    // "version 1.2.3.4" and "v1.2.3.4" are versions.
    // Found by fuzz/run guard: 9 bytes back may fall inside a character.
    let before = before(text, at, 9).to_ascii_lowercase();
    !(before.ends_with('v') || before.contains("version"))
}

fn ipv6_ok(s: &str, _: &str, _: usize) -> bool {
    s.matches(':').count() >= 2 && s.parse::<Ipv6Addr>().is_ok() && s.len() >= 6
}

/// `password=...` values that are plainly not secrets (`password: <redacted>`, `${VAR}`) pass.
fn password_value(s: &str, _: &str, _: usize) -> bool {
    let lower = s.to_ascii_lowercase();
    !(s.starts_with('$')
        || s.starts_with('<')
        || s.starts_with('*')
        || s.starts_with('[')
        || s.starts_with('{')
        || lower.starts_with("redacted")
        || lower == "required"
        || lower == "optional"
        || lower == "none"
        || lower == "null"
        || lower.starts_with("hidden")
        || lower.starts_with("your_")
        || lower.starts_with("placeholder"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_before_a_match_never_splits_a_character() {
        // Found by fuzz/run guard: an IPv4-like value 9 bytes after a two-byte character.
        for text in [
            "jr\u{2de}888888888api_key 10.1.2.3",
            "\u{2de}\u{2de}\u{2de}\u{2de}\u{2de}1.2.3.4",
            "\u{2de}\u{2de}\u{2de} 078-05-1120 123456789",
        ] {
            let _ = find_values(text);
        }
        assert_eq!(before("a\u{2de}bc", 4, 2), "\u{2de}b");
    }

    fn kinds(text: &str) -> Vec<&'static str> {
        find_values(text).into_iter().map(|h| h.kind).collect()
    }

    #[test]
    fn checksums() {
        assert!(luhn(&digits("4111111111111111")));
        assert!(!luhn(&digits("4111111111111112")));
        assert!(iban_valid("DE89370400440532013000"));
        assert!(!iban_valid("DE89370400440532013001"));
        assert!(iban_valid("GB82WEST12345698765432"));
        assert!(egypt_id_valid("29001011234567"));
        assert!(!egypt_id_valid("29013011234567")); // month 13
        assert!(!egypt_id_valid("29001019934567")); // governorate 99
        assert!(!egypt_id_valid("49001011234567")); // century 4
    }

    #[test]
    fn finds_values() {
        assert_eq!(kinds("mail me at jane.doe@example.com please"), ["email"]);
        assert_eq!(kinds("card 4111 1111 1111 1111 exp 12/30"), ["card"]);
        assert!(kinds("card 4111 1111 1111 1112").is_empty());
        assert_eq!(kinds("IBAN DE89 3704 0044 0532 0130 00"), ["iban"]);
        assert_eq!(kinds("SSN 123-45-6789"), ["ssn"]);
        assert!(kinds("order 666-12-3456").is_empty());
        assert_eq!(kinds("ID 29001011234567"), ["egypt_national_id"]);
        assert_eq!(kinds("call +44 20 7946 0958 today"), ["phone"]);
        assert_eq!(kinds("call (212) 555-0199"), ["phone"]);
        assert_eq!(kinds("server 10.0.12.7 is down"), ["ipv4"]);
        assert!(kinds("version 1.2.3.4 released").is_empty());
        assert_eq!(kinds("host 2001:db8::8a2e:370:7334 up"), ["ipv6"]);
        assert_eq!(kinds("I was born on 12/03/1985 in Cairo"), ["dob"]);
        assert_eq!(kinds("key AKIAIOSFODNN7EXAMPLE"), ["aws_access_key"]);
        assert_eq!(
            kinds("token ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
            ["github_token"]
        );
        assert_eq!(kinds("password=hunter2secret"), ["password"]);
        assert!(kinds("password: ${DB_PASSWORD}").is_empty());
        assert_eq!(
            kinds("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"),
            ["private_key"]
        );
        assert_eq!(
            kinds("Authorization: Bearer abcdefghijklmnopqrstuvwxyz123456"),
            ["bearer_token"]
        );
        assert!(kinds("The meeting is at 10:30 in room 4, bring 3 copies.").is_empty());
    }
}
