//! The tamper-evident audit trail: every event is a link of a hash chain, one chain per tenant
//! (and one, `platform`, for events of no tenant).
//!
//! A link's hash is the HMAC-SHA-256, under the audit key, of its position in its chain, its
//! content and the previous link's hash. Without the key nobody can forge a link, so editing,
//! deleting, inserting or reordering events breaks the chain at the first event touched, and
//! [`ChainVerifier`] names it. (Removing the newest events of a chain leaves a shorter valid
//! chain; signed checkpoints kept elsewhere catch that.)

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

/// The chain of events that belong to no tenant.
pub const PLATFORM_CHAIN: &str = "platform";

/// The `prev_hash` of a chain's first link.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One stored link, as read back for verification (every field exactly as stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditLink {
    /// The tenant's id, or [`PLATFORM_CHAIN`].
    pub chain: String,
    /// Position in the chain, from 1.
    pub chain_seq: i64,
    pub kind: String,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub actor_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// The JSON text of the event's facts, exactly as stored.
    pub detail: String,
    pub created_at: i64,
    pub prev_hash: String,
    pub hash: String,
}

/// A copy of the committed trail outside the database (a JSON-lines file, standard output).
/// It is written after the database commit, in chain order, and an error is a failed sink:
/// the events are in the database, but the requests that wait for them are told.
pub trait AuditMirror: Send + Sync + 'static {
    fn write(&self, links: &[AuditLink]) -> Result<(), String>;
}

/// The audit key (32 random bytes, from the data dir or the configuration).
#[derive(Clone)]
pub struct AuditKey([u8; 32]);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    pub fn new(bytes: [u8; 32]) -> AuditKey {
        AuditKey(bytes)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<AuditKey> {
        let v = hex::decode(s.trim()).ok()?;
        let bytes: [u8; 32] = v.try_into().ok()?;
        Some(AuditKey(bytes))
    }

    /// A fresh random key.
    pub fn generate() -> AuditKey {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        AuditKey(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The hash of `link` (its `hash` field is ignored).
    pub fn link_hash(&self, link: &AuditLink) -> String {
        // A JSON array: every field in a fixed order, unambiguously delimited (compact, as
        // serde_json writes it), written straight into the MAC.
        let content = (
            &link.chain,
            link.chain_seq,
            &link.kind,
            &link.tenant_id,
            &link.user_id,
            &link.actor_id,
            &link.ip,
            &link.user_agent,
            &link.request_id,
            &link.detail,
            link.created_at,
            &link.prev_hash,
        );
        // `Hmac::new_from_slice` accepts keys of any length.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        if serde_json::to_writer(MacWriter(&mut mac), &content).is_err() {
            // Writing into a MAC cannot fail; an empty hash never verifies.
            return String::new();
        }
        crate::hex_lower(&mac.finalize().into_bytes())
    }
}

/// Feeds what is written into a MAC.
struct MacWriter<'a>(&'a mut Hmac<Sha256>);

impl std::io::Write for MacWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where and why a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub chain: String,
    /// The position at which the chain stops being trustworthy.
    pub chain_seq: i64,
    pub reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chain {} is broken at event #{}: {}",
            self.chain, self.chain_seq, self.reason
        )
    }
}

/// Checks links read in (chain, position) order.
#[derive(Debug)]
pub struct ChainVerifier {
    key: AuditKey,
    chain: Option<String>,
    next_seq: i64,
    prev: String,
    /// Links checked.
    pub links: u64,
    /// Chains seen.
    pub chains: u64,
}

impl ChainVerifier {
    pub fn new(key: AuditKey) -> ChainVerifier {
        ChainVerifier {
            key,
            chain: None,
            next_seq: 1,
            prev: GENESIS.to_string(),
            links: 0,
            chains: 0,
        }
    }

