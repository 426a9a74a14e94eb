//! Signed tokens: EdDSA (Ed25519) JWTs with a `kid`, signing keys kept in the data dir and
//! rotated without invalidating live tokens.
//!
//! Only EdDSA is accepted (no `none`, no HS*/RS*, so no key confusion), `typ` must match the kind
//! of token expected (`at+jwt` access, `llm+jwt` scoped, `mfa+jwt` login challenge) and so must
//! `aud`; the `kid` must be one of ours; `iss`, `exp`, `nbf` are checked. Header fields such as
//! `jku`, `x5u` and `jwk` are never used to find a key.
//!
//! Keys live in `<keys dir>/jwt-<created unix secs>.pk8` (mode 0600). The newest signs; every key
//! on disk verifies. `palisade keys rotate` adds a new one and prunes keys retired for more than
//! a day; a running server picks the change up within seconds ([`KeyRing::reload`]).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use palisade_core::{CoreError, CoreResult};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The kinds of token Palisade signs; each has its own `typ` and audience suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Scoped,
    MfaChallenge,
}

impl TokenKind {
    fn typ(self) -> &'static str {
        match self {
            TokenKind::Access => "at+jwt",
            TokenKind::Scoped => "llm+jwt",
            TokenKind::MfaChallenge => "mfa+jwt",
        }
    }

    /// The `aud` of this kind, given the deployment's base audience.
    pub fn audience(self, base: &str) -> String {
        match self {
            TokenKind::Access => base.to_string(),
            TokenKind::Scoped => format!("{base}:llm"),
            TokenKind::MfaChallenge => format!("{base}:mfa"),
        }
    }
}

const LEGACY_KEY_FILE: &str = "jwt-ed25519.pk8";
/// Retired keys older than this (after their successor appeared) are pruned on rotation.
const RETIRED_KEY_KEEP_SECS: i64 = 24 * 3600;

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
    /// The login session (refresh-token family) this token belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// Claims of a scoped LLM token (spec 004).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScopedClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub tid: String,
    pub scope: Vec<String>,
    pub model: String,
    pub max_tokens: u32,
    /// The login session that minted it; the token dies with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The API key that minted it; the token dies with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub akid: Option<String>,
    pub jti: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

/// Claims of the short challenge between a correct password and the second factor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MfaClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub tid: String,
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

struct Loaded {
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
    jwks: Vec<PublicJwk>,
    /// The file names the ring was built from, to notice rotation.
    files: Vec<String>,
}

/// The signing key and the keys tokens are verified with.
pub struct KeyRing {
    dir: Option<PathBuf>,
    inner: RwLock<Loaded>,
    issuer: String,
    audience: String,
}

/// One key file: its creation time (from the name) and path.
fn key_files(dir: &Path) -> CoreResult<Vec<(i64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir)
        .map_err(|e| CoreError::Internal(format!("reading {}: {e}", dir.display())))?;
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let created = if name == LEGACY_KEY_FILE {
            Some(0)
        } else {
            name.strip_prefix("jwt-")
                .and_then(|r| r.strip_suffix(".pk8"))
                .and_then(|ts| ts.parse::<i64>().ok())
        };
        if let Some(ts) = created {
            out.push((ts, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn kid_of(public: &[u8]) -> String {
    hex::encode(&Sha256::digest(public)[..8])
}

fn load_keys(pkcs8s: &[Vec<u8>], files: Vec<String>) -> CoreResult<Loaded> {
    let mut decoding = HashMap::new();
    let mut jwks = Vec::new();
    let mut signing = None;
    for pkcs8 in pkcs8s {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| CoreError::Internal("a signing key file is not an Ed25519 key".into()))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = kid_of(&public);
        decoding.insert(kid.clone(), DecodingKey::from_ed_der(&public));
        jwks.push(PublicJwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(&public),
            kid: kid.clone(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
        });
        signing = Some((kid, EncodingKey::from_ed_der(pkcs8)));
    }
    let (kid, encoding) =
        signing.ok_or_else(|| CoreError::Internal("no signing key available".into()))?;
    // Newest first in the JWKS.
    jwks.reverse();
    Ok(Loaded {
        kid,
        encoding,
        decoding,
        jwks,
        files,
    })
}

fn generate_pkcs8() -> CoreResult<Vec<u8>> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| CoreError::Internal("generating a signing key failed".into()))
}

fn read_dir_keys(dir: &Path) -> CoreResult<Loaded> {
    let files = key_files(dir)?;
    let mut bytes = Vec::with_capacity(files.len());
    for (_, path) in &files {
        bytes.push(
            fs::read(path)
                .map_err(|e| CoreError::Internal(format!("reading {}: {e}", path.display())))?,
        );
    }
    let names = files
        .iter()
        .map(|(_, p)| p.to_string_lossy().to_string())
        .collect();
    load_keys(&bytes, names)
}

