//! OpenID Connect (spec 001's Keycloak, or any OpenID provider): the authorization-code flow
//! with PKCE for browsers, and the provider's bearer JWTs accepted on the API. Tokens are
//! verified against the provider's JWKS with the issuer and audience pinned; the signature
//! algorithm must be an asymmetric one the key itself declares. Claims map to Palisade roles.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use palisade_core::{CoreError, CoreResult};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// How Palisade talks to the provider.
#[derive(Debug, Clone, Default)]
pub struct OidcSettings {
    /// The provider's issuer URL (https, or http on loopback only).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// `aud` required on bearer JWTs presented to the API.
    pub audience: String,
    /// Where the provider sends the browser back: `https://<host>/api/auth/oidc/callback`.
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// Claim holding the user's groups or roles (e.g. `groups`, `realm_access.roles`).
    pub role_claim: String,
    pub username_claim: String,
    /// Group or role at the provider → Palisade role.
    pub role_map: BTreeMap<String, String>,
    /// Role of users none of whose groups is mapped; `None` refuses them.
    pub default_role: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

struct Pending {
    verifier: String,
    nonce: String,
    created: Instant,
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// The provider, discovered lazily and cached.
pub struct Oidc {
    pub(crate) settings: OidcSettings,
    http: reqwest::Client,
    meta: RwLock<Option<Metadata>>,
    keys: RwLock<Option<Keys>>,
    pending: Mutex<HashMap<String, Pending>>,
}

const PENDING_TTL: Duration = Duration::from_secs(600);
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn unavailable(what: &str) -> CoreError {
    CoreError::Provider(palisade_core::provider::ProviderError::Unavailable(
        format!("the identity provider is unreachable ({what})"),
    ))
}

/// Looks a dotted claim path up (`realm_access.roles`).
fn claim<'a>(claims: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(claims, |v, k| v.get(k))
}

impl Oidc {
    pub fn new(settings: OidcSettings) -> CoreResult<Oidc> {
        let url = reqwest::Url::parse(&settings.issuer)
            .map_err(|_| CoreError::validation("invalid_oidc", "auth.oidc.issuer is not a URL"))?;
        let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(CoreError::validation(
                "invalid_oidc",
                "auth.oidc.issuer must use https (plain http only on loopback)",
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CoreError::Internal(format!("http client: {e}")))?;
        Ok(Oidc {
            settings,
            http,
            meta: RwLock::new(None),
            keys: RwLock::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    pub fn provider_id(&self) -> String {
        format!("oidc:{}", self.settings.issuer)
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    async fn metadata(&self) -> CoreResult<Metadata> {
        if let Ok(g) = self.meta.read() {
            if let Some(m) = g.as_ref() {
                return Ok(m.clone());
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let m: Metadata = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|_| unavailable("discovery"))?
            .json()
            .await
            .map_err(|_| unavailable("discovery document"))?;
        if m.issuer.trim_end_matches('/') != self.settings.issuer.trim_end_matches('/') {
            return Err(CoreError::Internal(
                "the provider's discovery document names another issuer".into(),
            ));
        }
        if let Ok(mut g) = self.meta.write() {
            *g = Some(m.clone());
        }
        Ok(m)
    }

    async fn fetch_keys(&self) -> CoreResult<()> {
        let meta = self.metadata().await?;
        let set: JwkSet = self
            .http
            .get(&meta.jwks_uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|_| unavailable("jwks"))?
            .json()
            .await
            .map_err(|_| unavailable("jwks document"))?;
        if let Ok(mut g) = self.keys.write() {
            *g = Some(Keys {
                set,
                fetched: Instant::now(),
            });
        }
        Ok(())
    }

    /// The key for `kid` and the algorithm it declares; refetches the JWKS (at most every
    /// 30 s) when the key is unknown, so provider key rotation is followed.
    async fn key(&self, kid: &str) -> CoreResult<(DecodingKey, Algorithm)> {
        for attempt in 0..2 {
            let (found, stale) = match self.keys.read() {
                Ok(g) => match g.as_ref() {
                    Some(k) => (
                        k.set.find(kid).cloned(),
                        k.fetched.elapsed() > JWKS_MIN_REFRESH,
                    ),
                    None => (None, true),
                },
                Err(_) => (None, true),
            };
            if let Some(jwk) = found {
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| a.to_string().parse::<Algorithm>().ok())
                    .or(match &jwk.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
                        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                            Some(Algorithm::ES256)
                        }
                        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => {
                            Some(Algorithm::EdDSA)
                        }
                        // Symmetric keys are never accepted.
                        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => None,
                    })
                    .ok_or_else(CoreError::invalid_token)?;
                if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    return Err(CoreError::invalid_token());
                }
                let key = DecodingKey::from_jwk(&jwk).map_err(|_| CoreError::invalid_token())?;
                return Ok((key, alg));
            }
            if attempt == 0 && stale {
                self.fetch_keys().await?;
            } else {
                break;
            }
        }
        Err(CoreError::invalid_token())
    }

    /// Verifies a JWT of the provider for `audience`, and the `nonce` of an id_token.
    pub async fn verify(
        &self,
        token: &str,
        audience: &str,
        nonce: Option<&str>,
    ) -> CoreResult<serde_json::Value> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| CoreError::invalid_token())?;
        let kid = header.kid.ok_or_else(CoreError::invalid_token)?;
        let (key, alg) = self.key(&kid).await?;
        // The algorithm is the key's, never the token's own claim.
        if header.alg != alg {
            return Err(CoreError::invalid_token());
        }
        let mut v = Validation::new(alg);
        v.set_issuer(&[self.settings.issuer.as_str()]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 30;
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
            .map_err(|_| CoreError::invalid_token())?
            .claims;
        if let Some(n) = nonce {
            if claims.get("nonce").and_then(|x| x.as_str()) != Some(n) {
                return Err(CoreError::invalid_token());
            }
        }
        Ok(claims)
    }

    /// True when the token was issued by this provider (unverified peek, for routing only).
    pub fn is_ours(&self, token: &str) -> bool {
        let Some(payload) = token.split('.').nth(1) else {
            return false;
        };
        let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload) else {
            return false;
        };
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|c| c.get("iss").and_then(|i| i.as_str()).map(String::from))
            .is_some_and(|iss| iss == self.settings.issuer)
    }

