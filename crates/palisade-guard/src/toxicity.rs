//! Toxicity: category word lists (abuse, threat, self_harm, sexual) with severities, matched
//! at word boundaries on the folded text. The shipped list is `data/toxicity.tsv`; deployments
//! add their own lists in the same format.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use thiserror::Error;

static SHIPPED: &str = include_str!("../data/toxicity.tsv");

#[derive(Debug, Error)]
pub enum ListError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the word list does not build: {0}")]
    Build(String),
}

#[derive(Debug, Clone)]
struct Entry {
    category: String,
    severity: u8,
    prefix: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToxicHit {
    pub category: String,
    pub severity: u8,
}

/// The compiled lists.
#[derive(Debug, Clone)]
pub struct ToxicityLists {
    ac: Option<AhoCorasick>,
    entries: Vec<Entry>,
}

impl ToxicityLists {
    /// The shipped list plus `extra` list texts (same format).
    pub fn new(extra: &[String]) -> Result<Self, ListError> {
        let mut phrases = Vec::new();
        let mut entries = Vec::new();
        for text in std::iter::once(SHIPPED).chain(extra.iter().map(String::as_str)) {
            parse(text, &mut phrases, &mut entries)?;
        }
        let ac = if phrases.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&phrases)
                    .map_err(|e| ListError::Build(e.to_string()))?,
            )
        };
        Ok(Self { ac, entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Hits in a folded text, the most severe per category.
    pub fn scan(&self, folded: &str) -> Vec<ToxicHit> {
        let Some(ac) = &self.ac else {
            return Vec::new();
        };
        let b = folded.as_bytes();
        let mut out: Vec<ToxicHit> = Vec::new();
        for m in ac.find_iter(folded) {
            let e = &self.entries[m.pattern().as_usize()];
            let before_ok = m.start() == 0 || !is_word_byte(b[m.start() - 1]);
            let after_ok = e.prefix || m.end() == b.len() || !is_word_byte(b[m.end()]);
            if !(before_ok && after_ok) {
                continue;
            }
            match out.iter_mut().find(|h| h.category == e.category) {
                Some(h) => h.severity = h.severity.max(e.severity),
                None => out.push(ToxicHit {
                    category: e.category.clone(),
                    severity: e.severity,
                }),
            }
        }
        out
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

fn parse(text: &str, phrases: &mut Vec<String>, entries: &mut Vec<Entry>) -> Result<(), ListError> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let bad = |message: &str| ListError::Line {
            line: i + 1,
            message: message.into(),
        };
        if cols.len() != 4 {
            return Err(bad(
                "expected 4 tab-separated columns: category, severity, language, phrase",
            ));
        }
        let severity: u8 = cols[1]
            .parse()
            .ok()
            .filter(|s| (1..=3).contains(s))
            .ok_or_else(|| bad("severity must be 1, 2 or 3"))?;
        let category = cols[0].trim();
        if category.is_empty() {
            return Err(bad("empty category"));
        }
        let raw = cols[3].trim();
        let prefix = raw.ends_with('*');
        let phrase = crate::normalize::fold(raw.trim_end_matches('*'));
        if phrase.is_empty() {
            return Err(bad("empty phrase"));
        }
        phrases.push(phrase);
        entries.push(Entry {
            category: category.to_string(),
            severity,
            prefix,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::normalize;

    #[test]
    fn categories_and_boundaries() {
        let lists = ToxicityLists::new(&[]).unwrap_or_else(|_| ToxicityLists {
            ac: None,
            entries: Vec::new(),
        });
        assert!(lists.len() > 50);
        let hits = lists.scan(&normalize("I will k1ll you, you 1d10t").folded);
        assert!(hits
            .iter()
            .any(|h| h.category == "threat" && h.severity == 3));
        assert!(hits.iter().any(|h| h.category == "abuse"));
        // Word boundaries: "Scunthorpe"-style substrings do not count.
        assert!(lists
            .scan(&normalize("the grape harvest and the therapist").folded)
            .is_empty());
        assert!(lists
            .scan(&normalize("pornography laws").folded)
            .iter()
            .any(|h| h.category == "sexual"));
        let extra = ToxicityLists::new(&["abuse\t2\ten\tflibbertigibbet".into()]);
        assert!(extra
            .map(|l| !l.scan("you flibbertigibbet").is_empty())
            .unwrap_or(false));
        assert!(ToxicityLists::new(&["abuse\t9\ten\tx".into()]).is_err());
    }
}
