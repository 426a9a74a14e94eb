//! Identity attacks against the real binary: forged tokens, revocation, the browser cookie flow
//! and CSRF, key rotation, throttling and per-IP limits, TOTP, forced password changes and
//! user enumeration by timing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{error_code, Server, ADMIN_PASSWORD, USER_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_rejected_over_http() {
    let s = Server::start(&[]);
    let admin = s.admin_token().await;
    let parts: Vec<&str> = admin.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let kid = header["kid"].as_str().unwrap();
    let mut claims = claims_of(&admin);
    assert_eq!(claims["iss"], "palisade");
    assert_eq!(claims["aud"], "palisade");
    let now = claims["iat"].as_i64().unwrap();

    let jwks: Value = s
        .client
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let x = jwks["keys"][0]["x"].as_str().unwrap().to_string();

    let mut forged = Vec::new();
    // alg=none, stripped signature, tampered payload.
    forged.push(format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"at+jwt","kid":kid})),
        parts[1]
    ));
    forged.push(format!("{}.{}.", parts[0], parts[1]));
    forged.push(format!("{}.{}", parts[0], parts[1]));
    claims["role"] = json!("admin");
    claims["sub"] = json!("0190a8f0-0000-7000-8000-000000000001");
    forged.push(format!("{}.{}.{}", parts[0], b64(&claims), parts[2]));
    // HS256 signed with the published public key (key confusion).
    let hs = |secret: &[u8], c: &Value| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.to_string());
        h.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&h, c, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
    };
    let good_claims = claims_of(&admin);
    forged.push(hs(x.as_bytes(), &good_claims));
    forged.push(hs(&URL_SAFE_NO_PAD.decode(&x).unwrap(), &good_claims));
    // A self-made Ed25519 key announced in the header (jwk/jku/x5u are never trusted).
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(kid.to_string());
    h.typ = Some("at+jwt".into());
    h.jku = Some("https://evil.example/jwks.json".into());
    h.x5u = Some("https://evil.example/cert.pem".into());
    let own = jsonwebtoken::encode(
        &h,
        &good_claims,
        &jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()),
    )
    .unwrap();
    forged.push(own);
    for t in &forged {
        let r = s.get(t, "/api/auth/me").await;
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_token",
            "{t}"
        );
    }
    // Right signature, wrong claims: the server never signs such tokens, so sign with a copy of
    // its key from the data dir (an insider with the key file still cannot pick the audience).
    let key_dir = s.data_dir().join("keys");
    let key_file = std::fs::read_dir(&key_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let der = std::fs::read(key_file).unwrap();
    let sign = |typ: &str, c: &Value| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(kid.to_string());
        h.typ = Some(typ.into());
        jsonwebtoken::encode(&h, c, &jsonwebtoken::EncodingKey::from_ed_der(&der)).unwrap()
    };
    // The control: a correctly made token works, so the failures below are the claims.
    assert_eq!(
        s.get(&sign("at+jwt", &good_claims), "/api/auth/me")
            .await
            .status(),
        StatusCode::OK
    );
    let variants = [
        ("at+jwt", json!({"aud": "other"})),
        ("at+jwt", json!({"iss": "https://evil.example"})),
        ("JWT", json!({})),
        ("at+jwt", json!({"exp": now - 600})),
        ("at+jwt", json!({"nbf": now + 600, "exp": now + 1200})),
        ("llm+jwt", json!({})),
    ];
    for (typ, patch) in variants {
        let mut c = good_claims.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        let r = s.get(&sign(typ, &c), "/api/auth/me").await;
        assert_eq!(
            error_code(r, StatusCode::UNAUTHORIZED).await,
            "invalid_token",
            "{typ} {c}"
        );
    }
    let mut unknown_kid = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    unknown_kid.kid = Some("0011223344556677".into());
    unknown_kid.typ = Some("at+jwt".into());
    let t = jsonwebtoken::encode(
        &unknown_kid,
        &good_claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&der),
    )
    .unwrap();
    assert_eq!(
        error_code(s.get(&t, "/api/auth/me").await, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_revocation_ends_tokens_at_once() {
    let server = Server::start(&[]);
    let s = &server;
    let admin = s.admin_token().await;
    let (uid, alice, _) = s.new_user(&admin, "alice", "user", None).await;
    let login = || async {
        let t = s.login("alice", USER_PASSWORD).await;
        (
            t["access_token"].as_str().unwrap().to_string(),
            t["refresh_token"].as_str().unwrap().to_string(),
        )
    };
    let me = |t: String| async move { s.get(&t, "/api/auth/me").await.status() };

    // Two devices; sessions are listed, the current one marked.
    let (a1, r1) = login().await;
    let (a2, _r2) = login().await;
    let list: Value = s.get(&a1, "/api/auth/sessions").await.json().await.unwrap();
    let list = list.as_array().unwrap();
    assert!(list.len() >= 3);
    assert_eq!(list.iter().filter(|x| x["current"] == true).count(), 1);
    // Revoking device 2's session from device 1 ends its access token at once.
    let sid2 = claims_of(&a2)["sid"].as_str().unwrap().to_string();
    assert_eq!(
        s.delete(&a1, &format!("/api/auth/sessions/{sid2}"))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(me(a2.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(a1.clone()).await, StatusCode::OK);

    // Refresh-token reuse revokes the family, including the live access token of the thief.
    let r = s
        .post_public("/api/auth/refresh", json!({"refresh_token": r1}))
        .await;
    let t: Value = r.json().await.unwrap();
    let a1b = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(me(a1b.clone()).await, StatusCode::OK);
    let r = s
        .post_public("/api/auth/refresh", json!({"refresh_token": r1}))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_token"
    );
    assert_eq!(me(a1b).await, StatusCode::UNAUTHORIZED);

    // Log out everywhere.
    let (a3, r3) = login().await;
    let (a4, _) = login().await;
    assert_eq!(
        s.post(&a3, "/api/auth/logout-all", json!({}))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(me(a3).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(a4).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(alice.clone()).await, StatusCode::UNAUTHORIZED);
    let r = s
        .post_public("/api/auth/refresh", json!({"refresh_token": r3}))
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Password change: other sessions end, this device gets fresh tokens.
    let (a5, _) = login().await;
    let (a6, _) = login().await;
    let r = s
        .post(
            &a5,
            "/api/auth/password",
            json!({"current_password": USER_PASSWORD, "new_password": "Tundra-Pickle-Orbit-6612"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let fresh: Value = r.json().await.unwrap();
    assert_eq!(me(a5).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(a6).await, StatusCode::UNAUTHORIZED);
    let a7 = fresh["access_token"].as_str().unwrap().to_string();
    assert_eq!(me(a7.clone()).await, StatusCode::OK);
    // Wrong current password, weak new password.
    let r = s
        .post(&a7, "/api/auth/password", json!({"current_password": "nope-nope-nope-nope", "new_password": "Tundra-Pickle-Orbit-6613"}))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
    let r = s
        .post(&a7, "/api/auth/password", json!({"current_password": "Tundra-Pickle-Orbit-6612", "new_password": "passwordpassword"}))
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await,
        "weak_password"
    );

    // Role change by an admin ends the sessions; so does disabling, for API keys too.
    let key: Value = s
        .post(&a7, "/api/auth/api-keys", json!({"name": "ci"}))
        .await
        .json()
        .await
        .unwrap();
    let api_key = key["api_key"].as_str().unwrap().to_string();
    assert!(api_key.starts_with("pk_"));
    assert_eq!(me(api_key.clone()).await, StatusCode::OK);
    let r = s
        .patch(
            &admin,
            &format!("/api/admin/users/{uid}"),
            json!({"role": "auditor"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(me(a7).await, StatusCode::UNAUTHORIZED);
    let t = s.login("alice", "Tundra-Pickle-Orbit-6612").await;
    let a8 = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims_of(&a8)["role"], "auditor");
    let r = s
        .patch(
            &admin,
            &format!("/api/admin/users/{uid}"),
            json!({"is_active": false}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(me(a8).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(api_key.clone()).await, StatusCode::UNAUTHORIZED);
    let r = s
        .post_public(
            "/api/auth/login",
            json!({"username": "alice", "password": "Tundra-Pickle-Orbit-6612"}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::UNAUTHORIZED).await,
        "invalid_credentials"
    );
    // Re-enabled: the key works again (it was never revoked), old access tokens do not.
    s.patch(
        &admin,
        &format!("/api/admin/users/{uid}"),
        json!({"is_active": true}),
    )
    .await;
    assert_eq!(me(api_key).await, StatusCode::OK);

    // The event stream recorded it all, without secrets.
    let events: Value = s
        .get(&admin, "/api/admin/security-events?limit=200")
        .await
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "login_success",
        "refresh_reuse",
        "logout_all",
        "password_change",
        "user_updated",
        "session_revoked",
        "api_key_created",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let text = events.to_string();
    assert!(!text.contains(USER_PASSWORD) && !text.contains("Tundra-Pickle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_cookie_flow_and_csrf() {
    let s = Server::start(&[]);
    let r = s
        .client
        .post(s.url("/api/auth/login"))
        .header("X-Palisade-CSRF", "1")
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for part in [
        "__Host-palisade_refresh=",
        "Path=/",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Domain"));
    let body: Value = r.json().await.unwrap();
    assert!(
        body.get("refresh_token").is_none(),
        "the refresh token must not reach JavaScript"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let host = s.base.trim_start_matches("https://").to_string();
    let refresh = |csrf: bool, origin: Option<&str>, c: String| {
        let mut rb = s
            .client
            .post(s.url("/api/auth/refresh"))
            .header("Cookie", c);
        if csrf {
            rb = rb.header("X-Palisade-CSRF", "1");
        }
        if let Some(o) = origin {
            rb = rb.header("Origin", o);
        }
        rb.send()
    };
    // Without the custom header (a cross-site form post), or from another origin: refused.
    let r = refresh(false, None, pair.clone()).await.unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "csrf_failed");
    let r = refresh(true, Some("https://evil.example"), pair.clone())
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "csrf_failed");
    // Same origin with the header: rotated, in a new cookie.
    let own = format!("https://{host}");
    let r = refresh(true, Some(&own), pair.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let next = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(next, pair);
    let t: Value = r.json().await.unwrap();
    assert!(t.get("refresh_token").is_none());
    // The old cookie is now a reused token: refused, and the cookie is cleared.
    let r = refresh(true, Some(&own), pair.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    // Logout by cookie needs the header too.
    let r = s
        .client
        .post(s.url("/api/auth/logout"))
        .header("Cookie", next.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "csrf_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_keeps_live_tokens() {
    let s = Server::start(&[]);
    let old = s.admin_token().await;
    let old_kid = jsonwebtoken::decode_header(&old).unwrap().kid.unwrap();
    let out = common::command_in(s.data_dir())
        .args(["keys", "rotate", "--data-dir"])
        .arg(s.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server notices within seconds; the old token keeps working meanwhile.
    let deadline = Instant::now() + Duration::from_secs(20);
    let new = loop {
        assert_eq!(s.get(&old, "/api/auth/me").await.status(), StatusCode::OK);
        let t = s.admin_token().await;
        if jsonwebtoken::decode_header(&t).unwrap().kid.unwrap() != old_kid {
            break t;
        }
        assert!(Instant::now() < deadline, "the new key was not picked up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(s.get(&new, "/api/auth/me").await.status(), StatusCode::OK);
    assert_eq!(s.get(&old, "/api/auth/me").await.status(), StatusCode::OK);
    let jwks: Value = s
        .client
        .get(s.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_is_throttled_without_revealing_accounts() {
    let server = Server::start(&[]);
    let s = &server;
    let attempt = |user: &'static str| async move {
        s.post_public(
            "/api/auth/login",
            json!({"username": user, "password": "wrong-wrong-wrong-1"}),
        )
        .await
    };
    // Known and unknown names answer the same: 401 four times, then 429 with Retry-After.
    for user in ["admin", "nobody-here"] {
        for _ in 0..5 {
            let r = attempt(user).await;
            assert_eq!(
                error_code(r, StatusCode::UNAUTHORIZED).await,
                "invalid_credentials"
            );
        }
        let r = attempt(user).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{user}");
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&wait), "{wait}");
        assert_eq!(
            error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
            "login_throttled"
        );
    }
    // Even the right password waits out the back-off, then works.
    let r = s
        .post_public(
            "/api/auth/login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = s
        .post_public(
            "/api/auth/login",
            json!({"username": "admin", "password": ADMIN_PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limit_on_auth_routes() {
    // Spec 003: 5 attempts per minute per IP on the auth routes.
    let s = Server::start(&[("PALISADE_AUTH__IP_LIMIT_PER_MINUTE", "5")]);
    for i in 0..5 {
        let r = s
            .post_public(
                "/api/auth/login",
                json!({"username": format!("u{i}xx"), "password": "x"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = s
        .post_public("/api/auth/refresh", json!({"refresh_token": "x"}))
        .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait));
    assert_eq!(
        error_code(r, StatusCode::TOO_MANY_REQUESTS).await,
        "rate_limited"
    );
    // Other routes are not affected.
    assert_eq!(
        s.client
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_does_not_reveal_accounts_by_timing() {
    let server = Server::start(&[]);
    let s = &server;
    let admin = s.admin_token().await;
    // Distinct names, one attempt each, so that no throttling starts.
    let mut known = Vec::new();
    for i in 0..16 {
        let name = format!("known{i:02}");
        let r = s
            .post(
                &admin,
                "/api/admin/users",
                json!({"username": name, "password": "Lantern-Quarry-Mosaic-4417", "role": "user"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        known.push(name);
    }
    let time = |name: String| async move {
        let started = Instant::now();
        let r = s
            .post_public(
                "/api/auth/login",
                json!({"username": name, "password": "Wrong-Guess-Tango-1189"}),
            )
            .await;
        let took = started.elapsed();
        let status = r.status();
        let body = r.text().await.unwrap();
        (took, status, body)
    };
    let (mut tk, mut tu) = (Vec::new(), Vec::new());
    let mut bodies = std::collections::HashSet::new();
    for (i, name) in known.iter().enumerate() {
        // Interleaved, alternating which goes first, so drift and ordering hit both alike.
        let ghost = format!("ghost{i:02}");
        let order = if i % 2 == 0 {
            [(name.clone(), true), (ghost, false)]
        } else {
            [(ghost, false), (name.clone(), true)]
        };
        for (who, is_known) in order {
            let (d, st, b) = time(who).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED);
            bodies.insert(b);
            if is_known {
                tk.push(d);
            } else {
                tu.push(d);
            }
        }
    }
    assert_eq!(bodies.len(), 1, "answers differ: {bodies:?}");
    tk.sort();
    tu.sort();
    let (mk, mu) = (
        tk[tk.len() / 2].as_secs_f64(),
        tu[tu.len() / 2].as_secs_f64(),
    );
    let ratio = mk.max(mu) / mk.min(mu);
    println!(
        "median login failure: known {:.1} ms, unknown {:.1} ms, ratio {ratio:.2}",
        mk * 1e3,
        mu * 1e3
    );
    assert!(ratio < 1.2, "known {mk} s vs unknown {mu} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_enrolment_login_replay_and_recovery() {
    let s = Server::start(&[("PALISADE_AUTH__REQUIRE_2FA", "[\"auditor\"]")]);
    let admin = s.admin_token().await;
    let (_, tok, _) = s.new_user(&admin, "carol", "auditor", None).await;
    // The role requires 2FA: until enrolled, only enrolment is allowed.
    let r = s.get(&tok, "/api/admin/security-events").await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "mfa_enrolment_required"
    );
    // Enrolment needs the password again.
    let r = s
        .post(
            &tok,
            "/api/auth/2fa/setup",
            json!({"current_password": "wrong-wrong-wrong-1"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let setup: Value = s
        .post(
            &tok,
            "/api/auth/2fa/setup",
            json!({"current_password": USER_PASSWORD}),
        )
        .await
        .json()
        .await
        .unwrap();
    let uri = setup["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Palisade:carol?"), "{uri}");
    let secret = setup["secret"].as_str().unwrap().to_string();
    let totp = totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        totp_rs::Secret::Encoded(secret).to_bytes().unwrap(),
        Some("Palisade".into()),
        "carol".into(),
    )
    .unwrap();
    let r = s
        .post(&tok, "/api/auth/2fa/enable", json!({"code": "000000"}))
        .await;
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "mfa_failed");
    let code = totp.generate_current().unwrap();
    let enabled: Value = s
        .post(&tok, "/api/auth/2fa/enable", json!({"code": code}))
        .await
        .json()
        .await
        .unwrap();
    let recovery: Vec<String> = enabled["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(recovery.len(), 10);

    // Password login now asks for the second factor.
    async fn step1(s: &Server) -> String {
        let v: Value = s
            .post_public(
                "/api/auth/login",
                json!({"username": "carol", "password": USER_PASSWORD}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["mfa_required"], true, "{v}");
        assert!(v.get("access_token").is_none());
        v["mfa_token"].as_str().unwrap().to_string()
    }
    let mfa = step1(&s).await;
    // The challenge is not an access token.
    assert_eq!(
        s.get(&mfa, "/api/auth/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Wrong code.
    let r = s
        .post_public(
            "/api/auth/login/2fa",
            json!({"mfa_token": mfa, "code": "123456"}),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "mfa_failed");
    // The code used for enrolment is spent: replaying it fails. Wait for a fresh step.
    let r = s
        .post_public(
            "/api/auth/login/2fa",
            json!({"mfa_token": mfa, "code": code}),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "mfa_failed");
    let fresh = loop {
        let c = totp.generate_current().unwrap();
        if c != code {
            break c;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let r = s
        .post_public(
            "/api/auth/login/2fa",
            json!({"mfa_token": mfa, "code": fresh}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    let access = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        s.get(&access, "/api/admin/security-events").await.status(),
        StatusCode::OK
    );
    // Replay of the accepted code in a new login.
    let mfa2 = step1(&s).await;
    let r = s
        .post_public(
            "/api/auth/login/2fa",
            json!({"mfa_token": mfa2, "code": fresh}),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "mfa_failed");
    // A recovery code works once.
    let r = s
        .post_public(
            "/api/auth/login/2fa",
            json!({"mfa_token": mfa2, "code": recovery[0]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mfa3 = step1(&s).await;
    let r = s
        .post_public(
            "/api/auth/login/2fa",
            json!({"mfa_token": mfa3, "code": recovery[0]}),
        )
        .await;
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "mfa_failed");
    // The role requires 2FA, so it cannot be turned off.
    let r = s
        .post(
            &access,
            "/api/auth/2fa/disable",
            json!({"current_password": USER_PASSWORD, "code": recovery[1]}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "mfa_required_by_policy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_password_change_and_admin_reset() {
    let s = Server::start(&[]);
    let admin = s.admin_token().await;
    // No password given: one is generated and shown once.
    let r = s
        .post(
            &admin,
            "/api/admin/users",
            json!({"username": "dave", "role": "user"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let tmp = created["temporary_password"].as_str().unwrap().to_string();
    let uid = created["user"]["id"].as_str().unwrap().to_string();
    let t = s.login("dave", &tmp).await;
    let access = t["access_token"].as_str().unwrap().to_string();
    let me: Value = s.get(&access, "/api/auth/me").await.json().await.unwrap();
    assert_eq!(me["must_change_password"], true);
    let r = s
        .post(
            &access,
            "/api/chat/message",
            json!({"message": "hi", "max_tokens": 4}),
        )
        .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "password_change_required"
    );
    let r = s
        .post(&access, "/api/auth/api-keys", json!({"name": "k"}))
        .await;
    assert_eq!(
        error_code(r, StatusCode::FORBIDDEN).await,
        "password_change_required"
    );
    // NIST rules: too short, contains the username.
    for (pw, code) in [
        ("Short-1a", "weak_password"),
        ("dave-is-my-name-2024-x", "weak_password"),
    ] {
        let r = s
            .post(
                &access,
                "/api/auth/password",
                json!({"current_password": tmp, "new_password": pw}),
            )
            .await;
        assert_eq!(error_code(r, StatusCode::UNPROCESSABLE_ENTITY).await, code);
    }
    let r = s
        .post(
            &access,
            "/api/auth/password",
            json!({"current_password": tmp, "new_password": USER_PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    let access = t["access_token"].as_str().unwrap().to_string();
    let r = s
        .post(
            &access,
            "/api/chat/message",
            json!({"message": "Say hi.", "max_tokens": 4}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // An admin reset ends the sessions and forces a change again.
    let r = s
        .post(
            &admin,
            &format!("/api/admin/users/{uid}/reset-password"),
            json!({}),
        )
        .await;
    let tmp2 = r.json::<Value>().await.unwrap()["temporary_password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        s.get(&access, "/api/auth/me").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = s
        .post_public(
            "/api/auth/login",
            json!({"username": "dave", "password": USER_PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let t = s.login("dave", &tmp2).await;
    let me: Value = s
        .get(t["access_token"].as_str().unwrap(), "/api/auth/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["must_change_password"], true);
}
