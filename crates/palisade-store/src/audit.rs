//! The audit trail: `security_events` as hash chains, one per tenant.
//!
//! Events are appended in batches (group commit), each batch all or none. On SQLite the
//! process remembers each chain's newest link and a batch is one multi-row INSERT, written in
//! the process's turn; on PostgreSQL a transaction holding an advisory lock reads the heads and
//! inserts. Either way the unique index on (chain, position) refuses a second writer's copy
//! (another process on the same file), which then retries. Triggers refuse `UPDATE` and
//! `DELETE`: the product offers no way to change the trail, and a change made behind its back is
//! found by [`Store::verify_audit`].

use palisade_core::audit::{AuditKey, AuditLink, Broken, ChainVerifier, GENESIS, PLATFORM_CHAIN};
use palisade_core::identity::SecurityEvent;
use palisade_core::{CoreError, CoreResult};
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::{db_err, Run, RunScalar, Scope, Store};

/// The most events one batch (one INSERT statement) holds: [`LINK_COL_COUNT`] parameters each,
/// 13,000 in all, below the limits of SQLite (32,766) and PostgreSQL (65,535).
pub(crate) const MAX_BATCH: usize = 1000;

/// The columns of [`LINK_COLS`].
const LINK_COL_COUNT: usize = 13;

const LINK_COLS: &str = "chain, chain_seq, kind, tenant_id, user_id, actor_id, ip, user_agent, \
                         request_id, detail, created_at, prev_hash, hash";

fn link_from(row: &AnyRow) -> CoreResult<AuditLink> {
    Ok(AuditLink {
        chain: row.try_get("chain").map_err(db_err)?,
        chain_seq: row.try_get("chain_seq").map_err(db_err)?,
        kind: row.try_get("kind").map_err(db_err)?,
        tenant_id: row.try_get("tenant_id").map_err(db_err)?,
        user_id: row.try_get("user_id").map_err(db_err)?,
        actor_id: row.try_get("actor_id").map_err(db_err)?,
        ip: row.try_get("ip").map_err(db_err)?,
        user_agent: row.try_get("user_agent").map_err(db_err)?,
        request_id: row.try_get("request_id").map_err(db_err)?,
        detail: row.try_get("detail").map_err(db_err)?,
        created_at: row.try_get("created_at").map_err(db_err)?,
        prev_hash: row.try_get("prev_hash").map_err(db_err)?,
        hash: row.try_get("hash").map_err(db_err)?,
    })
}

/// The newest link of a chain (`$1`).
const CHAIN_HEAD: &str = "SELECT chain_seq, hash FROM security_events WHERE chain = $1 \
     ORDER BY chain_seq DESC LIMIT 1";

/// The newest link of `chain`: (position, hash), or (0, genesis) for a chain not begun.
async fn chain_head(conn: &mut sqlx::AnyConnection, chain: &str) -> CoreResult<(i64, String)> {
    let last = sqlx::query(CHAIN_HEAD)
        .bind(chain)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    match last {
        Some(row) => Ok((
            row.try_get::<i64, _>("chain_seq").map_err(db_err)?,
            row.try_get::<String, _>("hash").map_err(db_err)?,
        )),
        None => Ok((0, GENESIS.to_string())),
    }
}

/// The SQLite INSERT of a batch given as one JSON array of rows, each an array of the columns
/// of [`LINK_COLS`] in order, inserted in the array's order.
const SQLITE_INSERT_JSON: &str = "INSERT INTO security_events (chain, chain_seq, kind, \
     tenant_id, user_id, actor_id, ip, user_agent, request_id, detail, created_at, prev_hash, \
     hash) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
     value ->> 6, value ->> 7, value ->> 8, value ->> 9, value ->> 10, value ->> 11, \
     value ->> 12 FROM json_each($1) ORDER BY key";

/// The INSERT of one link on the SQLite file's own connection (`direct.rs`): [`insert_sql`] of
/// one row, made once (SQLite numbers `$1` … `$13` in order, so they bind by position).
static SQLITE_INSERT_ROW: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| insert_sql(1));

