//! Hot reads: a short-lived copy, in this process, of the rows every authenticated request
//! reads (the user, the API key, the login session, the tenant).
//!
//! Without it each API call reads two or three rows before doing its work; on PostgreSQL
//! that is two round trips each, and at 1,000 requests/s the lookups cost more than the work.
//!
//! Correctness rests on one generation counter:
//! - every write of these tables through this store (any method, any connection) bumps the
//!   generation before it starts and again after its statements have run, committed or not
//!   ([`Invalidate`]);
//! - a copy remembers the generation taken *before* its row was read, and is used only while
//!   the generation is unchanged ([`Shelf::read`] keeps that order).
//!
//! So a change made through this process is seen by the next request, however it raced with
//! readers. A change made elsewhere (another replica, `palisade admin` on the same SQLite file)
//! is seen once the copy has expired: [`HOT_TTL`] bounds how stale a copy can be. Only rows
//! that exist are kept (a key created on another replica is usable at once), and the number of
//! copies is bounded.

use std::borrow::Borrow;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade_core::entities::User;
use palisade_core::identity::{ApiKey, AuthSession, Tenant};
use palisade_core::ids::{TenantId, TokenFamilyId, UserId};
use palisade_core::CoreResult;

/// How long a copy is used before the row is read again: the longest a change made by another
/// replica or process takes to be seen here (a disabled user, a revoked key or session).
pub const HOT_TTL: Duration = Duration::from_millis(500);

/// At most this many copies of each kind of row.
const CAPACITY: u64 = 20_000;

#[derive(Clone)]
struct Copy<V> {
    generation: u64,
    value: V,
}

/// Copies of one kind of row.
pub(crate) struct Shelf<K, V> {
    copies: moka::sync::Cache<K, Copy<V>>,
}

impl<K, V> Shelf<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(ttl: Duration) -> Shelf<K, V> {
        Shelf {
            copies: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The copy of `key`, when it was read in the current generation and has not expired.
    fn get<Q>(&self, hot: &HotReads, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let copy = self.copies.get(key)?;
        (copy.generation == hot.generation()).then_some(copy.value)
    }

    /// Keeps `value`, read after `generation` was taken.
    fn put(&self, generation: u64, key: K, value: V) {
        self.copies.insert(key, Copy { generation, value });
    }

    /// The row of `key`: the current copy, or what `load` reads (kept when it exists).
    pub(crate) async fn read<Q, F>(&self, hot: &HotReads, key: &Q, load: F) -> CoreResult<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        F: Future<Output = CoreResult<Option<V>>>,
    {
        // Taken before the row is read: a write that lands meanwhile makes the copy stale.
        let generation = hot.generation();
        if let Some(v) = self.get(hot, key) {
            return Ok(Some(v));
        }
        let row = load.await?;
        if let Some(v) = &row {
            self.put(generation, key.to_owned(), v.clone());
        }
        Ok(row)
    }
}

/// The copies and their generation (one per store, shared by its clones).
pub(crate) struct HotReads {
    generation: AtomicU64,
    pub(crate) users: Shelf<(TenantId, UserId), User>,
    pub(crate) keys: Shelf<String, ApiKey>,
    pub(crate) sessions: Shelf<TokenFamilyId, AuthSession>,
    pub(crate) tenants: Shelf<TenantId, Tenant>,
}

impl HotReads {
    pub(crate) fn new(ttl: Duration) -> HotReads {
        HotReads {
            generation: AtomicU64::new(0),
            users: Shelf::new(ttl),
            keys: Shelf::new(ttl),
            sessions: Shelf::new(ttl),
            tenants: Shelf::new(ttl),
        }
    }

    /// The current generation: take it before reading a row that will be kept.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets every copy: called after every write of a row kept here.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Bumps the generation when made and again when dropped: copies taken before the write are
/// not used inside it (a write method that reads its row back), and every way out of the
/// write (errors included) invalidates the copies made meanwhile.
pub(crate) struct Invalidate<'a>(&'a HotReads);

impl Invalidate<'_> {
    pub(crate) fn new(hot: &HotReads) -> Invalidate<'_> {
        hot.invalidate();
        Invalidate(hot)
    }
}

impl Drop for Invalidate<'_> {
    fn drop(&mut self) {
        self.0.invalidate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_used_only_in_its_generation() {
        let hot = HotReads::new(Duration::from_secs(60));
        let g = hot.generation();
        let t = sample_tenant();
        let id = t.id;
        hot.tenants.put(g, id, t.clone());
        assert_eq!(hot.tenants.get(&hot, &id), Some(t));
        hot.invalidate();
        assert_eq!(hot.tenants.get(&hot, &id), None);
    }

    #[test]
    fn a_row_read_before_a_write_is_not_kept_as_current() {
        let hot = HotReads::new(Duration::from_secs(60));
        let t = sample_tenant();
        let id = t.id;
        // A reader takes the generation, then a write lands before the reader stores its row.
        let g = hot.generation();
        {
            let _w = Invalidate::new(&hot);
        }
        hot.tenants.put(g, id, t);
        assert_eq!(hot.tenants.get(&hot, &id), None);
    }

    #[tokio::test]
    async fn read_keeps_a_row_only_when_no_write_landed_while_it_was_read() {
        let hot = HotReads::new(Duration::from_secs(60));
        let t = sample_tenant();
        let id = t.id;
        let racing = async {
            hot.invalidate();
            Ok(Some(t.clone()))
        };
        assert_eq!(
            hot.tenants.read(&hot, &id, racing).await.ok(),
            Some(Some(t.clone()))
        );
        assert_eq!(hot.tenants.get(&hot, &id), None);

        let quiet = async { Ok(Some(t.clone())) };
        assert_eq!(
            hot.tenants.read(&hot, &id, quiet).await.ok(),
            Some(Some(t.clone()))
        );
        // Served from the copy: the load is not run.
        let refused = async { Err(palisade_core::CoreError::Internal("loaded".into())) };
        assert_eq!(
            hot.tenants.read(&hot, &id, refused).await.ok(),
            Some(Some(t))
        );
    }

    #[test]
    fn copies_expire() {
        let hot = HotReads::new(Duration::from_millis(50));
        let t = sample_tenant();
        let id = t.id;
        hot.tenants.put(hot.generation(), id, t);
        assert!(hot.tenants.get(&hot, &id).is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(hot.tenants.get(&hot, &id), None);
    }

    fn sample_tenant() -> Tenant {
        Tenant {
            id: TenantId::new(),
            name: "acme".into(),
            is_active: true,
            created_at: 0,
        }
    }
}
