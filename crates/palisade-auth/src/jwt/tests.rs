//! Attacks on the token verifier (RFC 8725): algorithm, type, key and claim confusion.

use super::*;

fn ring_in(dir: &Path) -> KeyRing {
    match KeyRing::load_or_create(dir, "palisade", "palisade") {
        Ok(k) => k,
        Err(e) => unreachable!("{e}"),
    }
}

fn claims(exp_in: i64) -> AccessClaims {
    let now = chrono::Utc::now().timestamp();
    AccessClaims {
        iss: "palisade".into(),
        aud: "palisade".into(),
        sub: "u".into(),
        tid: "t".into(),
        role: "user".into(),
        jti: "j".into(),
        sid: None,
        iat: now,
        nbf: now,
        exp: now + exp_in,
    }
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

fn json_b64(v: &serde_json::Value) -> String {
    b64(v.to_string().as_bytes())
}

fn verify_access(k: &KeyRing, t: &str) -> CoreResult<AccessClaims> {
    k.verify::<AccessClaims>(TokenKind::Access, t)
}

#[test]
fn round_trip_and_forgeries() {
    let dir = tempfile::tempdir().ok();
    let Some(dir) = dir else { return };
    let k = ring_in(dir.path());
    let t = k.sign(TokenKind::Access, &claims(60)).unwrap_or_default();
    assert_eq!(verify_access(&k, &t).ok().map(|c| c.sub), Some("u".into()));
    let parts: Vec<&str> = t.split('.').collect();
    assert_eq!(parts.len(), 3);

    // Tampered payload (role escalation) with the original signature.
    let mut c = claims(60);
    c.role = "admin".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&c).unwrap_or_default()),
        parts[2]
    );
    assert!(verify_access(&k, &forged).is_err());

    // Stripped signature.
    assert!(verify_access(&k, &format!("{}.{}.", parts[0], parts[1])).is_err());
    assert!(verify_access(&k, &format!("{}.{}", parts[0], parts[1])).is_err());

    // alg=none, with and without kid.
    let kid = k.current_kid();
    for header in [
        serde_json::json!({"alg":"none","typ":"at+jwt"}),
        serde_json::json!({"alg":"none","typ":"at+jwt","kid":kid}),
        serde_json::json!({"alg":"None","typ":"at+jwt","kid":kid}),
    ] {
        assert!(verify_access(&k, &format!("{}.{}.", json_b64(&header), parts[1])).is_err());
    }

    // HS256 signed with the public key as the HMAC secret (key confusion).
    let public_x = k.jwks()[0].x.clone();
    let public_raw = URL_SAFE_NO_PAD.decode(&public_x).unwrap_or_default();
    for secret in [public_raw.clone(), public_x.as_bytes().to_vec()] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.clone());
        h.typ = Some("at+jwt".into());
        let hs = jsonwebtoken::encode(&h, &claims(60), &EncodingKey::from_secret(&secret))
            .unwrap_or_default();
        assert!(!hs.is_empty());
        assert!(verify_access(&k, &hs).is_err());
    }

    // An attacker's own Ed25519 key, announced through jwk / jku / x5u and reusing our kid.
    let other_dir = tempfile::tempdir().ok();
    let Some(other_dir) = other_dir else { return };
    let attacker = ring_in(other_dir.path());
    let attacker_token = attacker
        .sign(TokenKind::Access, &claims(60))
        .unwrap_or_default();
    assert!(verify_access(&k, &attacker_token).is_err());
    let a_parts: Vec<&str> = attacker_token.split('.').collect();
    let evil_header = serde_json::json!({
        "alg": "EdDSA", "typ": "at+jwt", "kid": kid,
        "jwk": attacker.jwks()[0],
        "jku": "https://evil.example/jwks.json",
        "x5u": "https://evil.example/cert.pem",
    });
    let evil = format!("{}.{}.{}", json_b64(&evil_header), a_parts[1], a_parts[2]);
    assert!(verify_access(&k, &evil).is_err());

    // Unknown kid, missing kid.
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = Some("deadbeefdeadbeef".into());
    let unknown_kid = format!(
        "{}.{}.{}",
        json_b64(&serde_json::to_value(&h).unwrap_or_default()),
        parts[1],
        parts[2]
    );
    assert!(verify_access(&k, &unknown_kid).is_err());
    h.kid = None;
    let no_kid = format!(
        "{}.{}.{}",
        json_b64(&serde_json::to_value(&h).unwrap_or_default()),
        parts[1],
        parts[2]
    );
    assert!(verify_access(&k, &no_kid).is_err());

    // Garbage and oversized input.
    assert!(verify_access(&k, "abc.def.ghi").is_err());
    assert!(verify_access(&k, "").is_err());
    assert!(verify_access(&k, &"a".repeat(10_000)).is_err());
}