/// The INSERT of `n` links (at most [`MAX_BATCH`]) in one statement: a statement is a round
/// trip to the database (or its worker thread), and under load a batch holds dozens.
fn insert_sql(n: usize) -> String {
    let mut sql = format!("INSERT INTO security_events ({LINK_COLS}) VALUES ");
    crate::db::push_value_rows(&mut sql, n, LINK_COL_COUNT);
    sql
}

/// A batch as the one JSON parameter of [`SQLITE_INSERT_JSON`]: the statement never changes, so
/// SQLite prepares it once per connection, and binding one value costs the same for one event
/// as for a thousand (sqlx looks up the name of every `$N` it binds).
fn batch_json(links: &[AuditLink]) -> CoreResult<String> {
    let rows = links
        .iter()
        .map(|l| {
            (
                &l.chain,
                l.chain_seq,
                &l.kind,
                &l.tenant_id,
                &l.user_id,
                &l.actor_id,
                &l.ip,
                &l.user_agent,
                &l.request_id,
                &l.detail,
                l.created_at,
                &l.prev_hash,
                &l.hash,
            )
        })
        .collect::<Vec<_>>();
    serde_json::to_string(&rows).map_err(|e| CoreError::Internal(format!("audit batch: {e}")))
}

/// Runs `sql` (from [`insert_sql`]) with the columns of `links` on `exec`.
async fn insert_links<'e, E>(exec: E, sql: &str, links: &[AuditLink]) -> CoreResult<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let mut q = sqlx::query(sql);
    for link in links {
        q = q
            .bind(&link.chain)
            .bind(link.chain_seq)
            .bind(&link.kind)
            .bind(&link.tenant_id)
            .bind(&link.user_id)
            .bind(&link.actor_id)
            .bind(&link.ip)
            .bind(&link.user_agent)
            .bind(&link.request_id)
            .bind(&link.detail)
            .bind(link.created_at)
            .bind(&link.prev_hash)
            .bind(&link.hash);
    }
    q.execute(exec).await.map_err(db_err)?;
    Ok(())
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Links checked and found sound.
    pub links: u64,
    pub chains: u64,
    /// Events written before the trail was chained (not covered).
    pub unchained: u64,
    /// The first broken link, if any.
    pub broken: Option<Broken>,
}

/// How often the flusher of a busy queue steps back behind the ready tasks before it drains
/// (`batch::Batcher::yielding_when_busy`). Each step lets the tasks woken meanwhile queue
/// their events too; measured side by side at c=64 (bench/README.md, session 32): one step
/// 2.6–2.7 events a commit, two 3.0–3.1 and +3% req/s, low load unchanged.
pub(crate) const BUSY_YIELDS: usize = 2;

/// An event waiting for the writer, and who waits for its link.
pub(crate) struct Pending {
    event: SecurityEvent,
    done: tokio::sync::oneshot::Sender<CoreResult<AuditLink>>,
}

fn chain_of(e: &SecurityEvent) -> String {
    e.tenant_id
        .map(|t| t.to_string())
        .unwrap_or_else(|| PLATFORM_CHAIN.to_string())
}

/// The detail of a storage error, for the log (never shown to a client).
fn detail(e: &CoreError) -> String {
    match e {
        CoreError::Storage(d)
        | CoreError::StorageUnavailable(d)
        | CoreError::Internal(d)
        | CoreError::AuditUnavailable(d) => d.clone(),
        other => other.to_string(),
    }
}

