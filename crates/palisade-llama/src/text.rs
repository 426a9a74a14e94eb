//! Turning token bytes into user-visible text: UTF-8 reassembly across token boundaries and
//! stop-string detection with hold-back of possible stop-string prefixes.
//!
//! Both types are pure (no llama.cpp) so they are unit-tested here exhaustively.

/// Reassembles UTF-8 text from byte pieces that may split a character in the middle.
///
/// Only complete characters are returned; an incomplete trailing sequence (at most 3 bytes) is
/// kept until the next piece. Invalid bytes become U+FFFD instead of failing.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and appends every complete character to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        if self.pending.is_empty() {
            // Fast path: most tokens are whole ASCII or whole characters.
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    out.push_str(s);
                    return;
                }
                Err(_) => self.pending.extend_from_slice(bytes),
            }
        } else {
            self.pending.extend_from_slice(bytes);
        }
        let consumed = decode_prefix(&self.pending, out);
        self.pending.drain(..consumed);
    }

    /// Flushes whatever is left at the end of generation. An incomplete trailing character (the
    /// answer was cut in the middle of it) is dropped, never shown as garbage.
    pub fn finish(&mut self, out: &mut String) {
        decode_prefix(&self.pending, out);
        self.pending.clear();
    }

    /// Number of bytes waiting for the rest of their character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Decodes as much of `bytes` as possible into `out`, returning how many bytes were consumed
/// (an incomplete trailing sequence is not consumed).
fn decode_prefix(bytes: &[u8], out: &mut String) -> usize {
    let mut rest = bytes;
    let mut consumed = 0;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return consumed + rest.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                if let Ok(s) = std::str::from_utf8(&rest[..valid]) {
                    out.push_str(s);
                }
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        consumed += valid + bad;
                        rest = &rest[valid + bad..];
                    }
                    None => return consumed + valid,
                }
            }
        }
    }
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopState {
    /// No stop string yet; keep generating.
    Running,
    /// A stop string matched: generation ends, nothing after it is emitted.
    Stopped,
}

/// Detects stop strings in streamed text.
///
/// Text that could still turn out to be the beginning of a stop string is held back until it is
/// resolved, so the stop string itself never reaches the client.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        let mut stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        stops.sort();
        stops.dedup();
        Self {
            stops,
            held: String::new(),
        }
    }

    /// Adds `text`; appends what is safe to show to `out`.
    pub fn push(&mut self, text: &str, out: &mut String) -> StopState {
        if self.stops.is_empty() {
            out.push_str(text);
            return StopState::Running;
        }
        self.held.push_str(text);

        // Earliest complete match of any stop string.
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(pos) = earliest {
            out.push_str(&self.held[..pos]);
            self.held.clear();
            return StopState::Stopped;
        }

        // Keep the longest suffix that is a proper prefix of some stop string.
        let keep_from = self.hold_back_start();
        out.push_str(&self.held[..keep_from]);
        self.held.drain(..keep_from);
        StopState::Running
    }

    /// Releases the held-back text once generation ends without a stop string.
    pub fn finish(&mut self, out: &mut String) {
        out.push_str(&self.held);
        self.held.clear();
    }

    /// Bytes currently held back.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Byte index where the held-back suffix starts (`held.len()` when nothing is held).
    fn hold_back_start(&self) -> usize {
        let held = self.held.as_str();
        for (start, _) in held.char_indices() {
            let suffix = &held[start..];
            if self
                .stops
                .iter()
                .any(|stop| stop.len() > suffix.len() && stop.starts_with(suffix))
            {
                return start;
            }
        }
        held.len()
    }
}

/// Streams token bytes through the UTF-8 decoder and the stop matcher.
#[derive(Debug, Default)]
pub struct TextPipeline {
    decoder: Utf8Decoder,
    stops: StopMatcher,
    scratch: String,
}

impl TextPipeline {
    pub fn new(stops: &[String]) -> Self {
        Self {
            decoder: Utf8Decoder::new(),
            stops: StopMatcher::new(stops),
            scratch: String::new(),
        }
    }