impl KeyRing {
    /// Loads the keys in `dir`, generating the first one (mode 0600) when there is none.
    pub fn load_or_create(dir: &Path, issuer: &str, audience: &str) -> CoreResult<KeyRing> {
        fs::create_dir_all(dir)
            .map_err(|e| CoreError::Internal(format!("creating {}: {e}", dir.display())))?;
        if key_files(dir)?.is_empty() {
            Self::rotate(dir)?;
        }
        Ok(KeyRing {
            dir: Some(dir.to_path_buf()),
            inner: RwLock::new(read_dir_keys(dir)?),
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    /// A key ring from one PKCS#8 Ed25519 key (tests).
    pub fn from_pkcs8(pkcs8: &[u8], issuer: &str, audience: &str) -> CoreResult<KeyRing> {
        Ok(KeyRing {
            dir: None,
            inner: RwLock::new(load_keys(&[pkcs8.to_vec()], Vec::new())?),
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    /// Adds a new signing key to `dir` and prunes keys retired for more than a day. Returns the
    /// new key's id. Tokens signed by the previous key stay valid until they expire.
    pub fn rotate(dir: &Path) -> CoreResult<String> {
        fs::create_dir_all(dir)
            .map_err(|e| CoreError::Internal(format!("creating {}: {e}", dir.display())))?;
        let existing = key_files(dir)?;
        let mut now = chrono::Utc::now().timestamp();
        // Two rotations in one second still get distinct, ordered names.
        if let Some((last, _)) = existing.last() {
            now = now.max(last + 1);
        }
        let pkcs8 = generate_pkcs8()?;
        write_private(&dir.join(format!("jwt-{now}.pk8")), &pkcs8)?;
        // A key is retired when its successor was created; drop those retired long ago.
        for w in existing.windows(2) {
            let (_, ref old_path) = w[0];
            let (successor_created, _) = w[1];
            if now - successor_created > RETIRED_KEY_KEEP_SECS {
                let _ = fs::remove_file(old_path);
            }
        }
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| CoreError::Internal("the new key is unreadable".into()))?;
        Ok(kid_of(pair.public_key().as_ref()))
    }

    /// Re-reads the key directory when its files changed (after `palisade keys rotate`).
    /// Returns true when the ring changed.
    pub fn reload(&self) -> CoreResult<bool> {
        let Some(dir) = &self.dir else {
            return Ok(false);
        };
        let names: Vec<String> = key_files(dir)?
            .iter()
            .map(|(_, p)| p.to_string_lossy().to_string())
            .collect();
        let unchanged = self.inner.read().map(|l| l.files == names).unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        let loaded = read_dir_keys(dir)?;
        let mut guard = self
            .inner
            .write()
            .map_err(|_| CoreError::Internal("key ring lock poisoned".into()))?;
        *guard = loaded;
        Ok(true)
    }

    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.inner
            .read()
            .map(|l| l.jwks.clone())
            .unwrap_or_default()
    }

    /// The id of the current signing key.
    pub fn current_kid(&self) -> String {
        self.inner.read().map(|l| l.kid.clone()).unwrap_or_default()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self, kind: TokenKind) -> String {
        kind.audience(&self.audience)
    }

    /// Signs `claims` as a token of `kind` with the current key.
    pub fn sign<T: Serialize>(&self, kind: TokenKind, claims: &T) -> CoreResult<String> {
        let guard = self
            .inner
            .read()
            .map_err(|_| CoreError::Internal("key ring lock poisoned".into()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(guard.kid.clone());
        header.typ = Some(kind.typ().into());
        jsonwebtoken::encode(&header, claims, &guard.encoding)
            .map_err(|e| CoreError::Internal(format!("signing: {e}")))
    }

    /// Verifies a token of `kind`: algorithm, `typ`, key id, signature, `iss`, `aud` and times.
    pub fn verify<T: DeserializeOwned>(&self, kind: TokenKind, token: &str) -> CoreResult<T> {
        if token.len() > 8192 {
            return Err(CoreError::invalid_token());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| CoreError::invalid_token())?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(kind.typ()) {
            return Err(CoreError::invalid_token());
        }
        let guard = self
            .inner
            .read()
            .map_err(|_| CoreError::Internal("key ring lock poisoned".into()))?;
        let key = header
            .kid
            .as_deref()
            .and_then(|k| guard.decoding.get(k))
            .ok_or_else(CoreError::invalid_token)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[kind.audience(&self.audience)]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = 5;
        jsonwebtoken::decode::<T>(token, key, &v)
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
mod tests;