impl Store {
    /// Appends `e` as the next link of its tenant's chain and returns the link once it is
    /// committed and copied to the mirror (file, stdout).
    ///
    /// Events that arrive while a batch is being written wait and go together in the next
    /// transaction (group commit): under load one commit serves many requests. The write runs
    /// in a task of its own, so a caller that stops waiting (a client gone) never leaves a
    /// batch half done.
    pub(crate) async fn append_event(&self, e: SecurityEvent) -> CoreResult<AuditLink> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let start = self
            .audit
            .queue
            .push(Pending { event: e, done })
            .map_err(|_| CoreError::AuditUnavailable("audit queue poisoned".into()))?;
        // Under load (the last batch gathered more than one caller) a flusher task writes,
        // after letting the tasks ready to run queue their events (`BUSY_YIELDS`): ~3 events
        // a commit at concurrency 64 instead of ~1.8 (bench/README.md). At low load the caller
        // writes at once, in its own task.
        if start && (self.audit.queue.busy() || !self.flush_audit_here()) {
            let store = self.clone();
            tokio::spawn(async move { store.flush_audit().await });
        }
        wait.await
            .map_err(|_| CoreError::AuditUnavailable("the audit writer stopped".into()))?
    }

    /// Writes what has gathered right here, in the caller's task, when nothing needs waiting
    /// for: a SQLite file with its own writer (`direct.rs`), no mirror to copy to, and the
    /// writers' turn free. No `.await` lies between taking a batch and answering it, so the
    /// caller cannot be cancelled halfway. `false` when a flusher task must do it. (A task
    /// per batch cost a spawn and a wake-up of the other core per request at low load.)
    fn flush_audit_here(&self) -> bool {
        let Some(writer) = self.direct.as_deref() else {
            return false;
        };
        if self.audit.mirror.get().is_some() {
            return false;
        }
        let Ok(_turn) = self.write_gate.try_lock() else {
            return false;
        };
        self.audit.queue.drain_now(|batch| {
            let written = self.write_direct(writer, &batch);
            self.answer_batch(batch, written);
        });
        true
    }

    /// The audit flusher: writes what has gathered, batch after batch, until none is left (one
    /// flusher per process at a time, see `batch.rs`).
    async fn flush_audit(&self) {
        self.audit
            .queue
            .drain(|batch| self.flush_audit_batch(batch))
            .await;
    }

    /// Writes one batch and answers everyone waiting in it.
    async fn flush_audit_batch(&self, batch: Vec<Pending>) {
        let events: Vec<&SecurityEvent> = batch.iter().map(|p| &p.event).collect();
        let mut attempt = 0;
        let written = loop {
            attempt += 1;
            match self.write_batch(&events).await {
                Ok(links) => break Ok(links),
                // Another process appending to the same file takes a position first: the
                // unique index refuses ours and the batch is chained again. An outage is not
                // retried here: the pool already waited its acquire timeout, and the requests
                // behind this batch should get their 503 now rather than after five more.
                Err(err) if attempt < 5 && !matches!(err, CoreError::StorageUnavailable(_)) => {
                    tracing::debug!(error = %detail(&err), attempt, "audit append retried");
                    tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                }
                Err(err) => {
                    sink_error("database");
                    break Err(format!("database: {}", detail(&err)));
                }
            }
        };
        let result = match written {
            Ok(links) => match self.audit.mirror.get() {
                None => Ok(links),
                Some(mirror) => {
                    let mirror = mirror.clone();
                    let copy = links.clone();
                    match tokio::task::spawn_blocking(move || mirror.write(&copy)).await {
                        Ok(Ok(())) => Ok(links),
                        Ok(Err(e)) => {
                            sink_error("mirror");
                            Err(format!("audit sink: {e}"))
                        }
                        Err(e) => {
                            sink_error("mirror");
                            Err(format!("audit sink: {e}"))
                        }
                    }
                }
            },
            Err(e) => Err(e),
        };
        self.answer_batch(batch, result);
    }

    /// Answers everyone waiting in `batch` with its link, or with the error.
    fn answer_batch(&self, batch: Vec<Pending>, result: Result<Vec<AuditLink>, String>) {
        match result {
            Ok(links) => {
                metrics::counter!("palisade_audit_events_total").increment(links.len() as u64);
                for (p, link) in batch.into_iter().zip(links) {
                    let _ = p.done.send(Ok(link));
                }
            }
            Err(why) => {
                tracing::error!(error = %why, events = batch.len(), "audit trail write failed");
                for p in batch {
                    let _ = p.done.send(Err(CoreError::AuditUnavailable(why.clone())));
                }
            }
        }
    }

    /// Writes `batch` on the SQLite file's own connection, chaining it again (heads read
    /// afresh) when another process appended first: the error text, for the log and the
    /// waiting requests, when five tries failed.
    fn write_direct(
        &self,
        writer: &crate::direct::DirectWriter,
        batch: &[Pending],
    ) -> Result<Vec<AuditLink>, String> {
        let events: Vec<&SecurityEvent> = batch.iter().map(|p| &p.event).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let _timed = crate::timed("audit_append");
            match self.write_batch_direct(writer, &events) {
                Ok(links) => return Ok(links),
                Err(err) if attempt < 5 => {
                    tracing::debug!(error = %detail(&err), attempt, "audit append retried");
                }
                Err(err) => {
                    sink_error("database");
                    return Err(format!("database: {}", detail(&err)));
                }
            }
        }
    }

    /// Chains `events` after their chains' newest links and inserts them, all or none.
    ///
    /// On SQLite the process writes in turns (the write gate) and remembers each chain's head,
    /// so a batch is one statement: a multi-row INSERT is atomic on its own, and the unique
    /// index on (chain, position) refuses it if another process appended to a chain since
    /// (the heads are then forgotten, read again, and the batch chained anew). On PostgreSQL,
    /// where replicas take turns, the heads are read inside a transaction that holds the
    /// chain's advisory lock.
    async fn write_batch(&self, events: &[&SecurityEvent]) -> CoreResult<Vec<AuditLink>> {
        let _timed = crate::timed("audit_append");
        if self.backend == crate::Backend::Sqlite {
            let _turn = self.write_gate.lock().await;
            return self.write_batch_sqlite(events).await;
        }
        let mut tx = self.begin_exclusive().await?;
        let mut heads = std::collections::HashMap::new();
        for e in events {
            if let std::collections::hash_map::Entry::Vacant(slot) = heads.entry(chain_of(e)) {
                let head = chain_head(&mut tx, slot.key()).await?;
                slot.insert(head);
            }
        }
        let links = self.chain_links(events, &mut heads);
        insert_links(&mut *tx, &insert_sql(links.len()), &links).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(links)
    }

    /// [`Store::write_batch`] on SQLite, under the writers' turn. The remembered heads are
    /// taken out for the batch and put back only once it is written: a failed write leaves
    /// none, and the next batch reads them again.
    async fn write_batch_sqlite(&self, events: &[&SecurityEvent]) -> CoreResult<Vec<AuditLink>> {
        if let Some(writer) = self.direct.as_deref() {
            return self.write_batch_direct(writer, events);
        }
        let mut heads = self.take_heads();
        for e in events {
            if let std::collections::hash_map::Entry::Vacant(slot) = heads.entry(chain_of(e)) {
                let mut conn = self.pool.acquire().await.map_err(db_err)?;
                let head = chain_head(&mut conn, slot.key()).await?;
                slot.insert(head);
            }
        }
        let links = self.chain_links(events, &mut heads);
        sqlx::query(SQLITE_INSERT_JSON)
            .bind(batch_json(&links)?)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        self.put_heads(heads);
        Ok(links)
    }

    /// [`Store::write_batch_sqlite`] on the file's own connection (`direct.rs`): no `.await`.
    fn write_batch_direct(
        &self,
        writer: &crate::direct::DirectWriter,
        events: &[&SecurityEvent],
    ) -> CoreResult<Vec<AuditLink>> {
        let mut heads = self.take_heads();
        for e in events {
            if let std::collections::hash_map::Entry::Vacant(slot) = heads.entry(chain_of(e)) {
                let head = writer
                    .query_opt(CHAIN_HEAD, [slot.key()], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                    })?
                    .unwrap_or_else(|| (0, GENESIS.to_string()));
                slot.insert(head);
            }
        }
        let links = self.chain_links(events, &mut heads);
        // One transaction of single-row INSERTs with positional parameters: on this
        // connection a statement is a function call, not a round trip, and binding a value
        // by position is cheap. (The one-statement JSON batch of the sqlx path had SQLite
        // re-parse each event's JSON row once per column: ~140,000 instructions an event,
        // callgrind, `bench/run --scenario gateway-instructions`.)
        writer.in_transaction(|tx| {
            let mut insert = tx.prepare_cached(&SQLITE_INSERT_ROW)?;
            for l in &links {
                insert.execute(rusqlite::params![
                    l.chain,
                    l.chain_seq,
                    l.kind,
                    l.tenant_id,
                    l.user_id,
                    l.actor_id,
                    l.ip,
                    l.user_agent,
                    l.request_id,
                    l.detail,
                    l.created_at,
                    l.prev_hash,
                    l.hash,
                ])?;
            }
            Ok(())
        })?;
        self.put_heads(heads);
        Ok(links)
    }

    /// The remembered chain heads, taken out for a batch: a batch that fails leaves none, and
    /// the next one reads them again.
    fn take_heads(&self) -> std::collections::HashMap<String, (i64, String)> {
        self.audit
            .heads
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default()
    }

    /// Remembers the heads after a written batch.
    fn put_heads(&self, heads: std::collections::HashMap<String, (i64, String)>) {
        if let Ok(mut cached) = self.audit.heads.lock() {
            *cached = heads;
        }
    }

    /// The links of `events`, each chained after the head of its chain in `heads` (which
    /// then holds the new heads).
    fn chain_links(
        &self,
        events: &[&SecurityEvent],
        heads: &mut std::collections::HashMap<String, (i64, String)>,
    ) -> Vec<AuditLink> {
        let mut links = Vec::with_capacity(events.len());
        for e in events {
            let chain = chain_of(e);
            let (last_seq, prev_hash) = heads
                .get(&chain)
                .cloned()
                .unwrap_or_else(|| (0, GENESIS.to_string()));
            let mut link = AuditLink {
                chain: chain.clone(),
                chain_seq: last_seq + 1,
                kind: e.kind.as_str().to_string(),
                tenant_id: e.tenant_id.map(|t| t.to_string()),
                user_id: e.user_id.map(|u| u.to_string()),
                actor_id: e.actor_id.map(|u| u.to_string()),
                ip: e.ip.clone(),
                user_agent: e.user_agent.clone(),
                request_id: e.request_id.clone(),
                // Straight into bytes: `Value`'s `Display` writes the same text through the
                // formatting machinery, at about twice the instructions.
                detail: serde_json::to_string(&e.detail).unwrap_or_else(|_| e.detail.to_string()),
                created_at: e.created_at,
                prev_hash,
                hash: String::new(),
            };
            link.hash = self.audit.key.link_hash(&link);
            heads.insert(chain, (link.chain_seq, link.hash.clone()));
            links.push(link);
        }
        links
    }

    /// Up to `limit` links after (`chain`, `chain_seq`), in chain order.
    pub async fn audit_links(
        &self,
        after: Option<(&str, i64)>,
        limit: u32,
    ) -> CoreResult<Vec<AuditLink>> {
        let (chain, seq) = after.unwrap_or(("", 0));
        let rows = sqlx::query(&format!(
            "SELECT {LINK_COLS} FROM security_events WHERE chain IS NOT NULL \
             AND (chain > $1 OR (chain = $2 AND chain_seq > $3)) \
             ORDER BY chain, chain_seq LIMIT $4"
        ))
        .bind(chain)
        .bind(chain)
        .bind(seq)
        .bind(i64::from(limit))
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        rows.iter().map(link_from).collect()
    }

    /// Checks every chain with `key` (the server's audit key), page by page.
    pub async fn verify_audit(&self, key: &AuditKey) -> CoreResult<AuditReport> {
        let unchained: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM security_events WHERE chain IS NULL")
                .fetch_one_in(self, Scope::System)
                .await
                .map_err(db_err)?;
        let mut v = ChainVerifier::new(key.clone());
        let mut after: Option<(String, i64)> = None;
        let mut broken = None;
        'pages: loop {
            let page = self
                .audit_links(after.as_ref().map(|(c, s)| (c.as_str(), *s)), 1000)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some((last.chain.clone(), last.chain_seq));
            for link in &page {
                if let Err(b) = v.push(link) {
                    broken = Some(b);
                    break 'pages;
                }
            }
        }
        Ok(AuditReport {
            links: v.links,
            chains: v.chains,
            unchained: u64::try_from(unchained).unwrap_or(0),
            broken,
        })
    }
}