    /// Adds the bytes of one token; appends the text now safe to emit to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) -> StopState {
        self.scratch.clear();
        self.decoder.push(bytes, &mut self.scratch);
        if self.scratch.is_empty() {
            return StopState::Running;
        }
        self.stops.push(&self.scratch, out)
    }

    /// Flushes everything still buffered when generation ends for another reason.
    pub fn finish(&mut self, out: &mut String) -> StopState {
        self.scratch.clear();
        self.decoder.finish(&mut self.scratch);
        let state = if self.scratch.is_empty() {
            StopState::Running
        } else {
            self.stops.push(&self.scratch, out)
        };
        if state == StopState::Running {
            self.stops.finish(out);
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_pieces(pieces: &[&[u8]]) -> Vec<String> {
        let mut d = Utf8Decoder::new();
        let mut outs = Vec::new();
        for p in pieces {
            let mut out = String::new();
            d.push(p, &mut out);
            outs.push(out);
        }
        let mut out = String::new();
        d.finish(&mut out);
        outs.push(out);
        outs
    }

    #[test]
    fn ascii_passes_through() {
        assert_eq!(
            decode_pieces(&[b"Hello", b" world"]),
            ["Hello", " world", ""]
        );
    }

    #[test]
    fn split_two_byte_char() {
        let e = "é".as_bytes();
        assert_eq!(
            decode_pieces(&[b"caf", &e[..1], &e[1..]]),
            ["caf", "", "é", ""]
        );
    }

    #[test]
    fn split_four_byte_char_in_every_way() {
        let s = "a😀b";
        let bytes = s.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let outs = decode_pieces(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(outs.concat(), s, "split at {i},{j}");
                for o in &outs {
                    assert!(!o.contains(char::REPLACEMENT_CHARACTER));
                }
            }
        }
    }

    #[test]
    fn byte_by_byte_cjk() {
        let s = "日本語のテキスト";
        let pieces: Vec<&[u8]> = s.as_bytes().chunks(1).collect();
        let outs = decode_pieces(&pieces);
        assert_eq!(outs.concat(), s);
        // Every emitted piece is whole characters: never a partial one.
        assert!(outs.iter().all(|o| o.chars().count() <= 1));
    }

    #[test]
    fn pending_is_bounded() {
        let mut d = Utf8Decoder::new();
        let mut out = String::new();
        d.push(&"😀".as_bytes()[..3], &mut out);
        assert_eq!(d.pending_len(), 3);
        assert!(out.is_empty());
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let outs = decode_pieces(&[b"a\xffb"]);
        assert_eq!(outs.concat(), "a\u{FFFD}b");
        // A character cut by the end of generation is dropped.
        let outs = decode_pieces(&[b"x", b"\xe6\x97"]);
        assert_eq!(outs.concat(), "x");
    }

    fn run_stop(stops: &[&str], pieces: &[&str]) -> (Vec<String>, StopState) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut outs = Vec::new();
        for p in pieces {
            let mut out = String::new();
            let state = m.push(p, &mut out);
            outs.push(out);
            if state == StopState::Stopped {
                return (outs, state);
            }
        }
        let mut out = String::new();
        m.finish(&mut out);
        outs.push(out);
        (outs, StopState::Running)
    }

    #[test]
    fn stop_string_in_one_piece() {
        let (outs, state) = run_stop(&["END"], &["hello END world"]);
        assert_eq!(state, StopState::Stopped);
        assert_eq!(outs.concat(), "hello ");
    }

    #[test]
    fn stop_string_across_pieces_is_never_emitted() {
        let (outs, state) = run_stop(&["</s>"], &["abc<", "/", "s", ">tail"]);
        assert_eq!(state, StopState::Stopped);
        assert_eq!(outs, ["abc", "", "", ""]);
    }

    #[test]
    fn prefix_is_held_then_released() {
        let (outs, state) = run_stop(&["STOP"], &["a ST", "ART b"]);
        assert_eq!(state, StopState::Running);
        assert_eq!(outs[0], "a ");
        assert_eq!(outs.concat(), "a START b");
    }

    #[test]
    fn held_prefix_flushed_at_finish() {
        let (outs, state) = run_stop(&["STOP"], &["the end ST"]);
        assert_eq!(state, StopState::Running);
        assert_eq!(outs, ["the end ", "ST"]);
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (outs, state) = run_stop(&["world", "lo w"], &["hello world"]);
        assert_eq!(state, StopState::Stopped);
        assert_eq!(outs.concat(), "hel");
    }

    #[test]
    fn overlapping_prefix_candidates() {
        // "aab" must match even though "aa" first looked like the start of "aab" at index 0.
        let (outs, state) = run_stop(&["aab"], &["xa", "a", "a", "b"]);
        assert_eq!(state, StopState::Stopped);
        assert_eq!(outs.concat(), "xa");
    }

    #[test]
    fn multibyte_stop_string() {
        let (outs, state) = run_stop(&["«fin»"], &["ok «", "fi", "n» more"]);
        assert_eq!(state, StopState::Stopped);
        assert_eq!(outs.concat(), "ok ");
    }

    #[test]
    fn empty_stops_ignored() {
        let (outs, state) = run_stop(&[""], &["abc"]);
        assert_eq!(state, StopState::Running);
        assert_eq!(outs.concat(), "abc");
    }

    #[test]
    fn pipeline_combines_utf8_and_stop() {
        let mut p = TextPipeline::new(&["é!".to_string()]);
        let e = "é".as_bytes();
        let mut out = String::new();
        assert_eq!(p.push(b"caf", &mut out), StopState::Running);
        assert_eq!(p.push(&e[..1], &mut out), StopState::Running);
        assert_eq!(out, "caf");
        assert_eq!(p.push(&e[1..], &mut out), StopState::Running);
        // "é" is held: it may be the start of "é!".
        assert_eq!(out, "caf");
        assert_eq!(p.push(b"!", &mut out), StopState::Stopped);
        assert_eq!(out, "caf");
    }

    #[test]
    fn pipeline_finish_releases_everything() {
        let mut p = TextPipeline::new(&["xyz".to_string()]);
        let mut out = String::new();
        p.push(b"abc x", &mut out);
        p.push(&"😀".as_bytes()[..2], &mut out);
        assert_eq!(out, "abc ");
        assert_eq!(p.finish(&mut out), StopState::Running);
        assert_eq!(out, "abc x");
    }
}
