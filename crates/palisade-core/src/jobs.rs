//! Background jobs (spec 001's worker, error queue and dead letters): work that must happen
//! even when nobody waits for it, persisted so a restart loses nothing.
//!
//! A job is queued with a kind, a payload and a number of attempts. The runner claims due jobs
//! one at a time (the claim is atomic in the database, so several replicas can run runners),
//! runs the handler of its kind, and on failure schedules the next attempt with exponential
//! back-off (base × 2^(attempt−1), at most an hour). A job that fails its last attempt is a
//! **dead letter**: it stays, with its last error, until an administrator retries it (it is
//! queued again with fresh attempts) or discards it. A job left `running` by a process that
//! died is queued again after [`STALE_AFTER`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::access::{Grant, JobsManage};
use crate::entities::{now_millis, Millis};
use crate::error::{CoreError, CoreResult};
use crate::identity::{SecurityEvent, SecurityEventKind};
use crate::ids::TenantId;
use crate::ports::SecurityEventSink;

/// A job claimed this long ago and still `running` belongs to a dead process.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    /// Failed every attempt: a dead letter.
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "dead" => JobState::Dead,
            _ => return None,
        })
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub tenant_id: Option<TenantId>,
    pub payload: serde_json::Value,
    pub state: JobState,
    /// Attempts made so far.
    pub attempts: u32,
    pub max_attempts: u32,
    /// When it may run (next).
    pub run_at: Millis,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A job to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub kind: String,
    pub tenant_id: Option<TenantId>,
    pub payload: serde_json::Value,
    pub max_attempts: u32,
    pub run_at: Millis,
}

/// Persistence of jobs.
#[async_trait]
pub trait JobRepository: Send + Sync + 'static {
    async fn enqueue(&self, job: &NewJob) -> CoreResult<i64>;
    /// Takes the oldest due queued job (or a stale running one), marks it running and counts
    /// the attempt; `None` when nothing is due.
    async fn claim(&self, now: Millis, stale_before: Millis) -> CoreResult<Option<Job>>;
    async fn complete(&self, id: i64, now: Millis) -> CoreResult<()>;
    /// Records a failed attempt: queued again at `retry_at`, or dead when `None`.
    async fn fail(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
        now: Millis,
    ) -> CoreResult<()>;
    async fn list_jobs(
        &self,
        state: Option<JobState>,
        tenant: Option<TenantId>,
        limit: u32,
    ) -> CoreResult<Vec<Job>>;
    async fn get_job(&self, id: i64) -> CoreResult<Option<Job>>;
    /// A dead job queued again with fresh attempts; `false` when it is not dead.
    async fn retry_job(&self, id: i64, now: Millis) -> CoreResult<bool>;
    /// A dead job removed; `false` when it is not dead.
    async fn discard_job(&self, id: i64) -> CoreResult<bool>;
    /// Whether a job of `kind` is queued or running (for schedules: one at a time).
    async fn pending(&self, kind: &str) -> CoreResult<bool>;
}

/// The work of one kind of job.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// Does the work; an error is retried (its text is shown to administrators: no secrets).
    async fn run(&self, job: &Job) -> Result<(), String>;
}

/// Delay before attempt `attempt + 1`, after `attempt` failures.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    (base * factor).min(Duration::from_secs(3600))
}

/// Claims and runs jobs.
pub struct JobRunner {
    repo: Arc<dyn JobRepository>,
    handlers: HashMap<&'static str, Arc<dyn JobHandler>>,
    backoff_base: Duration,
    events: Option<Arc<dyn SecurityEventSink>>,
}

/// A job event in the audit trail (in its tenant's chain, or the platform's).
fn job_event(kind: SecurityEventKind, job: &Job, extra: serde_json::Value) -> SecurityEvent {
    let mut detail =
        serde_json::json!({ "job_id": job.id, "kind": job.kind, "attempts": job.attempts });
    if let (Some(d), serde_json::Value::Object(m)) = (detail.as_object_mut(), extra) {
        d.extend(m);
    }
    let mut e = SecurityEvent::new(kind).detail(detail);
    e.tenant_id = job.tenant_id;
    e
}

impl JobRunner {
    pub fn new(repo: Arc<dyn JobRepository>, backoff_base: Duration) -> JobRunner {
        JobRunner {
            repo,
            handlers: HashMap::new(),
            backoff_base,
            events: None,
        }
    }

    /// Dead letters are recorded in the audit trail.
    pub fn with_events(mut self, events: Arc<dyn SecurityEventSink>) -> JobRunner {
        self.events = Some(events);
        self
    }

    pub fn handle(mut self, handler: Arc<dyn JobHandler>) -> JobRunner {
        self.handlers.insert(handler.kind(), handler);
        self
    }