    /// Starts a browser login: the provider URL to redirect to (state, nonce, PKCE S256).
    pub async fn begin(&self) -> CoreResult<String> {
        let meta = self.metadata().await?;
        let state = random_b64(24);
        let nonce = random_b64(24);
        let verifier = random_b64(48);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, v| v.created.elapsed() < PENDING_TTL);
            if p.len() > 10_000 {
                return Err(CoreError::too_many(
                    "sso_busy",
                    "too many logins in progress; try again shortly",
                    10,
                ));
            }
            p.insert(
                state.clone(),
                Pending {
                    verifier,
                    nonce: nonce.clone(),
                    created: Instant::now(),
                },
            );
        }
        let mut url = reqwest::Url::parse(&meta.authorization_endpoint)
            .map_err(|_| CoreError::Internal("bad authorization endpoint".into()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", &self.settings.redirect_uri)
            .append_pair("scope", &self.settings.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url.to_string())
    }

    /// Finishes a browser login: checks the state, redeems the code with the PKCE verifier and
    /// verifies the id_token (issuer, client audience, nonce). Returns its claims.
    pub async fn finish(&self, code: &str, state: &str) -> CoreResult<serde_json::Value> {
        let pending = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(state))
            .filter(|p| p.created.elapsed() < PENDING_TTL)
            .ok_or_else(|| {
                CoreError::validation("invalid_state", "the login expired; start again")
            })?;
        let meta = self.metadata().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.settings.redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let mut req = self.http.post(&meta.token_endpoint);
        match &self.settings.client_secret {
            Some(secret) => req = req.basic_auth(&self.settings.client_id, Some(secret)),
            None => form.push(("client_id", self.settings.client_id.as_str())),
        }
        let res = req
            .form(&form)
            .send()
            .await
            .map_err(|_| unavailable("token"))?;
        if !res.status().is_success() {
            tracing::warn!(status = %res.status(), "the identity provider refused the code");
            return Err(CoreError::invalid_credentials());
        }
        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: String,
        }
        let t: TokenAnswer = res.json().await.map_err(|_| unavailable("token answer"))?;
        self.verify(&t.id_token, &self.settings.client_id, Some(&pending.nonce))
            .await
    }

    /// The groups or roles in the claims.
    pub fn groups(&self, claims: &serde_json::Value) -> Vec<String> {
        match claim(claims, &self.settings.role_claim) {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            Some(serde_json::Value::String(s)) => s.split([' ', ',']).map(String::from).collect(),
            _ => Vec::new(),
        }
    }

    /// The preferred username (falls back to `sub`).
    pub fn username(&self, claims: &serde_json::Value) -> Option<String> {
        claim(claims, &self.settings.username_claim)
            .or_else(|| claims.get("sub"))
            .and_then(|v| v.as_str())
            .map(String::from)
    }
}
