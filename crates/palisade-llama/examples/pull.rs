//! Installs the default model with the pip path: `cargo run -p palisade-llama --example pull
//! -- [MODEL_DIR]` (default: `default_model_dir()`). Prints progress and the installed path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Instant;

use palisade_llama::provision::{default_model_dir, pull_default};

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(default_model_dir);
    let started = Instant::now();
    let last = std::cell::Cell::new(0u64);
    let progress = |done: u64, total: u64| {
        if total == 0 {
            eprintln!("downloading with pip…");
        } else if done == total || done - last.get() >= 16 << 20 {
            last.set(done);
            eprintln!("extracting {} / {} MiB", done >> 20, total >> 20);
        }
    };
    match pull_default(&dir, &progress) {
        Ok(path) => println!("installed {} in {:.1?}", path.display(), started.elapsed()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
