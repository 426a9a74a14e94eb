//! The web UI in a real browser: Debian's Chromium driven by playwright-core
//! (`tests-fixtures/browser/ui.mjs`, installed by `scripts/setup --test`), against the real
//! binary with the real local model, a second (stub) model and the content guard. The script
//! checks each flow, runs axe-core on every screen, fails on any Content-Security-Policy
//! violation and writes screenshots to `artifacts/ui/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, ADMIN_PASSWORD};
use reqwest::StatusCode;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run_browser(s: &Server, mode: &str, stub: &str) {
    run_browser_with(s, mode, stub, &[]);
}

fn run_browser_with(s: &Server, mode: &str, stub: &str, env: &[(&str, &str)]) {
    let fx = repo().join("tests-fixtures/browser");
    let st = Command::new(fx.join("setup"))
        .status()
        .expect("browser setup");
    assert!(st.success(), "tests-fixtures/browser/setup failed");
    let artifacts = repo().join("artifacts/ui");
    let out = Command::new("node")
        .arg(fx.join("ui.mjs"))
        .arg(mode)
        .current_dir(&fx)
        .env("PALISADE_URL", &s.base)
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("ARTIFACTS", &artifacts)
        .env("STUB_URL", stub)
        .envs(env.iter().copied())
        .output()
        .expect("node (tests-fixtures/browser)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "browser test `{mode}` failed:\n{stderr}"
    );
    assert!(stdout.contains("CSP violations: 0"), "{stdout}");
}

fn config(upstream: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    write!(
        f,
        r#"
[models.cloud]
provider = "openai"
base_url = "{upstream}/ok/v1"
trust_zone = "internal"
description = "A second model (stub upstream)"

[models.slow]
provider = "openai"
base_url = "{upstream}/slow/v1"
trust_zone = "internal"
description = "A long, slow answer (stub upstream)"

[models.tight]
provider = "openai"
base_url = "{upstream}/slow/v1"
trust_zone = "internal"
description = "A slow model with a budget of one compute-second a day"

[limits.models.tight]
compute = "1/day"
"#
    )
    .unwrap();
    f
}

// Multi-threaded: the stub upstream keeps serving while this thread waits for the browser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_in_chromium() {
    let (upstream, _up) = common::stub::start().await;
    let cfg = config(&upstream);
    let s = Server::start(&[("PALISADE_CONFIG", cfg.path().to_str().unwrap())]);

    // The shell and its modules come from the binary, with the strict policy.
    let r = s.client.get(s.url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    for d in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(d), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/ui/js/main.js">"#));
    let js = s.client.get(s.url("/ui/js/main.js")).send().await.unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let etag = js.headers()["etag"].clone();
    let again = s
        .client
        .get(s.url("/ui/js/main.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    for bad in [
        "/ui/js/nope.js",
        "/ui/js%2f..%2f..%2fCargo.toml",
        "/ui/js//main.js",
    ] {
        let r = s.client.get(s.url(bad)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{bad}");
    }
    // A dot-dot path is normalised by the client to a path outside /ui/: not public.
    let r = s
        .client
        .get(s.url("/ui/../Cargo.toml"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    run_browser(&s, "main", &upstream);
    drop(s);

    // Registration open: the login screen offers it and a new account lands in the chat.
    let s = Server::start(&[("PALISADE_AUTH__REGISTRATION", "open")]);
    run_browser(&s, "register-open", &upstream);
}

/// "Sign in with SSO" in the browser against the real OpenID provider: its redirect address
/// must be known before the server starts, so the server listens on a port picked just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_in_chromium() {
    const CLIENT: &str = "palisade-browser";
    const SECRET: &str = "oidc-browser-secret-83f1";
    let port = common::oidc::free_port();
    let redirect = format!("https://127.0.0.1:{port}/api/auth/oidc/callback");
    let (_idp, issuer) = common::oidc::start(CLIENT, SECRET, &redirect);
    let mut cfg = tempfile::NamedTempFile::new().unwrap();
    write!(
        cfg,
        "[auth.oidc]\nissuer = \"{issuer}\"\nclient_id = \"{CLIENT}\"\n\
         client_secret = \"env::TEST_OIDC_SECRET\"\naudience = \"palisade\"\n\
         redirect_uri = \"{redirect}\"\n\
         [auth.oidc.role_map]\npalisade-admins = \"admin\"\nstaff = \"user\"\n"
    )
    .unwrap();
    let s = Server::start_listening(
        tempfile::tempdir().unwrap(),
        &format!("127.0.0.1:{port}"),
        &[
            ("PALISADE_CONFIG", cfg.path().to_str().unwrap()),
            ("TEST_OIDC_SECRET", SECRET),
        ],
    );
    assert_eq!(s.base, format!("https://127.0.0.1:{port}"));
    run_browser_with(&s, "sso", "", &[("OIDC_ISSUER", &issuer)]);
    // The provider's identity is linked to one local account, made just in time.
    let admin = s.admin_token().await;
    let users: serde_json::Value = s
        .get(&admin, "/api/admin/users?search=alice")
        .await
        .json()
        .await
        .unwrap();
    let alice: Vec<&serde_json::Value> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["username"] == "alice")
        .collect();
    assert_eq!(alice.len(), 1, "{users}");
    assert_eq!(alice[0]["role"], "admin", "{users}");
}
