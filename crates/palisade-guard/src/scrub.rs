//! Log hygiene: no log line, error message or audit detail may carry a secret, token, password
//! or personal data. [`scrub`] replaces every value the detectors find by `[REDACTED:KIND]`;
//! [`ScrubbingMakeWriter`] applies it to every line a `tracing` subscriber writes.
//!
//! IP addresses are kept: security logs need the source address of a request.

use std::borrow::Cow;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

use crate::pii::{find_values, ValueCategory};

/// `text` with secrets and personal data replaced.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let hits: Vec<_> = find_values(text)
        .into_iter()
        .filter(|h| h.category == ValueCategory::Secret || !matches!(h.kind, "ipv4" | "ipv6"))
        .collect();
    if hits.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for h in hits {
        out.push_str(&text[at..h.start]);
        out.push_str("[REDACTED:");
        out.push_str(&h.label());
        out.push(']');
        at = h.end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// Wraps a `MakeWriter` so every formatted event is scrubbed before it is written.
#[derive(Debug, Clone)]
pub struct ScrubbingMakeWriter<M> {
    inner: M,
}

impl<M> ScrubbingMakeWriter<M> {
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

/// One event's writer: the formatter writes the whole line in one call; it is scrubbed and
/// passed on.
pub struct ScrubbingWriter<W> {
    inner: W,
}

impl<W: Write> Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(s) => self.inner.write_all(scrub(s).as_bytes())?,
            Err(_) => self
                .inner
                .write_all(&String::from_utf8_lossy(buf).into_owned().into_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for ScrubbingMakeWriter<M> {
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter {
            inner: self.inner.make_writer(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_values_but_keeps_addresses() {
        let line = r#"{"msg":"login","password":"hunter2-secret","peer":"10.1.2.3","token":"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2lnbmF0dXJl","mail":"a.b@example.org"}"#;
        let s = scrub(line);
        assert!(!s.contains("hunter2"), "{s}");
        assert!(!s.contains("eyJhbGci"), "{s}");
        assert!(!s.contains("a.b@example.org"), "{s}");
        assert!(s.contains("10.1.2.3"));
        assert_eq!(scrub("plain line"), "plain line");
    }
}
