//! Conversation titles on a real database: the chat service with a title model, the job
//! runner and the store. A runner (on this replica or another) may claim the title job the
//! moment it is queued; the first message must already be there for it to title.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use palisade_core::chat::{ChatEvent, ChatInput, ChatPolicy, ChatService, TitleJob};
use palisade_core::entities::Millis;
use palisade_core::ids::{SessionId, TenantId, DEFAULT_TENANT};
use palisade_core::jobs::{Job, JobRepository, JobRunner, JobState, NewJob};
use palisade_core::ports::ChatRepository;
use palisade_core::provider::{
    ChatProvider, FinishReason, GenerationEvent, GenerationRequest, GenerationStream, ModelInfo,
    ProviderError, Role, Usage,
};
use palisade_core::CoreResult;
use palisade_store::Store;

/// A model that answers a title request with a title and anything else with "Sure.".
struct Titler;

#[async_trait]
impl ChatProvider for Titler {
    fn models(&self) -> Vec<ModelInfo> {
        Vec::new()
    }

    async fn generate(&self, req: GenerationRequest) -> Result<GenerationStream, ProviderError> {
        let asked_for_title = req
            .messages
            .iter()
            .any(|m| m.role == Role::User && m.content.starts_with("Title this conversation:"));
        let text = if asked_for_title {
            "\"Lisbon Trip Plans\""
        } else {
            "Sure."
        };
        Ok(Box::pin(futures::stream::iter(vec![
            Ok(GenerationEvent::Text(text.into())),
            Ok(GenerationEvent::Done {
                finish_reason: FinishReason::Stop,
                usage: Usage::default(),
                truncated_turns: 0,
            }),
        ])))
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// The store's job queue, with a runner that claims each job the moment it is queued (as an
/// idle runner polling often would), and a record of what the session held at that moment.
struct EagerQueue {
    store: Store,
    runner: OnceLock<JobRunner>,
    messages_at_enqueue: Mutex<Vec<usize>>,
}

#[async_trait]
impl JobRepository for EagerQueue {
    async fn enqueue(&self, job: &NewJob) -> CoreResult<i64> {
        let id = self.store.enqueue(job).await?;
        if let (Some(t), Some(sid)) = (job.tenant_id, job.payload["session_id"].as_str()) {
            let sid: SessionId = sid.parse()?;
            let (held, _) = self.store.list_messages(t, sid, None, 20).await?;
            self.messages_at_enqueue.lock().unwrap().push(held.len());
        }
        if let Some(runner) = self.runner.get() {
            assert!(runner.run_one().await?, "the queued job was due");
        }
        Ok(id)
    }
    async fn claim(&self, now: Millis, stale_before: Millis) -> CoreResult<Option<Job>> {
        self.store.claim(now, stale_before).await
    }
    async fn complete(&self, id: i64, now: Millis) -> CoreResult<()> {
        self.store.complete(id, now).await
    }
    async fn fail(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
        now: Millis,
    ) -> CoreResult<()> {
        self.store.fail(id, error, retry_at, now).await
    }
    async fn list_jobs(
        &self,
        state: Option<JobState>,
        tenant: Option<TenantId>,
        limit: u32,
    ) -> CoreResult<Vec<Job>> {
        self.store.list_jobs(state, tenant, limit).await
    }
    async fn get_job(&self, id: i64) -> CoreResult<Option<Job>> {
        self.store.get_job(id).await
    }
    async fn retry_job(&self, id: i64, now: Millis) -> CoreResult<bool> {
        self.store.retry_job(id, now).await
    }
    async fn discard_job(&self, id: i64) -> CoreResult<bool> {
        self.store.discard_job(id).await
    }
    async fn pending(&self, kind: &str) -> CoreResult<bool> {
        self.store.pending(kind).await
    }
}

#[tokio::test]
async fn a_title_job_claimed_at_once_still_titles_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let store = palisade_store::testing::store_at(&dir.path().join("t.db"))
        .await
        .unwrap();
    let who = palisade_store::testing::chat_user(&store, "dora")
        .await
        .unwrap();
    let registry = palisade_store::testing::one_model(&store, "m")
        .await
        .unwrap();
    let queue = Arc::new(EagerQueue {
        store: store.clone(),
        runner: OnceLock::new(),
        messages_at_enqueue: Mutex::new(Vec::new()),
    });
    let chat = Arc::new(
        ChatService::new(
            Arc::new(store.clone()),
            Arc::new(Titler),
            registry,
            ChatPolicy::default(),
        )
        .with_titles(queue.clone(), "m".into(), 3),
    );
    let runner = JobRunner::new(queue.clone(), Duration::from_millis(10))
        .handle(Arc::new(TitleJob(chat.clone())));
    assert!(queue.runner.set(runner).is_ok());

    let mut run = chat
        .start(
            &who,
            ChatInput {
                message: "Plan a trip to Lisbon".into(),
                request_id: "r1".into(),
                ..ChatInput::default()
            },
        )
        .await
        .unwrap();
    while let Some(ev) = run.events.recv().await {
        if matches!(ev, ChatEvent::Finished(_)) {
            break;
        }
    }

    // The job saw the first message, and the title is the model's.
    assert_eq!(*queue.messages_at_enqueue.lock().unwrap(), vec![1]);
    let session = store
        .get_session(DEFAULT_TENANT, who.user_id, run.session_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.title, "Lisbon Trip Plans");
    let done = store
        .list_jobs(Some(JobState::Done), None, 10)
        .await
        .unwrap();
    assert_eq!(done.len(), 1);

    // A later message of the same conversation queues nothing.
    let mut run = chat
        .start(
            &who,
            ChatInput {
                message: "And Porto?".into(),
                session_id: Some(run.session_id.to_string()),
                request_id: "r2".into(),
                ..ChatInput::default()
            },
        )
        .await
        .unwrap();
    while run.events.recv().await.is_some() {}
    assert_eq!(queue.messages_at_enqueue.lock().unwrap().len(), 1);
    assert_eq!(store.list_jobs(None, None, 10).await.unwrap().len(), 1);
}
