//! Envelope encryption at rest.
//!
//! Each tenant has a data key (32 random bytes, AES-256-GCM), stored only wrapped by the
//! **master key**, which lives outside the database (a file of the data dir, or the
//! configuration). Message content, conversation titles and system prompts, pseudonym vaults
//! and TOTP secrets are sealed with the tenant's data key before they are written, as
//! `enc1:<key version>:<base64(nonce ‖ ciphertext ‖ tag)>`. The additional authenticated data
//! binds each value to its place (`messages.content|tenant|session|message`, ...), so a sealed
//! value copied to another row, session or tenant does not open.
//!
//! Rotating the master key re-wraps the data keys (the data stays as it is). Shredding a
//! tenant's key clears its wrapped copies (with SQLite's `secure_delete` on, the bytes are
//! overwritten): every value sealed with it is unreadable from then on, while new writes get a
//! new key version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use palisade_core::entities::now_millis;
use palisade_core::{CoreError, CoreResult};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::Row;

use crate::{db_err, Run, RunScalar, Scope, Store};

/// The prefix of a sealed value.
const SEALED: &str = "enc1:";

/// How long an unwrapped data key is trusted without looking at the database again (a key
/// shredded by another process stops working within this time).
const CACHE_TTL: Duration = Duration::from_secs(30);

/// The master key (32 bytes). It wraps the tenants' data keys and is never stored in the
/// database.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id())
    }
}

impl MasterKey {
    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<MasterKey> {
        let bytes: [u8; 32] = hex::decode(s.trim()).ok()?.try_into().ok()?;
        Some(MasterKey(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> CoreResult<MasterKey> {
        let mut b = [0u8; 32];
        SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| CoreError::Internal("no randomness for a master key".into()))?;
        Ok(MasterKey(b))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key's public name: the first 16 hex digits of its SHA-256 (which key wraps a row).
    pub fn id(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        hex::encode(&d.as_ref()[..8])
    }

    fn aead(&self) -> CoreResult<LessSafeKey> {
        aead_key(&self.0)
    }
}

fn aead_key(bytes: &[u8]) -> CoreResult<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| CoreError::Internal("bad AES-256-GCM key".into()))
}

/// Where the current master keys come from, asked again when a row names a key not in hand
/// (another process rotated it). The first key wraps new data keys; later ones only unwrap.
pub type MasterSource = Arc<dyn Fn() -> Result<Vec<MasterKey>, String> + Send + Sync>;

fn seal(key: &LessSafeKey, rng: &SystemRandom, aad: &[u8], plain: &[u8]) -> CoreResult<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce)
        .map_err(|_| CoreError::Internal("no randomness for a nonce".into()))?;
    let mut data = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut data,
    )
    .map_err(|_| CoreError::Internal("sealing failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + data.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&data);
    Ok(out)
}

fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut data = rest.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(aad), &mut data).ok()?;
    Some(plain.to_vec())
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD_NO_PAD
}

/// The additional data that binds a wrapped data key to its tenant and version.
fn dek_aad(tenant: &str, version: i64) -> Vec<u8> {
    format!("palisade-data-key|{tenant}|{version}").into_bytes()
}

/// An unwrapped data key and when it was read.
type CachedKey = (Instant, Arc<LessSafeKey>);

/// Master keys, the cache of unwrapped data keys, randomness.
pub(crate) struct Cipher {
    masters: RwLock<Vec<MasterKey>>,
    source: Option<MasterSource>,
    keys: Mutex<HashMap<(String, i64), CachedKey>>,
    /// The version new values of a tenant are sealed with.
    current: Mutex<HashMap<String, (Instant, i64)>>,
    rng: SystemRandom,
}

impl Cipher {
    pub(crate) fn new(masters: Vec<MasterKey>, source: Option<MasterSource>) -> Cipher {
        Cipher {
            masters: RwLock::new(masters),
            source,
            keys: Mutex::new(HashMap::new()),
            current: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }

    fn masters(&self) -> Vec<MasterKey> {
        self.masters.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Reads the master keys again from their source (after a rotation elsewhere).
    fn reload(&self) -> CoreResult<Vec<MasterKey>> {
        if let Some(src) = &self.source {
            let fresh = src().map_err(|e| CoreError::Storage(format!("master key: {e}")))?;
            if fresh.is_empty() {
                return Err(CoreError::Storage("no master key configured".into()));
            }
            if let Ok(mut m) = self.masters.write() {
                *m = fresh.clone();
            }
            return Ok(fresh);
        }
        Ok(self.masters())
    }

    fn cached(&self, tenant: &str, version: i64) -> Option<Arc<LessSafeKey>> {
        let keys = self.keys.lock().ok()?;
        keys.get(&(tenant.to_string(), version))
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, k)| k.clone())
    }