impl Store {
    /// The newest link of every chain: (chain, position, hash), in chain order.
    pub async fn audit_heads(&self) -> CoreResult<Vec<(String, i64, String)>> {
        let rows = sqlx::query(
            "SELECT e.chain, e.chain_seq, e.hash FROM security_events e \
             JOIN (SELECT chain, MAX(chain_seq) AS top FROM security_events \
                   WHERE chain IS NOT NULL GROUP BY chain) h \
             ON e.chain = h.chain AND e.chain_seq = h.top ORDER BY e.chain",
        )
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("chain").map_err(db_err)?,
                    r.try_get("chain_seq").map_err(db_err)?,
                    r.try_get("hash").map_err(db_err)?,
                ))
            })
            .collect()
    }

    /// The link at (`chain`, `chain_seq`).
    pub async fn audit_link(&self, chain: &str, chain_seq: i64) -> CoreResult<Option<AuditLink>> {
        let row = sqlx::query(&format!(
            "SELECT {LINK_COLS} FROM security_events WHERE chain = $1 AND chain_seq = $2"
        ))
        .bind(chain)
        .bind(chain_seq)
        .fetch_optional_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        row.as_ref().map(link_from).transpose()
    }

    /// Up to `limit` links written at or after `since_ms`, in the order they were written,
    /// after the row `after` (0: from the start): (row, link) for paging.
    pub async fn audit_export(
        &self,
        since_ms: i64,
        after: i64,
        limit: u32,
    ) -> CoreResult<Vec<(i64, AuditLink)>> {
        let after = if self.backend == crate::Backend::Sqlite {
            after.max(self.audit_export_start(since_ms).await? - 1)
        } else {
            after
        };
        let rows = sqlx::query(&format!(
            "SELECT seq, {LINK_COLS} FROM security_events \
             WHERE chain IS NOT NULL AND created_at >= $1 AND seq > $2 ORDER BY seq LIMIT $3"
        ))
        .bind(since_ms)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq").map_err(db_err)?, link_from(r)?)))
            .collect()
    }

    /// SQLite: the first position an export `since_ms` can start from. The appended table has
    /// no `created_at` index (migration 0018); the search table's time index gives the first
    /// copied event at or after `since_ms` or, when none is, the first event not copied yet.
    /// The search table holds every event up to its newest, so no event at or after `since_ms`
    /// lies before that position, whatever order the clock gave their times.
    async fn audit_export_start(&self, since_ms: i64) -> CoreResult<i64> {
        let search = self.search_table();
        sqlx::query_scalar(&format!(
            "SELECT COALESCE((SELECT MIN(seq) FROM {search} WHERE created_at >= $1), \
                             (SELECT COALESCE(MAX(seq), 0) + 1 FROM {search}))"
        ))
        .bind(since_ms)
        .fetch_one_in(self, Scope::System)
        .await
        .map_err(db_err)
    }
}

