//! `[audit.ship]`: the audit trail delivered to a collector (a SIEM's HTTP input) by the
//! `audit_ship` background job.
//!
//! Each run sends, chain by chain, the links after the collector's cursor (a row of
//! `audit_ship_cursors` per collector and chain) as JSON lines, the lines of `palisade audit
//! export`, one POST per batch. The cursor moves only after a 2xx answer, so delivery is at
//! least once and in chain order: a collector deduplicates by (`chain`, `chain_seq`) or `hash`,
//! and can verify the chain itself. A refused or failed POST fails the job, which the runner
//! retries with back-off; after its last attempt it is a dead letter that an administrator can
//! retry once the collector is back (nothing is lost meanwhile: the trail is in the database).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use palisade_config::{AuditShipConfig, Config};
use palisade_core::jobs::{Job, JobHandler};
use palisade_store::Store;

/// The job kind.
pub const SHIP_JOB: &str = "audit_ship";

/// Batches sent per chain in one run at most (the next run goes on from the cursor).
const MAX_BATCHES_PER_RUN: usize = 200;

pub struct ShipJob {
    store: Store,
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    batch: u32,
    /// The collector's name in the cursor table: derived from its URL, so pointing the
    /// shipping at a new collector delivers the whole trail to it.
    sink: String,
}

impl ShipJob {
    /// The job for `[audit.ship]`, or `None` when no collector is configured.
    pub fn from_config(cfg: &Config, store: &Store) -> anyhow::Result<Option<Arc<ShipJob>>> {
        let c: &AuditShipConfig = &cfg.audit.ship;
        let Some(url) = c.url.clone() else {
            return Ok(None);
        };
        let token = c
            .token
            .as_deref()
            .map(|r| palisade_config::resolve_secret("audit.ship.token", r))
            .transpose()?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(c.timeout_secs))
            .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &c.ca_cert {
            let pem = std::fs::read(ca)
                .with_context(|| format!("reading audit.ship.ca_cert {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default();
            anyhow::ensure!(
                !certs.is_empty(),
                "audit.ship.ca_cert {} holds no PEM certificate",
                ca.display()
            );
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .context("building the audit shipping client")?;
        let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
        let sink = format!("http-{}", hex::encode(&digest.as_ref()[..8]));
        Ok(Some(Arc::new(ShipJob {
            store: store.clone(),
            http,
            url,
            token,
            batch: c.batch,
            sink,
        })))
    }

    /// Sends one batch; the error is what administrators see on the job (no URL, no token).
    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let mut req = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the collector answered {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Err("the collector did not answer in time".into()),
            Err(e) if e.is_connect() => Err("the collector cannot be reached".into()),
            Err(_) => Err("the request to the collector failed".into()),
        }
    }

    /// Delivers what the collector lacks; the number of events sent.
    pub async fn ship(&self) -> Result<u64, String> {
        let storage = |e: palisade_core::CoreError| {
            tracing::error!(error = ?e, "audit shipping: storage error");
            "storage error while reading the audit trail".to_string()
        };
        let cursors = self.store.ship_cursors(&self.sink).await.map_err(storage)?;
        let heads = self.store.audit_heads().await.map_err(storage)?;
        let mut sent = 0u64;
        for (chain, top, _) in heads {
            let mut at = cursors.get(&chain).copied().unwrap_or(0);
            for _ in 0..MAX_BATCHES_PER_RUN {
                if at >= top {
                    break;
                }
                let links = self
                    .store
                    .chain_links_after(&chain, at, self.batch)
                    .await
                    .map_err(storage)?;
                let Some(last) = links.last() else { break };
                let mut body = Vec::with_capacity(links.len() * 512);
                for l in &links {
                    body.extend_from_slice(
                        crate::audit_sink::export_line(l).to_string().as_bytes(),
                    );
                    body.push(b'\n');
                }
                if let Err(e) = self.post(body).await {
                    metrics::counter!("palisade_audit_sink_errors_total", "sink" => "ship")
                        .increment(1);
                    return Err(e);
                }
                self.store
                    .set_ship_cursor(&self.sink, &chain, last.chain_seq, &last.hash)
                    .await
                    .map_err(storage)?;
                at = last.chain_seq;
                sent += links.len() as u64;
                metrics::counter!("palisade_audit_shipped_total").increment(links.len() as u64);
            }
        }
        Ok(sent)
    }
}

#[async_trait]
impl JobHandler for ShipJob {
    fn kind(&self) -> &'static str {
        SHIP_JOB
    }

    async fn run(&self, _job: &Job) -> Result<(), String> {
        let sent = self.ship().await?;
        if sent > 0 {
            tracing::info!(events = sent, "audit trail shipped to the collector");
        }
        Ok(())
    }
}
