//! Markdown for the terminal, line by line, so an answer can be shown as it streams: headings
//! bold, `**strong**` bold, `*emphasis*` italic, `` `code` `` and fenced code blocks coloured,
//! list bullets, quotes and links as "text (url)". Model output is untrusted: every control
//! character it sends (including escape sequences that could rewrite the terminal) is removed
//! before styling is added.

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const ITALIC: &str = "\x1b[3m";
const DIM: &str = "\x1b[2m";
const CODE: &str = "\x1b[36m";
const BLOCK: &str = "\x1b[33m";
const HEADING: &str = "\x1b[1;4m";

/// Removes control characters (ESC, BEL, ...) except tab.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .collect()
}

/// The state carried from line to line (inside a fenced block or not).
#[derive(Debug, Default)]
pub struct Renderer {
    in_code: bool,
    /// Plain text (no colours): output is not a terminal.
    plain: bool,
}

impl Renderer {
    pub fn new(plain: bool) -> Self {
        Self {
            in_code: false,
            plain,
        }
    }

    /// One complete line (without its newline), ready to print.
    pub fn line(&mut self, raw: &str) -> String {
        let line = sanitize(raw);
        if self.plain {
            return line;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            self.in_code = !self.in_code;
            let lang = trimmed.trim_start_matches(['`', '~']).trim();
            return if self.in_code && !lang.is_empty() {
                format!("{DIM}── {lang} ──{RESET}")
            } else {
                format!("{DIM}──{RESET}")
            };
        }
        if self.in_code {
            return format!("{BLOCK}  {line}{RESET}");
        }
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            return format!("{HEADING}{}{RESET}", inline(trimmed[hashes..].trim()));
        }
        let indent = &line[..line.len() - trimmed.len()];
        for bullet in ["- ", "* ", "+ "] {
            if let Some(rest) = trimmed.strip_prefix(bullet) {
                return format!("{indent}• {}", inline(rest));
            }
        }
        if let Some(rest) = trimmed.strip_prefix("> ") {
            return format!("{indent}{DIM}│ {}{RESET}", inline(rest));
        }
        if trimmed == "---" || trimmed == "***" {
            return format!("{DIM}{}{RESET}", "─".repeat(40));
        }
        inline(&line)
    }
}

/// Inline styles of one line.
fn inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('`') {
            if let Some(end) = r.find('`') {
                out.push_str(CODE);
                out.push_str(&r[..end]);
                out.push_str(RESET);
                rest = &r[end + 1..];
                continue;
            }
        }
        if let Some(r) = rest.strip_prefix("**") {
            if let Some(end) = r.find("**") {
                if end > 0 {
                    out.push_str(BOLD);
                    out.push_str(&r[..end]);
                    out.push_str(RESET);
                    rest = &r[end + 2..];
                    continue;
                }
            }
        }
        if let Some(r) = rest.strip_prefix('*') {
            if let Some(end) = r.find('*') {
                if end > 0 && !r.starts_with(' ') {
                    out.push_str(ITALIC);
                    out.push_str(&r[..end]);
                    out.push_str(RESET);
                    rest = &r[end + 1..];
                    continue;
                }
            }
        }
        if let Some(r) = rest.strip_prefix('[') {
            if let Some(close) = r.find("](") {
                if let Some(end) = r[close + 2..].find(')') {
                    let text = &r[..close];
                    let url = &r[close + 2..close + 2 + end];
                    out.push_str(text);
                    out.push_str(&format!(" {DIM}({url}){RESET}"));
                    rest = &r[close + 3 + end..];
                    continue;
                }
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_markdown_lines_and_strips_escapes() {
        let mut r = Renderer::new(false);
        assert_eq!(r.line("# Title"), format!("{HEADING}Title{RESET}"));
        assert_eq!(r.line("- one **two**"), format!("• one {BOLD}two{RESET}"));
        assert_eq!(r.line("use `ls`"), format!("use {CODE}ls{RESET}"));
        assert_eq!(
            r.line("see [docs](https://x.test)"),
            format!("see docs {DIM}(https://x.test){RESET}")
        );
        assert_eq!(r.line("```rust"), format!("{DIM}── rust ──{RESET}"));
        assert_eq!(
            r.line("let *a* = 1;"),
            format!("{BLOCK}  let *a* = 1;{RESET}")
        );
        assert_eq!(r.line("```"), format!("{DIM}──{RESET}"));
        // An answer cannot move the cursor or retitle the terminal.
        let evil = r.line("ok\x1b[2J\x1b]0;pwned\x07 done");
        assert!(
            !evil.contains("\x1b[2J") && !evil.contains('\x07'),
            "{evil:?}"
        );
        assert_eq!(Renderer::new(true).line("**x**\x1b[31m"), "**x**[31m");
        // Unbalanced markers are left as they are.
        assert_eq!(r.line("2 * 3 = 6"), "2 * 3 = 6");
    }
}