    fn remember(&self, tenant: &str, version: i64, key: Arc<LessSafeKey>) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert((tenant.to_string(), version), (Instant::now(), key));
        }
    }

    fn forget(&self, tenant: &str) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.retain(|(t, _), _| t != tenant);
        }
        if let Ok(mut cur) = self.current.lock() {
            cur.remove(tenant);
        }
    }

    /// Unwraps a stored data key with the master key it names.
    fn unwrap_key(
        &self,
        tenant: &str,
        version: i64,
        wrapped: &str,
        master_id: &str,
    ) -> CoreResult<LessSafeKey> {
        let mut masters = self.masters();
        if !masters.iter().any(|m| m.id() == master_id) {
            masters = self.reload()?;
        }
        let master = masters.iter().find(|m| m.id() == master_id).ok_or_else(|| {
            CoreError::Storage(format!(
                "tenant {tenant}'s data key is wrapped by master key {master_id}, which is not configured"
            ))
        })?;
        let sealed = b64()
            .decode(wrapped)
            .map_err(|_| CoreError::Storage("corrupt wrapped data key".into()))?;
        let raw = open(&master.aead()?, &dek_aad(tenant, version), &sealed).ok_or_else(|| {
            CoreError::Storage(format!("tenant {tenant}'s data key does not unwrap"))
        })?;
        aead_key(&raw)
    }

    /// Wraps raw key bytes with the first master key: (wrapped, master id).
    fn wrap_key(&self, tenant: &str, version: i64, raw: &[u8]) -> CoreResult<(String, String)> {
        let masters = self.reload()?;
        let master = masters
            .first()
            .ok_or_else(|| CoreError::Storage("no master key configured".into()))?;
        let sealed = seal(&master.aead()?, &self.rng, &dek_aad(tenant, version), raw)?;
        Ok((b64().encode(sealed), master.id()))
    }
}

/// Which tenant and where a sealed value lives (its additional authenticated data).
pub(crate) struct Place<'a> {
    pub tenant: &'a str,
    /// `table.column`.
    pub field: &'a str,
    /// The row's identity within the tenant (session id, `session|message`, user id).
    pub row: &'a str,
}

impl Place<'_> {
    fn aad(&self) -> Vec<u8> {
        format!("{}|{}|{}", self.field, self.tenant, self.row).into_bytes()
    }
}

impl Store {
    /// Encrypts what this store writes from now on with per-tenant data keys wrapped by
    /// `masters[0]` (later keys are accepted for unwrapping; `source` is asked again when a
    /// row names a master key not in hand).
    pub fn with_master_keys(
        mut self,
        masters: Vec<MasterKey>,
        source: Option<MasterSource>,
    ) -> Store {
        self.cipher = Some(Arc::new(Cipher::new(masters, source)));
        // Copies read without the cipher are not the rows as this store reads them.
        self.hot = Arc::new(crate::hot::HotReads::new(crate::hot::HOT_TTL));
        self
    }