#[test]
fn claims_and_types_are_checked() {
    let dir = tempfile::tempdir().ok();
    let Some(dir) = dir else { return };
    let k = ring_in(dir.path());
    // Expired beyond leeway; not yet valid.
    assert!(verify_access(
        &k,
        &k.sign(TokenKind::Access, &claims(-120)).unwrap_or_default()
    )
    .is_err());
    let mut future = claims(600);
    future.nbf += 300;
    assert!(verify_access(&k, &k.sign(TokenKind::Access, &future).unwrap_or_default()).is_err());
    // Wrong issuer, wrong audience.
    let mut c = claims(60);
    c.iss = "someone-else".into();
    assert!(verify_access(&k, &k.sign(TokenKind::Access, &c).unwrap_or_default()).is_err());
    let mut c = claims(60);
    c.aud = "other-api".into();
    assert!(verify_access(&k, &k.sign(TokenKind::Access, &c).unwrap_or_default()).is_err());
    // Missing exp.
    let no_exp = serde_json::json!({"iss":"palisade","aud":"palisade","sub":"u","nbf":0});
    assert!(verify_access(&k, &k.sign(TokenKind::Access, &no_exp).unwrap_or_default()).is_err());
    // A scoped token or an MFA challenge is not an access token, even with the right aud.
    let c = claims(60);
    assert!(verify_access(&k, &k.sign(TokenKind::Scoped, &c).unwrap_or_default()).is_err());
    assert!(verify_access(&k, &k.sign(TokenKind::MfaChallenge, &c).unwrap_or_default()).is_err());
    // And an access token is not a scoped token.
    let access = k.sign(TokenKind::Access, &c).unwrap_or_default();
    assert!(k
        .verify::<AccessClaims>(TokenKind::Scoped, &access)
        .is_err());
    // A wrong typ header with an otherwise valid signature.
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(k.current_kid());
    h.typ = Some("JWT".into());
    let jwt_typ = jsonwebtoken::encode(&h, &c, &{
        let guard = k.inner.read();
        match guard {
            Ok(g) => g.encoding.clone(),
            Err(_) => return,
        }
    })
    .unwrap_or_default();
    assert!(!jwt_typ.is_empty());
    assert!(verify_access(&k, &jwt_typ).is_err());
}

#[test]
fn rotation_keeps_old_tokens_until_expiry() {
    let dir = tempfile::tempdir().ok();
    let Some(dir) = dir else { return };
    let k = ring_in(dir.path());
    let old_kid = k.current_kid();
    let old_token = k.sign(TokenKind::Access, &claims(60)).unwrap_or_default();
    let new_kid = KeyRing::rotate(dir.path()).unwrap_or_default();
    assert_ne!(old_kid, new_kid);
    assert!(matches!(k.reload(), Ok(true)));
    assert!(matches!(k.reload(), Ok(false)));
    assert_eq!(k.current_kid(), new_kid);
    // The old token still verifies; new tokens carry the new kid; both keys are published.
    assert!(verify_access(&k, &old_token).is_ok());
    let new_token = k.sign(TokenKind::Access, &claims(60)).unwrap_or_default();
    let header = jsonwebtoken::decode_header(&new_token).ok();
    assert_eq!(header.and_then(|h| h.kid), Some(new_kid.clone()));
    let kids: Vec<String> = k.jwks().into_iter().map(|j| j.kid).collect();
    assert_eq!(kids, vec![new_kid, old_kid]);
    // Key files are private.
    #[cfg(unix)]
    for (_, p) in key_files(dir.path()).unwrap_or_default() {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}
