//! The OpenID provider of `tests-fixtures/oidc` (the npm package `oidc-provider`), started for
//! one test and killed when its guard drops.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests-fixtures")
}

/// A child process killed when the test ends.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the provider with one confidential client; returns it and its issuer URL.
pub fn start(client_id: &str, secret: &str, redirect: &str) -> (Guard, String) {
    let dir = fixtures().join("oidc");
    let st = Command::new(dir.join("setup")).status().unwrap();
    assert!(st.success(), "tests-fixtures/oidc/setup failed");
    let mut child = Command::new("node")
        .arg(dir.join("server.mjs"))
        .env("OIDC_PORT", "0")
        .env("OIDC_CLIENT_ID", client_id)
        .env("OIDC_CLIENT_SECRET", secret)
        .env("OIDC_REDIRECT_URI", redirect)
        .env("OIDC_AUDIENCE", "palisade")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node (tests-fixtures/oidc)");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let issuer = loop {
        let line = lines.next().expect("OIDC provider exited").unwrap();
        if let Some(url) = line.strip_prefix("OIDC_READY ") {
            break url.trim().to_string();
        }
    };
    (Guard(child), issuer)
}

/// A port that was free a moment ago (for addresses that must be known before a start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