    /// The data key of `tenant`: a given version, or the one new values are sealed with
    /// (created when the tenant has none, or only shredded ones).
    async fn data_key(
        &self,
        c: &Cipher,
        tenant: &str,
        version: Option<i64>,
    ) -> CoreResult<(i64, Arc<LessSafeKey>)> {
        let version = match version {
            Some(v) => v,
            None => {
                let cur = c
                    .current
                    .lock()
                    .ok()
                    .and_then(|m| m.get(tenant).copied())
                    .filter(|(at, _)| at.elapsed() < CACHE_TTL)
                    .map(|(_, v)| v);
                match cur {
                    Some(v) => v,
                    None => self.current_version(c, tenant).await?,
                }
            }
        };
        if let Some(k) = c.cached(tenant, version) {
            return Ok((version, k));
        }
        let row = sqlx::query(
            "SELECT wrapped, master_id FROM tenant_keys WHERE tenant_id = $1 AND version = $2",
        )
        .bind(tenant)
        .bind(version)
        .fetch_optional_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Err(CoreError::Storage(format!(
                "tenant {tenant} has no data key version {version}"
            )));
        };
        let wrapped: Option<String> = row.try_get("wrapped").map_err(db_err)?;
        let master_id: String = row.try_get("master_id").map_err(db_err)?;
        let Some(wrapped) = wrapped else {
            c.forget(tenant);
            return Err(CoreError::DataDestroyed);
        };
        let key = Arc::new(c.unwrap_key(tenant, version, &wrapped, &master_id)?);
        c.remember(tenant, version, key.clone());
        Ok((version, key))
    }

    /// The newest usable version of `tenant`'s data key, creating one when there is none.
    async fn current_version(&self, c: &Cipher, tenant: &str) -> CoreResult<i64> {
        for _ in 0..3 {
            let newest = sqlx::query(
                "SELECT version, CASE WHEN wrapped IS NULL THEN 0 ELSE 1 END AS live FROM tenant_keys \
                 WHERE tenant_id = $1 ORDER BY version DESC LIMIT 1",
            )
            .bind(tenant)
            .fetch_optional_in(self, Scope::System)
            .await
            .map_err(db_err)?;
            let next = match newest {
                Some(row) => {
                    let v: i64 = row.try_get("version").map_err(db_err)?;
                    let live = row.try_get::<i64, _>("live").map_err(db_err)? != 0;
                    if live {
                        if let Ok(mut cur) = c.current.lock() {
                            cur.insert(tenant.to_string(), (Instant::now(), v));
                        }
                        return Ok(v);
                    }
                    v + 1
                }
                None => 1,
            };
            let mut raw = [0u8; 32];
            c.rng
                .fill(&mut raw)
                .map_err(|_| CoreError::Internal("no randomness for a data key".into()))?;
            let (wrapped, master_id) = c.wrap_key(tenant, next, &raw)?;
            // Two writers racing for the first key: one insert wins, both use it.
            sqlx::query(
                "INSERT INTO tenant_keys (tenant_id, version, wrapped, master_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, version) DO NOTHING",
            )
            .bind(tenant)
            .bind(next)
            .bind(&wrapped)
            .bind(&master_id)
            .bind(now_millis())
            .execute_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        }
        Err(CoreError::Storage(format!(
            "could not create a data key for tenant {tenant}"
        )))
    }

    /// Seals `plain` for its place (as is when this store has no master key).
    pub(crate) async fn seal_text(&self, at: &Place<'_>, plain: &str) -> CoreResult<String> {
        let Some(c) = &self.cipher else {
            return Ok(plain.to_string());
        };
        let (version, key) = self.data_key(c, at.tenant, None).await?;
        let sealed = seal(&key, &c.rng, &at.aad(), plain.as_bytes())?;
        Ok(format!("{SEALED}{version}:{}", b64().encode(sealed)))
    }

    /// Opens a value written by [`Store::seal_text`]; text written before encryption was
    /// turned on is returned as it is.
    pub(crate) async fn open_text(&self, at: &Place<'_>, stored: String) -> CoreResult<String> {
        let Some(rest) = stored.strip_prefix(SEALED) else {
            return Ok(stored);
        };
        let Some(c) = &self.cipher else {
            return Err(CoreError::Storage(
                "the value is encrypted and this store has no master key".into(),
            ));
        };
        let (version, body) = rest
            .split_once(':')
            .and_then(|(v, b)| v.parse::<i64>().ok().map(|v| (v, b)))
            .ok_or_else(|| CoreError::Storage(format!("corrupt sealed value in {}", at.field)))?;
        let (_, key) = self.data_key(c, at.tenant, Some(version)).await?;
        let sealed = b64()
            .decode(body)
            .map_err(|_| CoreError::Storage(format!("corrupt sealed value in {}", at.field)))?;
        let plain = open(&key, &at.aad(), &sealed).ok_or_else(|| {
            CoreError::Storage(format!(
                "a value of {} does not open: altered or moved",
                at.field
            ))
        })?;
        String::from_utf8(plain)
            .map_err(|_| CoreError::Storage(format!("a value of {} is not text", at.field)))
    }

    /// As [`Store::open_text`] for an optional column.
    pub(crate) async fn open_opt(
        &self,
        at: &Place<'_>,
        stored: Option<String>,
    ) -> CoreResult<Option<String>> {
        match stored {
            Some(s) => self.open_text(at, s).await.map(Some),
            None => Ok(None),
        }
    }

    /// As [`Store::seal_text`] for an optional column.
    pub(crate) async fn seal_opt(
        &self,
        at: &Place<'_>,
        plain: Option<&str>,
    ) -> CoreResult<Option<String>> {
        match plain {
            Some(p) => self.seal_text(at, p).await.map(Some),
            None => Ok(None),
        }
    }

    /// Destroys every data key of `tenant` (crypto-shredding): what they sealed can never be
    /// read again. New values get a new key. Returns the number of keys destroyed.
    pub async fn shred_tenant_keys(&self, tenant: &str) -> CoreResult<u64> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let r = sqlx::query(
            "UPDATE tenant_keys SET wrapped = NULL, shredded_at = $1 \
             WHERE tenant_id = $2 AND wrapped IS NOT NULL",
        )
        .bind(now_millis())
        .bind(tenant)
        .execute_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        // Out of SQLite's write-ahead log too (secure_delete zeroes the old bytes in the
        // file). PostgreSQL's old row versions go with VACUUM; the wrapped key is useless
        // without the master key, which never enters the database.
        if self.backend == crate::Backend::Sqlite {
            // The first column says whether the checkpoint could not finish (a reader, or the
            // store's own checkpointer, in the way): try again for up to a second.
            for _ in 0..100 {
                let busy: i64 = sqlx::query_scalar("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one_in(self, Scope::System)
                    .await
                    .map_err(db_err)?;
                if busy == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        if let Some(c) = &self.cipher {
            c.forget(tenant);
        }
        Ok(r.rows_affected())
    }

    /// Wraps every live data key with `new` (which must be the first master key of this
    /// store), unwrapping each with whichever configured key wraps it now. Returns how many
    /// were re-wrapped; a key wrapped by a master key not configured is an error.
    pub async fn rewrap_tenant_keys(&self, new: &MasterKey) -> CoreResult<u64> {
        let _fresh = crate::hot::Invalidate::new(&self.hot);
        let Some(c) = &self.cipher else {
            return Err(CoreError::Storage("this store has no master key".into()));
        };
        let rows = sqlx::query(
            "SELECT tenant_id, version, wrapped, master_id FROM tenant_keys \
             WHERE wrapped IS NOT NULL AND master_id <> $1",
        )
        .bind(new.id())
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        let mut n = 0;
        for row in rows {
            let tenant: String = row.try_get("tenant_id").map_err(db_err)?;
            let version: i64 = row.try_get("version").map_err(db_err)?;
            let wrapped: String = row.try_get("wrapped").map_err(db_err)?;
            let master_id: String = row.try_get("master_id").map_err(db_err)?;
            let masters = c.masters();
            let old = masters.iter().find(|m| m.id() == master_id).ok_or_else(|| {
                CoreError::Storage(format!(
                    "tenant {tenant}'s data key is wrapped by master key {master_id}, which was not given"
                ))
            })?;
            let sealed = b64()
                .decode(&wrapped)
                .map_err(|_| CoreError::Storage("corrupt wrapped data key".into()))?;
            let raw = open(&old.aead()?, &dek_aad(&tenant, version), &sealed).ok_or_else(|| {
                CoreError::Storage(format!("tenant {tenant}'s data key does not unwrap"))
            })?;
            let again = seal(&new.aead()?, &c.rng, &dek_aad(&tenant, version), &raw)?;
            let r = sqlx::query(
                "UPDATE tenant_keys SET wrapped = $1, master_id = $2 \
                 WHERE tenant_id = $3 AND version = $4 AND master_id = $5 AND wrapped IS NOT NULL",
            )
            .bind(b64().encode(again))
            .bind(new.id())
            .bind(&tenant)
            .bind(version)
            .bind(&master_id)
            .execute_in(self, Scope::System)
            .await
            .map_err(db_err)?;
            n += r.rows_affected();
        }
        Ok(n)
    }

    /// How many data keys each master key wraps (master id → live keys), and how many were
    /// shredded.
    pub async fn tenant_key_summary(&self) -> CoreResult<(Vec<(String, i64)>, i64)> {
        let rows = sqlx::query(
            "SELECT master_id, COUNT(*) AS n FROM tenant_keys WHERE wrapped IS NOT NULL \
             GROUP BY master_id ORDER BY master_id",
        )
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.try_get::<String, _>("master_id").map_err(db_err)?,
                r.try_get::<i64, _>("n").map_err(db_err)?,
            ));
        }
        let shredded: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM tenant_keys WHERE wrapped IS NULL")
                .fetch_one_in(self, Scope::System)
                .await
                .map_err(db_err)?;
        Ok((out, shredded))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn master_keys_round_trip_and_are_named_without_revealing_them() {
        let k = MasterKey::generate().unwrap();
        let again = MasterKey::from_hex(&k.to_hex()).unwrap();
        assert_eq!(k.id(), again.id());
        assert_eq!(k.id().len(), 16);
        assert!(!format!("{k:?}").contains(&k.to_hex()));
        assert!(MasterKey::from_hex("zz").is_none());
        assert!(MasterKey::from_hex(&"g".repeat(64)).is_none());
    }

    #[test]
    fn sealed_values_open_only_in_their_place() {
        let key = aead_key(&[7u8; 32]).unwrap();
        let rng = SystemRandom::new();
        let s = seal(&key, &rng, b"here", b"secret text").unwrap();
        assert_eq!(open(&key, b"here", &s).unwrap(), b"secret text");
        assert!(open(&key, b"there", &s).is_none());
        let mut bent = s.clone();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        assert!(open(&key, b"here", &bent).is_none());
        // Two seals of the same text differ (fresh nonces).
        assert_ne!(seal(&key, &rng, b"here", b"secret text").unwrap(), s);
    }
}
