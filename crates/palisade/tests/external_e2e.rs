//! Single sign-on and directory logins end to end, against real servers started by the test:
//! an OpenID provider (the npm package `oidc-provider`, `tests-fixtures/oidc`) and OpenLDAP's
//! `slapd` (`tests-fixtures/ldap`). `scripts/test` installs both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::oidc::{fixtures, free_port, Guard};
use common::{error_code, Server};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "palisade-web";
const CLIENT_SECRET: &str = "oidc-test-secret-5c1d";
const REDIRECT: &str = "https://127.0.0.1:1/api/auth/oidc/callback";

fn start_oidc() -> (Guard, String) {
    common::oidc::start(CLIENT_ID, CLIENT_SECRET, REDIRECT)
}

/// Starts a throwaway slapd; returns its URL and PID (slapd daemonises, so the caller stops it).
fn start_slapd(dir: &Path) -> (String, String) {
    let fx = fixtures().join("ldap");
    let st = Command::new(fx.join("setup")).status().unwrap();
    assert!(st.success(), "tests-fixtures/ldap/setup failed");
    let port = free_port().to_string();
    let out = Command::new(fx.join("start-slapd"))
        .arg(dir)
        .arg(&port)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = stdout.split_whitespace().last().unwrap().to_string();
    (format!("ldap://127.0.0.1:{port}"), pid)
}

fn stop_pid(pid: &str) {
    let _ = Command::new("kill").arg(pid).status();
}

/// A cookie-keeping client that does not follow redirects (the test walks them).
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn location(r: &reqwest::Response) -> String {
    assert!(
        r.status().is_redirection(),
        "expected a redirect, got {}",
        r.status()
    );
    r.headers()["location"].to_str().unwrap().to_string()
}

fn absolute(issuer: &str, loc: &str) -> String {
    if loc.starts_with('/') {
        format!("{issuer}{loc}")
    } else {
        loc.to_string()
    }
}

/// Logs `user` in at the provider starting from an authorization URL; returns the final
/// redirect to the client (`redirect_uri?code=...&state=...`, or an error).
async fn provider_login(issuer: &str, auth_url: &str, user: &str) -> reqwest::Url {
    let b = browser();
    let r = b.get(auth_url).send().await.unwrap();
    let interaction = absolute(issuer, &location(&r));
    let r = b
        .post(format!("{interaction}/login"))
        .form(&[("login", user)])
        .send()
        .await
        .unwrap();
    let resume = absolute(issuer, &location(&r));
    let r = b.get(resume).send().await.unwrap();
    reqwest::Url::parse(&location(&r)).unwrap()
}

fn query(url: &reqwest::Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.to_string())
}

