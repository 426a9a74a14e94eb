//! Token verification (`KeyRing::verify`) on arbitrary strings and on mutations of a valid
//! token: nothing panics, and the only string accepted is the genuine token itself (no
//! re-encoding, algorithm switch, header or claim change, or truncated signature gets in).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use palisade_auth::jwt::TokenKind;
use palisade_auth::KeyRing;
use serde_json::{json, Value};

struct Fixture {
    ring: KeyRing,
    genuine: String,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("a key");
        let ring = KeyRing::from_pkcs8(pkcs8.as_ref(), "https://palisade.test", "https://palisade.test")
            .expect("the key ring");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = json!({
            "sub": "0190f5e2-6c1d-7a52-9b1e-2f6c0d3e4a5b",
            "iss": "https://palisade.test",
            "aud": ring.audience(TokenKind::Access),
            "iat": now, "nbf": now, "exp": now + 3600,
            "role": "user",
        });
        let genuine = ring.sign(TokenKind::Access, &claims).expect("signing");
        assert!(ring.verify::<Value>(TokenKind::Access, &genuine).is_ok());
        Fixture { ring, genuine }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let candidate = if mode.is_multiple_of(2) {
        // Arbitrary text.
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // The genuine token with bytes replaced at chosen places (pairs of position, byte),
        // kept to the token's own alphabet plus the separators.
        let mut t = f.genuine.clone().into_bytes();
        for pair in rest.chunks_exact(2) {
            let at = usize::from(pair[0]) * t.len() / 256;
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/";
            t[at] = alphabet[usize::from(pair[1]) % alphabet.len()];
        }
        if mode & 0x80 != 0 && !rest.is_empty() {
            t.truncate(t.len() - usize::from(rest[0]) % t.len().min(64));
        }
        String::from_utf8_lossy(&t).into_owned()
    };
    for kind in [TokenKind::Access, TokenKind::Scoped, TokenKind::MfaChallenge] {
        if f.ring.verify::<Value>(kind, &candidate).is_ok() {
            assert!(
                kind == TokenKind::Access && candidate == f.genuine,
                "a forged or altered token was accepted as {kind:?}: {candidate:?}"
            );
        }
    }
});