    /// Runs one due job, if any: `true` when one ran (whatever its outcome).
    pub async fn run_one(&self) -> CoreResult<bool> {
        let now = now_millis();
        let stale = now - i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX);
        let Some(job) = self.repo.claim(now, stale).await? else {
            return Ok(false);
        };
        let outcome = match self.handlers.get(job.kind.as_str()) {
            Some(h) => h.run(&job).await,
            None => Err(format!("no handler for jobs of kind {:?}", job.kind)),
        };
        let now = now_millis();
        // A kind without a handler is not a label of its own (the table could hold anything).
        let label = if self.handlers.contains_key(job.kind.as_str()) {
            job.kind.as_str()
        } else {
            "unknown"
        };
        match outcome {
            Ok(()) => {
                crate::telemetry::job_attempt(label, "done");
                self.repo.complete(job.id, now).await?
            }
            Err(error) => {
                let retry_at = (job.attempts < job.max_attempts).then(|| {
                    now + i64::try_from(backoff(self.backoff_base, job.attempts).as_millis())
                        .unwrap_or(i64::MAX / 2)
                });
                crate::telemetry::job_attempt(
                    label,
                    if retry_at.is_none() { "dead" } else { "retry" },
                );
                if retry_at.is_none() {
                    tracing::error!(job = job.id, kind = %job.kind, attempts = job.attempts, error = %error, "job failed its last attempt: dead letter");
                    if let Some(events) = &self.events {
                        let e = job_event(
                            SecurityEventKind::JobDeadLettered,
                            &job,
                            serde_json::json!({ "error": error }),
                        );
                        if let Err(err) = events.record(e).await {
                            tracing::error!(error = ?err, "could not record a dead letter");
                        }
                    }
                } else {
                    tracing::warn!(job = job.id, kind = %job.kind, attempts = job.attempts, error = %error, "job failed; will retry");
                }
                self.repo.fail(job.id, &error, retry_at, now).await?;
            }
        }
        Ok(true)
    }

    /// Runs jobs until the process ends: everything due, then a nap of `poll`.
    pub fn spawn(self, poll: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.run_one().await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = ?e, "job runner"),
                }
                tokio::time::sleep(poll).await;
            }
        })
    }
}

/// The administrators' view of jobs (`jobs:manage`): the dead-letter list, retry, discard.
pub struct Jobs {
    repo: Arc<dyn JobRepository>,
    events: Arc<dyn SecurityEventSink>,
}

impl Jobs {
    pub fn new(repo: Arc<dyn JobRepository>, events: Arc<dyn SecurityEventSink>) -> Jobs {
        Jobs { repo, events }
    }

    async fn record(&self, g: &Grant<JobsManage>, kind: SecurityEventKind, job: &Job) {
        let p = g.principal();
        let e = job_event(kind, job, serde_json::Value::Null)
            .actor(p.user_id)
            .client(&p.client);
        if let Err(err) = self.events.record(e).await {
            tracing::error!(error = ?err, "could not record a job change");
        }
    }

    /// Jobs (newest first), of one state or all; tenant administrators see their tenant's.
    pub async fn list(
        &self,
        g: &Grant<JobsManage>,
        state: Option<&str>,
        limit: u32,
    ) -> CoreResult<Vec<Job>> {
        let state = match state {
            Some(s) => Some(JobState::parse(s).ok_or_else(|| {
                CoreError::validation(
                    "invalid_state",
                    "state is one of queued, running, done, dead",
                )
            })?),
            None => None,
        };
        let p = g.principal();
        let tenant = (!p.is_platform_admin()).then_some(p.tenant_id);
        self.repo
            .list_jobs(state, tenant, limit.clamp(1, 500))
            .await
    }

    async fn visible(&self, g: &Grant<JobsManage>, id: i64) -> CoreResult<Job> {
        let job = self
            .repo
            .get_job(id)
            .await?
            .ok_or(CoreError::NotFound("job"))?;
        let p = g.principal();
        if !p.is_platform_admin() && job.tenant_id != Some(p.tenant_id) {
            return Err(CoreError::NotFound("job"));
        }
        Ok(job)
    }

    /// Queues a dead letter again with fresh attempts.
    pub async fn retry(&self, g: &Grant<JobsManage>, id: i64) -> CoreResult<Job> {
        let job = self.visible(g, id).await?;
        if !self.repo.retry_job(id, now_millis()).await? {
            return Err(CoreError::Conflict("only a dead job can be retried".into()));
        }
        self.record(g, SecurityEventKind::JobRetried, &job).await;
        self.visible(g, id).await
    }

    /// Removes a dead letter.
    pub async fn discard(&self, g: &Grant<JobsManage>, id: i64) -> CoreResult<()> {
        let job = self.visible(g, id).await?;
        if !self.repo.discard_job(id).await? {
            return Err(CoreError::Conflict(
                "only a dead job can be discarded".into(),
            ));
        }
        self.record(g, SecurityEventKind::JobDiscarded, &job).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_secs(2);
        assert_eq!(backoff(b, 1), Duration::from_secs(2));
        assert_eq!(backoff(b, 2), Duration::from_secs(4));
        assert_eq!(backoff(b, 3), Duration::from_secs(8));
        assert_eq!(backoff(b, 40), Duration::from_secs(3600));
        assert_eq!(JobState::parse("dead"), Some(JobState::Dead));
        assert_eq!(JobState::parse("x"), None);
    }
}
