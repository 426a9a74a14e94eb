//! A chat's answer is made in the task that reads its events (no task of its own), and a
//! reader that stops midway (a client gone) still leaves the answer recorded: the generation
//! cancelled, the partial answer stored and marked cancelled, the request counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use palisade_core::chat::{ChatEvent, ChatInput, ChatPolicy, ChatService};
use palisade_core::entities::Principal;
use palisade_core::ids::DEFAULT_TENANT;
use palisade_core::ports::ChatRepository;
use palisade_core::provider::{
    ChatProvider, FinishReason, GenerationEvent, GenerationRequest, GenerationStream, ModelInfo,
    ProviderError, Role as MessageRole, Usage,
};
use palisade_core::quota::{UsageQuery, UsageRepository};
use palisade_store::Store;

/// Sets its flag when dropped: the provider's stream was let go (the generation cancelled).
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Says "Hello" and " world", then ends the answer, or (`stall`) waits forever.
struct Model {
    stall: bool,
    dropped: Arc<AtomicBool>,
}

#[async_trait]
impl ChatProvider for Model {
    fn models(&self) -> Vec<ModelInfo> {
        Vec::new()
    }

    async fn generate(&self, _req: GenerationRequest) -> Result<GenerationStream, ProviderError> {
        let guard = Dropped(self.dropped.clone());
        let words = futures::stream::iter(vec![
            Ok(GenerationEvent::Text("Hello".into())),
            Ok(GenerationEvent::Text(" world".into())),
        ]);
        let end: GenerationStream = if self.stall {
            Box::pin(futures::stream::pending())
        } else {
            Box::pin(futures::stream::iter(vec![Ok(GenerationEvent::Done {
                finish_reason: FinishReason::Stop,
                usage: Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                },
                truncated_turns: 0,
            })]))
        };
        Ok(Box::pin(words.chain(end).map(move |e| {
            let _held = &guard;
            e
        })))
    }

    fn is_ready(&self) -> bool {
        true
    }
}

async fn service(
    dir: &std::path::Path,
    stall: bool,
) -> (Store, Arc<ChatService>, Principal, Arc<AtomicBool>) {
    let store = palisade_store::testing::store_at(&dir.join("t.db"))
        .await
        .unwrap();
    let who = palisade_store::testing::chat_user(&store, "dora")
        .await
        .unwrap();
    let registry = palisade_store::testing::one_model(&store, "m")
        .await
        .unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let chat = Arc::new(
        ChatService::new(
            Arc::new(store.clone()),
            Arc::new(Model {
                stall,
                dropped: dropped.clone(),
            }),
            registry,
            ChatPolicy::default(),
        )
        .with_audit(Arc::new(store.clone()), true)
        .with_usage(Arc::new(store.clone())),
    );
    (store, chat, who, dropped)
}

fn input(message: &str) -> ChatInput {
    ChatInput {
        message: message.into(),
        request_id: "r1".into(),
        ..ChatInput::default()
    }
}

#[tokio::test]
async fn an_answer_is_made_in_the_task_that_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, chat, who, dropped) = service(dir.path(), false).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();

    let mut run = chat.start(&who, input("Say hello")).await.unwrap();
    assert!(
        tasks() <= before,
        "no task runs the answer beside its reader"
    );
    let mut shown = String::new();
    let last = loop {
        match run.events.recv().await {
            Some(ChatEvent::Token(t)) => {
                assert!(
                    tasks() <= before,
                    "no task runs the answer beside its reader"
                );
                shown.push_str(&t);
            }
            Some(other) => break other,
            None => panic!("the events ended without a last one"),
        }
    };
    let ChatEvent::Finished(stored) = last else {
        panic!("expected the stored answer, got {last:?}");
    };
    assert_eq!(shown, "Hello world");
    assert_eq!(stored.content, "Hello world");
    assert!(
        run.events.recv().await.is_none(),
        "nothing after the last event"
    );
    assert!(
        dropped.load(Ordering::SeqCst),
        "the model's stream is let go at the end"
    );
    assert!(tasks() <= before);

    let (held, _) = store
        .list_messages(DEFAULT_TENANT, run.session_id, None, 20)
        .await
        .unwrap();
    assert_eq!(held.len(), 2);
    assert_eq!(held[1].content, "Hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_gone_midway_leaves_the_answer_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (store, chat, who, dropped) = service(dir.path(), true).await;

    let mut run = chat.start(&who, input("Say hello forever")).await.unwrap();
    // The model says two words and then stalls: the reader takes what it can, then goes.
    let first = tokio::time::timeout(Duration::from_secs(5), run.events.recv()).await;
    assert!(matches!(first, Ok(Some(ChatEvent::Token(_)))), "{first:?}");
    let stalled = tokio::time::timeout(Duration::from_millis(200), async {
        while let Some(ev) = run.events.recv().await {
            assert!(matches!(ev, ChatEvent::Token(_)), "{ev:?}");
        }
    })
    .await;
    assert!(stalled.is_err(), "the model stalls: no last event yet");
    let session = run.session_id;
    drop(run);

    // The generation is cancelled, and the answer's end is written without a reader.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let (held, _) = store
            .list_messages(DEFAULT_TENANT, session, None, 20)
            .await
            .unwrap();
        if let Some(m) = held.iter().find(|m| m.role == MessageRole::Assistant) {
            break m.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the partial answer was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        dropped.load(Ordering::SeqCst),
        "the generation was cancelled"
    );
    let meta = answer.meta.expect("the answer's facts");
    assert_eq!(meta.finish_reason, "cancelled");
    assert!(meta.partial);
    assert!(
        "Hello world".starts_with(&answer.content),
        "{:?}",
        answer.content
    );

    let rows = store
        .usage(&UsageQuery {
            tenant: Some(DEFAULT_TENANT),
            user: Some(who.user_id),
            from_day: "2000-01-01".into(),
            to_day: "2999-12-31".into(),
        })
        .await
        .unwrap();
    assert_eq!(rows.iter().map(|r| r.requests).sum::<u64>(), 1, "{rows:?}");
}
