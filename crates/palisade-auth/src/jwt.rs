//! Access tokens: EdDSA (Ed25519) JWTs with a `kid`, the signing key kept in the data dir.
//!
//! Only EdDSA is accepted (no `none`, no HS*/RS*), `typ` must be `at+jwt`, the `kid` must be one
//! of ours, and `iss`, `aud`, `exp`, `nbf` are checked. Header fields such as `jku`, `x5u` and
//! `jwk` are never used to find a key.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use palisade_core::{CoreError, CoreResult};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const TOKEN_TYPE: &str = "at+jwt";
const KEY_FILE: &str = "jwt-ed25519.pk8";

/// Claims of a Palisade access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// User id.
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    pub role: String,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// A verification key published in the JWKS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

/// The signing key and the keys tokens are verified with.
pub struct KeyRing {
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    jwks: Vec<PublicJwk>,
    issuer: String,
    audience: String,
}

impl KeyRing {
    /// Loads the Ed25519 key from `dir`, generating it (mode 0600) on first use.
    pub fn load_or_create(dir: &Path, issuer: &str, audience: &str) -> CoreResult<KeyRing> {
        fs::create_dir_all(dir)
            .map_err(|e| CoreError::Internal(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(KEY_FILE);
        let pkcs8 = if path.exists() {
            fs::read(&path)
                .map_err(|e| CoreError::Internal(format!("reading {}: {e}", path.display())))?
        } else {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| CoreError::Internal("generating the signing key failed".into()))?;
            write_private(&path, doc.as_ref())?;
            doc.as_ref().to_vec()
        };
        Self::from_pkcs8(&pkcs8, issuer, audience)
    }

    /// Builds a key ring from a PKCS#8 Ed25519 key.
    pub fn from_pkcs8(pkcs8: &[u8], issuer: &str, audience: &str) -> CoreResult<KeyRing> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| {
            CoreError::Internal("the signing key file is not an Ed25519 key".into())
        })?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = hex::encode(&Sha256::digest(&public)[..8]);
        let mut decoding = HashMap::new();
        decoding.insert(kid.clone(), DecodingKey::from_ed_der(&public));
        Ok(KeyRing {
            encoding: EncodingKey::from_ed_der(pkcs8),
            jwks: vec![PublicJwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(&public),
                kid: kid.clone(),
                alg: "EdDSA".into(),
                use_: "sig".into(),
            }],
            kid,
            decoding,
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    pub fn jwks(&self) -> &[PublicJwk] {
        &self.jwks
    }

    pub fn sign(&self, claims: &AccessClaims) -> CoreResult<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some(TOKEN_TYPE.into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| CoreError::Internal(format!("signing: {e}")))
    }

    /// Verifies signature, algorithm, type, key id, issuer, audience and time claims.
    pub fn verify(&self, token: &str) -> CoreResult<AccessClaims> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| CoreError::invalid_token())?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(TOKEN_TYPE) {
            return Err(CoreError::invalid_token());
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|k| self.decoding.get(k))
            .ok_or_else(CoreError::invalid_token)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = 30;
        jsonwebtoken::decode::<AccessClaims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|_| CoreError::invalid_token())
    }
}

/// Writes a secret file readable only by its owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> CoreResult<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| CoreError::Internal(format!("creating {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| CoreError::Internal(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        let dir = tempfile::tempdir().ok();
        let dir = dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default();
        match KeyRing::load_or_create(&dir, "palisade", "palisade") {
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
            iat: now,
            nbf: now,
            exp: now + exp_in,
        }
    }

    #[test]
    fn round_trip_and_attacks() {
        let k = ring();
        let t = k.sign(&claims(60)).unwrap_or_default();
        assert_eq!(k.verify(&t).ok().map(|c| c.sub), Some("u".into()));
        // Expired beyond leeway.
        let old = k.sign(&claims(-120)).unwrap_or_default();
        assert!(k.verify(&old).is_err());
        // Tampered payload.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let mut c = claims(60);
        c.role = "admin".into();
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap_or_default());
        assert!(k.verify(&parts.join(".")).is_err());
        // alg=none.
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
        assert!(k.verify(&format!("{none_header}.{}.", parts[1])).is_err());
        // Another key's token.
        let other = ring();
        assert!(k
            .verify(&other.sign(&claims(60)).unwrap_or_default())
            .is_err());
        // Garbage.
        assert!(k.verify("abc.def.ghi").is_err());
    }
}
