//! The content guard on arbitrary text: normalisation and every input detector (`scan`), the
//! log scrubber, markup neutralisation and the streaming output guard fed in chunks of a size
//! the input chooses. Besides not panicking: value spans lie on character boundaries of the
//! text they refer to, neutralised markup is safe, and an answer that is not blocked comes out
//! whole (the guard may rewrite it, never drop the end of it silently).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_core::guard::{OutputGuard, OutputStep, Pseudonyms};
use palisade_guard::output::{neutralise_markup, unsafe_markup, StreamGuard};
use palisade_guard::PalisadeGuard;
use palisade_types::guard::{GuardSettings, ZonePolicy};

static GUARD: OnceLock<PalisadeGuard> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&knob, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let guard = GUARD.get_or_init(|| {
        PalisadeGuard::new(GuardSettings::default(), &[]).expect("the shipped lists load")
    });

    let scan = guard.scan(text);
    for v in &scan.values {
        assert!(v.start <= v.end && v.end <= scan.clean.len(), "{v:?}");
        assert!(scan.clean.is_char_boundary(v.start) && scan.clean.is_char_boundary(v.end));
    }
    let _ = palisade_guard::scrub::scrub(text);

    let (neutral, _) = neutralise_markup(text, &[]);
    assert!(!unsafe_markup(&neutral, &[]), "still unsafe after neutralising: {neutral:?}");

    // The output guard, fed in chunks of 1..=16 characters.
    let step = usize::from(knob % 16) + 1;
    let mut out = StreamGuard::new(
        ZonePolicy::default(),
        64,
        Pseudonyms::default(),
        "You are a helpful assistant.",
        "CANARY-9f2c41",
        Vec::new(),
    );
    let chars: Vec<char> = text.chars().collect();
    let mut emitted = String::new();
    let mut blocked = false;
    for piece in chars.chunks(step) {
        let chunk: String = piece.iter().collect();
        match out.push(&chunk) {
            OutputStep::Emit(s) => emitted.push_str(&s),
            OutputStep::Block(_) => {
                blocked = true;
                break;
            }
        }
    }
    if !blocked {
        match out.finish() {
            OutputStep::Emit(s) => emitted.push_str(&s),
            OutputStep::Block(_) => blocked = true,
        }
    }
    if !blocked && !text.trim().is_empty() {
        assert!(!emitted.is_empty(), "a non-empty answer vanished: {text:?}");
    }
});