impl Store {
    /// How far delivery to the collector `sink` has come: chain -> last delivered position.
    pub async fn ship_cursors(
        &self,
        sink: &str,
    ) -> CoreResult<std::collections::BTreeMap<String, i64>> {
        let rows = sqlx::query("SELECT chain, chain_seq FROM audit_ship_cursors WHERE sink = $1")
            .bind(sink)
            .fetch_all_in(self, Scope::System)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("chain").map_err(db_err)?,
                    r.try_get("chain_seq").map_err(db_err)?,
                ))
            })
            .collect()
    }

    /// Records that `sink` holds every link of `chain` up to `chain_seq` (whose hash is
    /// `hash`).
    pub async fn set_ship_cursor(
        &self,
        sink: &str,
        chain: &str,
        chain_seq: i64,
        hash: &str,
    ) -> CoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_ship_cursors (sink, chain, chain_seq, hash, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sink, chain) DO UPDATE SET \
             chain_seq = excluded.chain_seq, hash = excluded.hash, updated_at = excluded.updated_at",
        )
        .bind(sink)
        .bind(chain)
        .bind(chain_seq)
        .bind(hash)
        .bind(palisade_core::entities::now_millis())
        .execute_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Up to `limit` links of `chain` after position `after`, in chain order.
    pub async fn chain_links_after(
        &self,
        chain: &str,
        after: i64,
        limit: u32,
    ) -> CoreResult<Vec<AuditLink>> {
        let rows = sqlx::query(&format!(
            "SELECT {LINK_COLS} FROM security_events WHERE chain = $1 AND chain_seq > $2 \
             ORDER BY chain_seq LIMIT $3"
        ))
        .bind(chain)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all_in(self, Scope::System)
        .await
        .map_err(db_err)?;
        rows.iter().map(link_from).collect()
    }
}

/// A batch the trail could not record: `database` or `mirror` (the file and stdout copies).
fn sink_error(sink: &'static str) {
    metrics::counter!("palisade_audit_sink_errors_total", "sink" => sink).increment(1);
}