    /// Checks the next link.
    pub fn push(&mut self, link: &AuditLink) -> Result<(), Broken> {
        if self.chain.as_deref() != Some(link.chain.as_str()) {
            self.chain = Some(link.chain.clone());
            self.next_seq = 1;
            self.prev = GENESIS.to_string();
            self.chains += 1;
        }
        let broken = |seq: i64, reason: String| Broken {
            chain: link.chain.clone(),
            chain_seq: seq,
            reason,
        };
        if link.chain_seq > self.next_seq {
            return Err(broken(
                self.next_seq,
                format!(
                    "events #{}..#{} are missing (deleted)",
                    self.next_seq,
                    link.chain_seq - 1
                ),
            ));
        }
        if link.chain_seq < self.next_seq {
            return Err(broken(
                link.chain_seq,
                "an event with this position appears again (inserted)".into(),
            ));
        }
        if self.key.link_hash(link) != link.hash {
            return Err(broken(
                link.chain_seq,
                "its content or position does not match its hash (edited, forged or moved)".into(),
            ));
        }
        if link.prev_hash != self.prev {
            return Err(broken(
                link.chain_seq,
                "it does not follow the event before it (reordered or inserted)".into(),
            ));
        }
        self.prev = link.hash.clone();
        self.next_seq += 1;
        self.links += 1;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn chain(key: &AuditKey, n: i64) -> Vec<AuditLink> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|i| {
                let mut l = AuditLink {
                    chain: "t1".into(),
                    chain_seq: i,
                    kind: "login_success".into(),
                    tenant_id: Some("t1".into()),
                    user_id: Some(format!("u{i}")),
                    actor_id: None,
                    ip: Some("127.0.0.1".into()),
                    user_agent: None,
                    request_id: None,
                    detail: "{}".into(),
                    created_at: i,
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                l.hash = key.link_hash(&l);
                prev = l.hash.clone();
                l
            })
            .collect()
    }

    /// The hash is the HMAC of the compact JSON array of the fields: the same bytes as the
    /// first version (a `serde_json::Value` array turned into text), so chains written before
    /// still verify. Pinned by a value computed outside Rust (Python's `hmac`, `json.dumps`
    /// with `separators=(",", ":")`, `ensure_ascii=False`).
    #[test]
    fn link_hash_is_the_hmac_of_the_fields_json_array() {
        let key = AuditKey::new([7u8; 32]);
        let link = AuditLink {
            chain: "t1".into(),
            chain_seq: 42,
            kind: "llm_request".into(),
            tenant_id: Some("t1".into()),
            user_id: Some("u\"1\\".into()),
            actor_id: None,
            ip: Some("2001:db8::1".into()),
            user_agent: Some("Zoë/1.0 (Ünïcode) \n next".into()),
            request_id: None,
            detail: r#"{"model":"stub","n":3}"#.into(),
            created_at: 1_765_000_000_123,
            prev_hash: GENESIS.into(),
            hash: String::new(),
        };
        let old_way = {
            let content = serde_json::json!([
                link.chain,
                link.chain_seq,
                link.kind,
                link.tenant_id,
                link.user_id,
                link.actor_id,
                link.ip,
                link.user_agent,
                link.request_id,
                link.detail,
                link.created_at,
                link.prev_hash,
            ]);
            let mut mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
            mac.update(content.to_string().as_bytes());
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(key.link_hash(&link), old_way);
        assert_eq!(key.link_hash(&link), PINNED);
    }

    const PINNED: &str = "627c79934047de6296a201589d01e867b4bb79c58f44defdd479c1cd4888871a";

    fn verify(key: &AuditKey, links: &[AuditLink]) -> Result<u64, Broken> {
        let mut v = ChainVerifier::new(key.clone());
        for l in links {
            v.push(l)?;
        }
        Ok(v.links)
    }

    #[test]
    fn a_whole_chain_verifies_and_every_tampering_is_found() {
        let key = AuditKey::generate();
        let good = chain(&key, 5);
        assert_eq!(verify(&key, &good), Ok(5));
        // Edited.
        let mut edited = good.clone();
        edited[2].user_id = Some("mallory".into());
        assert_eq!(verify(&key, &edited).unwrap_err().chain_seq, 3);
        // Deleted.
        let mut deleted = good.clone();
        deleted.remove(1);
        let e = verify(&key, &deleted).unwrap_err();
        assert_eq!(e.chain_seq, 2);
        assert!(e.reason.contains("missing"), "{e}");
        // Reordered (positions swapped to look consecutive).
        let mut swapped = good.clone();
        swapped.swap(1, 2);
        swapped[1].chain_seq = 2;
        swapped[2].chain_seq = 3;
        assert_eq!(verify(&key, &swapped).unwrap_err().chain_seq, 2);
        // Inserted without the key.
        let mut inserted = good.clone();
        let mut fake = good[1].clone();
        fake.user_id = Some("ghost".into());
        inserted.insert(2, fake);
        assert_eq!(verify(&key, &inserted).unwrap_err().chain_seq, 2);
        // Another key (a forger's) verifies nothing.
        assert_eq!(
            verify(&AuditKey::generate(), &good).unwrap_err().chain_seq,
            1
        );
        assert!(AuditKey::from_hex(&key.to_hex()).is_some());
        assert!(AuditKey::from_hex("abc").is_none());
    }
}