/// The SSO dance through Palisade: login URL, provider, callback, cookie refresh.
async fn sso(s: &Server, issuer: &str, user: &str) -> Result<String, String> {
    let c = s.no_redirect_client();
    let r = c.get(s.url("/api/auth/oidc/login")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let auth_url = r.headers()["location"].to_str().unwrap().to_string();
    assert!(auth_url.starts_with(issuer));
    for p in [
        "code_challenge=",
        "code_challenge_method=S256",
        "state=",
        "nonce=",
    ] {
        assert!(auth_url.contains(p), "{auth_url}");
    }
    let back = provider_login(issuer, &auth_url, user).await;
    let (Some(code), Some(state)) = (query(&back, "code"), query(&back, "state")) else {
        return Err(format!("provider refused: {back}"));
    };
    let cb = format!("/api/auth/oidc/callback?code={code}&state={state}");
    let r = c.get(s.url(&cb)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    if loc.contains("sso_error") {
        return Err(loc);
    }
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // The same callback again (a replayed state) fails.
    let again = c.get(s.url(&cb)).send().await.unwrap();
    assert!(again.headers()["location"]
        .to_str()
        .unwrap()
        .contains("sso_error"));
    let host = s.base.trim_start_matches("https://").to_string();
    let r = s
        .client
        .post(s.url("/api/auth/refresh"))
        .header("Cookie", cookie)
        .header("X-Palisade-CSRF", "1")
        .header("Origin", format!("https://{host}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    Ok(r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_sso_and_bearer_tokens_against_a_real_provider() {
    let (_idp, issuer) = start_oidc();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("palisade.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth.oidc]\nissuer = \"{issuer}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret = \"env::TEST_OIDC_SECRET\"\naudience = \"palisade\"\n\
             redirect_uri = \"{REDIRECT}\"\n\
             [auth.oidc.role_map]\npalisade-admins = \"admin\"\nstaff = \"user\"\n"
        ),
    )
    .unwrap();
    let server = Server::start(&[
        ("PALISADE_CONFIG", cfg.to_str().unwrap()),
        ("TEST_OIDC_SECRET", CLIENT_SECRET),
    ]);
    let s = &server;
    let p: Value = s
        .client
        .get(s.url("/api/auth/providers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["sso"], true);

    // Alice (group palisade-admins) becomes an admin, just in time.
    let alice = sso(s, &issuer, "alice").await.unwrap();
    let me: Value = s.get(&alice, "/api/auth/me").await.json().await.unwrap();
    assert_eq!(
        (
            me["username"].as_str(),
            me["role"].as_str(),
            me["auth_source"].as_str()
        ),
        (Some("alice"), Some("admin"), Some("oidc"))
    );
    assert_eq!(
        s.get(&alice, "/api/admin/users").await.status(),
        StatusCode::OK
    );
    // A second login is the same account.
    let again = sso(s, &issuer, "alice").await.unwrap();
    let me2: Value = s.get(&again, "/api/auth/me").await.json().await.unwrap();
    assert_eq!(me["id"], me2["id"]);
    // Bob (staff) is a user; Carol (no mapped group, no default role) is refused.
    let bob = sso(s, &issuer, "bob").await.unwrap();
    let me: Value = s.get(&bob, "/api/auth/me").await.json().await.unwrap();
    assert_eq!(me["role"], "user");
    assert!(sso(s, &issuer, "carol").await.is_err());
    // The provider's account cannot log in with a local password.
    let r = s
        .post_public(
            "/api/auth/login",
            json!({"username": "alice", "password": "!external"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A forged state is refused.
    let r = s
        .no_redirect_client()
        .get(s.url("/api/auth/oidc/callback?code=x&state=forged"))
        .send()
        .await
        .unwrap();
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .contains("sso_error"));

    // The provider's own JWT access token (audience `palisade`) works as a bearer on the API.
    let verifier = "v".repeat(50);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut url = reqwest::Url::parse(&format!("{issuer}/auth")).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid profile email api")
        .append_pair("redirect_uri", REDIRECT)
        .append_pair("state", "s1")
        .append_pair("nonce", "n1")
        .append_pair("resource", "urn:palisade")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let back = provider_login(&issuer, url.as_str(), "alice").await;
    let code = query(&back, "code").unwrap();
    let tok: Value = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let at = tok["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        at.split('.').count(),
        3,
        "expected a JWT access token: {tok}"
    );
    let me: Value = s.get(&at, "/api/auth/me").await.json().await.unwrap();
    assert_eq!(
        (me["username"].as_str(), me["role"].as_str()),
        (Some("alice"), Some("admin"))
    );
    // The id_token is for the client, not the API: wrong audience.
    let idt = tok["id_token"].as_str().unwrap();
    assert_eq!(
        error_code(s.get(idt, "/api/auth/me").await, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    // Tampered claims under the provider's signature.
    let parts: Vec<&str> = at.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["groups"] = json!(["palisade-admins", "root"]);
    claims["sub"] = json!("bob");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(
        s.get(&forged, "/api/auth/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // alg=none with the provider's issuer.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"x"}"#),
        parts[1]
    );
    assert_eq!(
        s.get(&none, "/api/auth/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_bind_login_and_group_roles_against_slapd() {
    let ldir = tempfile::tempdir().unwrap();
    let (url, pid) = start_slapd(ldir.path());
    struct Stop(String);
    impl Drop for Stop {
        fn drop(&mut self) {
            stop_pid(&self.0);
        }
    }
    let _stop = Stop(pid);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("palisade.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth.ldap]\nurl = \"{url}\"\n\
             user_dn_template = \"uid={{username}},ou=people,dc=palisade,dc=test\"\n\
             group_base = \"ou=groups,dc=palisade,dc=test\"\n\
             [auth.ldap.role_map]\npalisade-admins = \"admin\"\nanalysts = \"user\"\n"
        ),
    )
    .unwrap();
    let server = Server::start(&[("PALISADE_CONFIG", cfg.to_str().unwrap())]);
    let s = &server;
    let login = |u: &'static str, p: &'static str| async move {
        s.post_public("/api/auth/login", json!({"username": u, "password": p}))
            .await
    };
    let r = login("alice", "alicepw-Long-Enough-1").await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    let me: Value = s
        .get(t["access_token"].as_str().unwrap(), "/api/auth/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            me["role"].as_str(),
            me["auth_source"].as_str(),
            me["email"].as_str()
        ),
        (Some("admin"), Some("ldap"), Some("alice@palisade.test"))
    );
    let id = me["id"].clone();
    // Same account next time.
    let t: Value = login("alice", "alicepw-Long-Enough-1")
        .await
        .json()
        .await
        .unwrap();
    let me: Value = s
        .get(t["access_token"].as_str().unwrap(), "/api/auth/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], id);
    let t: Value = login("bob", "bobpw-Long-Enough-2")
        .await
        .json()
        .await
        .unwrap();
    let me: Value = s
        .get(t["access_token"].as_str().unwrap(), "/api/auth/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "user");
    // Wrong password, empty password (an unauthenticated bind is never attempted), unknown
    // user, and filter/DN injection attempts: all plain 401s.
    for (u, p) in [
        ("alice", "wrong-password-here"),
        ("alice", ""),
        ("nobody", "whatever-password-1"),
        ("*", "alicepw-Long-Enough-1"),
        ("alice,ou=people", "alicepw-Long-Enough-1"),
        ("alice)(uid=*", "alicepw-Long-Enough-1"),
    ] {
        let r = login(u, p).await;
        assert!(
            matches!(
                r.status(),
                StatusCode::UNAUTHORIZED | StatusCode::UNPROCESSABLE_ENTITY
            ),
            "{u}/{p}: {}",
            r.status()
        );
    }
    // In no mapped group and no default role: refused.
    let r = login("carol", "carolpw-Long-Enough-3").await;
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "no_role");
    // Local accounts keep working next to the directory.
    assert_eq!(
        s.post_public(
            "/api/auth/login",
            json!({"username": "admin", "password": common::ADMIN_PASSWORD})
        )
        .await
        .status(),
        StatusCode::OK
    );
}
