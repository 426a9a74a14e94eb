//! The continuous-batching scheduler: one OS thread owns the `LlamaContext` and, at every step,
//! decodes one token of every generating sequence plus prompt chunks of newly admitted ones in a
//! single `decode` call.
//!
//! Requests arrive over a std channel (the thread blocks on it when idle). Each sequence has its
//! own `seq_id` (its slot index), its own sampler and its own KV cells, which are cleared as soon
//! as it finishes or its caller goes away.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::vocab::LlamaVocab;
use palisade_core::provider::{FinishReason, GenerationEvent, ProviderError, Usage};
use tokio::sync::mpsc::UnboundedSender;

use crate::sampling::{Sampler, SamplingSpec};
use crate::shared::{Permit, Shared};
use crate::text::{StopState, TextPipeline};

/// What the stream receives.
pub(crate) type EventSender = UnboundedSender<Result<GenerationEvent, ProviderError>>;

/// One admitted-or-waiting generation request.
pub(crate) struct Job {
    pub request_id: String,
    pub tokens: Vec<LlamaToken>,
    pub sampling: SamplingSpec,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub truncated_turns: u32,
    pub tx: EventSender,
    /// Whose request (the tenant; empty when unknown): free slots go to the tenant with the
    /// fewest sequences running.
    pub tenant: String,
    /// Holds the request's place in the engine's capacity until the job is dropped.
    pub _permit: Permit,
    pub enqueued: Instant,
}

/// Messages to the scheduler thread.
pub(crate) enum Command {
    Job(Box<Job>),
    Shutdown,
}

/// Sizes fixed when the context is created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub parallel: usize,
    pub n_batch: usize,
    pub ctx_per_seq: u32,
}

/// A sequence occupying a slot.
struct Seq {
    job: Box<Job>,
    seq_id: i32,
    /// Tokens already in this sequence's KV cells (= next position).
    n_past: i32,
    /// Prompt tokens submitted so far.
    prefilled: usize,
    /// The last sampled token, to be decoded at the next step.
    pending: Option<LlamaToken>,
    /// Batch index of this sequence's logits in the current step, if any.
    logits_idx: Option<i32>,
    sampler: Sampler,
    text: TextPipeline,
    completion_tokens: u32,
    started: Instant,
}

impl Seq {
    fn prompt_len(&self) -> usize {
        self.job.tokens.len()
    }
}

/// How a step ended for a sequence.
enum Outcome {
    Continue,
    Finished(FinishReason),
    Cancelled,
}

pub(crate) struct Scheduler<'m> {
    ctx: LlamaContext<'m>,
    vocab: LlamaVocab<'m>,
    batch: LlamaBatch<'static>,
    limits: Limits,
    shared: Arc<Shared>,
    slots: Vec<Option<Seq>>,
    /// Occupied slots in admission order (prefill is served first-come first-served).
    order: Vec<usize>,
    queue: VecDeque<Box<Job>>,
    piece: Vec<u8>,
    out: String,
    finished: Vec<(usize, Outcome)>,
    /// Time spent inside `decode` and in whole steps, for the shutdown summary.
    decode_time: std::time::Duration,
    step_time: std::time::Duration,
    steps: u64,
    tokens_decoded: u64,
}

impl<'m> Scheduler<'m> {
    pub fn new(
        ctx: LlamaContext<'m>,
        vocab: LlamaVocab<'m>,
        limits: Limits,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            ctx,
            vocab,
            batch: LlamaBatch::new(limits.n_batch, 1),
            limits,
            shared,
            slots: (0..limits.parallel).map(|_| None).collect(),
            order: Vec::with_capacity(limits.parallel),
            queue: VecDeque::new(),
            piece: Vec::with_capacity(64),
            out: String::with_capacity(64),
            finished: Vec::with_capacity(limits.parallel),
            decode_time: std::time::Duration::ZERO,
            step_time: std::time::Duration::ZERO,
            steps: 0,
            tokens_decoded: 0,
        }
    }

    /// Runs until shutdown is requested or every sender is gone.
    pub fn run(mut self, rx: Receiver<Command>) {
        loop {
            if !self.intake(&rx) {
                break;
            }
            self.reap_cancelled();
            self.admit();
            self.publish_stats();
            if self.order.is_empty() {
                continue;
            }
            let started = Instant::now();
            self.step();
            self.step_time += started.elapsed();
            self.publish_stats();
        }
        tracing::debug!(
            steps = self.steps,
            tokens_decoded = self.tokens_decoded,
            decode_ms = self.decode_time.as_millis() as u64,
            step_ms = self.step_time.as_millis() as u64,
            "scheduler stopped"
        );
        self.abort_all(ProviderError::Unavailable(
            "the engine is shutting down".into(),
        ));
        self.publish_stats();
    }

    /// Receives new commands: blocks when there is nothing to do. Returns false on shutdown.
    fn intake(&mut self, rx: &Receiver<Command>) -> bool {
        if self.order.is_empty() && self.queue.is_empty() {
            self.publish_kv_usage();
            match rx.recv() {
                Ok(cmd) => {
                    if !self.accept(cmd) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => {
                    if !self.accept(cmd) {
                        return false;
                    }
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn accept(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Job(job) => {
                self.queue.push_back(job);
                true
            }
            Command::Shutdown => false,
        }
    }

    /// Drops queued requests whose caller went away and frees slots of cancelled sequences.
    fn reap_cancelled(&mut self) {
        self.queue.retain(|job| {
            let gone = job.tx.is_closed();
            if gone {
                tracing::debug!(request_id = %job.request_id, "queued request cancelled");
            }
            !gone
        });
        let mut i = 0;
        while i < self.order.len() {
            let slot = self.order[i];
            let closed = self.slots[slot]
                .as_ref()
                .is_some_and(|seq| seq.job.tx.is_closed());
            if closed {
                self.release(slot, "cancelled");
            } else {
                i += 1;
            }
        }
    }

    /// The queued request to admit next: the oldest of the tenant with the fewest running
    /// sequences, so one tenant's backlog cannot keep another's requests waiting (each free
    /// slot goes to the least-served tenant that is waiting).
    fn next_fair(&self) -> Option<usize> {
        let running = |tenant: &str| {
            self.slots
                .iter()
                .flatten()
                .filter(|s| s.job.tenant == tenant)
                .count()
        };
        let mut best: Option<(usize, usize)> = None;
        let mut seen: Vec<&str> = Vec::new();
        for (i, job) in self.queue.iter().enumerate() {
            if seen.contains(&job.tenant.as_str()) {
                continue;
            }
            seen.push(&job.tenant);
            let n = running(&job.tenant);
            if best.is_none_or(|(_, m)| n < m) {
                best = Some((i, n));
            }
            if n == 0 {
                break;
            }
        }
        best.map(|(i, _)| i)
    }

    /// Moves queued requests into free slots, fairly between tenants.
    fn admit(&mut self) {
        while !self.queue.is_empty() {
            let Some(slot) = self.slots.iter().position(Option::is_none) else {
                return;
            };
            let Some(job) = self.next_fair().and_then(|i| self.queue.remove(i)) else {
                return;
            };
            let seq_id = i32::try_from(slot).unwrap_or(i32::MAX);
            // The slot's cells are empty already; clearing again is cheap and defensive.
            let _ = self
                .ctx
                .clear_kv_cache_seq(u32::try_from(slot).ok(), None, None);
            tracing::debug!(
                request_id = %job.request_id,
                seq_id,
                prompt_tokens = job.tokens.len(),
                queued_ms = job.enqueued.elapsed().as_millis() as u64,
                "sequence admitted"
            );
            metrics::histogram!("palisade_engine_queue_wait_seconds")
                .record(job.enqueued.elapsed().as_secs_f64());
            let sampler = Sampler::new(&job.sampling);
            let text = TextPipeline::new(&job.stop);
            self.slots[slot] = Some(Seq {
                job,
                seq_id,
                n_past: 0,
                prefilled: 0,
                pending: None,
                logits_idx: None,
                sampler,
                text,
                completion_tokens: 0,
                started: Instant::now(),
            });
            self.order.push(slot);
        }
    }

    /// One decode call for all active sequences, then sampling.
    fn step(&mut self) {
        self.batch.clear();
        // 1. One token for every generating sequence.
        for &slot in &self.order {
            let Some(seq) = self.slots[slot].as_mut() else {
                continue;
            };
            seq.logits_idx = None;
            if let Some(token) = seq.pending {
                if self
                    .batch
                    .add(token, seq.n_past, &[seq.seq_id], true)
                    .is_ok()
                {
                    seq.logits_idx = Some(self.batch.n_tokens() - 1);
                }
            }
        }
        // 2. Prompt chunks in admission order, within the batch budget.
        let mut budget = self
            .limits
            .n_batch
            .saturating_sub(self.batch.n_tokens() as usize);
        for &slot in &self.order {
            if budget == 0 {
                break;
            }
            let Some(seq) = self.slots[slot].as_mut() else {
                continue;
            };
            if seq.pending.is_some() || seq.prefilled >= seq.prompt_len() {
                continue;
            }
            let end = (seq.prefilled + budget).min(seq.prompt_len());
            let last = seq.prompt_len().saturating_sub(1);
            for pos in seq.prefilled..end {
                let want_logits = pos == last;
                let p = i32::try_from(pos).unwrap_or(i32::MAX);
                if self
                    .batch
                    .add(seq.job.tokens[pos], p, &[seq.seq_id], want_logits)
                    .is_err()
                {
                    break;
                }
                if want_logits {
                    seq.logits_idx = Some(self.batch.n_tokens() - 1);
                }
                seq.prefilled = pos + 1;
                budget -= 1;
            }
        }
        if self.batch.n_tokens() == 0 {
            return;
        }

        let decode_started = Instant::now();
        let decoded = self.ctx.decode(&mut self.batch);
        self.decode_time += decode_started.elapsed();
        self.steps += 1;
        self.tokens_decoded += self.batch.n_tokens() as u64;
        if let Err(e) = decoded {
            tracing::error!(error = %e, "llama.cpp decode failed; failing active sequences");
            self.fail_active(ProviderError::Internal(format!("decode failed: {e}")));
            return;
        }

        // 3. Positions advance; sample where logits were requested.
        self.finished.clear();
        for i in 0..self.order.len() {
            let slot = self.order[i];
            let outcome = self.advance(slot);
            if !matches!(outcome, Outcome::Continue) {
                self.finished.push((slot, outcome));
            }
        }
        let finished = std::mem::take(&mut self.finished);
        for (slot, outcome) in &finished {
            match outcome {
                Outcome::Finished(reason) => self.finish(*slot, *reason),
                Outcome::Cancelled => self.release(*slot, "cancelled"),
                Outcome::Continue => {}
            }
        }
        self.finished = finished;
    }

    /// Updates one sequence after a decode and samples its next token if it had logits.
    fn advance(&mut self, slot: usize) -> Outcome {
        let Some(seq) = self.slots[slot].as_mut() else {
            return Outcome::Continue;
        };
        if seq.pending.take().is_some() {
            seq.n_past += 1;
        } else {
            seq.n_past = i32::try_from(seq.prefilled).unwrap_or(i32::MAX);
        }
        let Some(idx) = seq.logits_idx.take() else {
            return Outcome::Continue;
        };

        let token = seq.sampler.sample(&self.ctx, idx);
        if self.vocab.is_eog(token) {
            return Outcome::Finished(FinishReason::Stop);
        }
        seq.completion_tokens += 1;

        self.piece.clear();
        self.vocab
            .token_to_piece_into(token, &mut self.piece, false, None);
        self.out.clear();
        let state = seq.text.push(&self.piece, &mut self.out);
        if !self.out.is_empty() {
            let text = std::mem::take(&mut self.out);
            if seq.job.tx.send(Ok(GenerationEvent::Text(text))).is_err() {
                return Outcome::Cancelled;
            }
        }
        if state == StopState::Stopped {
            return Outcome::Finished(FinishReason::Stop);
        }
        if seq.completion_tokens >= seq.job.max_tokens
            || seq.n_past >= i32::try_from(self.limits.ctx_per_seq).unwrap_or(i32::MAX)
        {
            return Outcome::Finished(FinishReason::Length);
        }
        seq.pending = Some(token);
        Outcome::Continue
    }

    /// Flushes held-back text, sends `Done` and frees the slot.
    fn finish(&mut self, slot: usize, mut reason: FinishReason) {
        if let Some(seq) = self.slots[slot].as_mut() {
            self.out.clear();
            if seq.text.finish(&mut self.out) == StopState::Stopped {
                reason = FinishReason::Stop;
            }
            if !self.out.is_empty() {
                let text = std::mem::take(&mut self.out);
                let _ = seq.job.tx.send(Ok(GenerationEvent::Text(text)));
            }
            let usage = Usage {
                prompt_tokens: u32::try_from(seq.prompt_len()).unwrap_or(u32::MAX),
                completion_tokens: seq.completion_tokens,
            };
            let _ = seq.job.tx.send(Ok(GenerationEvent::Done {
                finish_reason: reason,
                usage,
                truncated_turns: seq.job.truncated_turns,
            }));
            let elapsed = seq.started.elapsed();
            self.shared.record_duration(elapsed);
            tracing::debug!(
                request_id = %seq.job.request_id,
                seq_id = seq.seq_id,
                finish_reason = reason.as_str(),
                prompt_tokens = usage.prompt_tokens,
                completion_tokens = usage.completion_tokens,
                elapsed_ms = elapsed.as_millis() as u64,
                "sequence finished"
            );
        }
        self.release(slot, "finished");
    }

    /// Frees a slot and its KV cells; dropping the job releases its capacity permit.
    fn release(&mut self, slot: usize, why: &str) {
        if let Some(seq) = self.slots[slot].take() {
            if why != "finished" {
                tracing::debug!(request_id = %seq.job.request_id, seq_id = seq.seq_id, why, "sequence released");
            }
        }
        let _ = self
            .ctx
            .clear_kv_cache_seq(u32::try_from(slot).ok(), None, None);
        self.order.retain(|&s| s != slot);
    }

    /// A decode failure leaves the KV state unknown: fail everyone and start clean.
    fn fail_active(&mut self, err: ProviderError) {
        for slot in std::mem::take(&mut self.order) {
            if let Some(seq) = self.slots[slot].take() {
                let _ = seq.job.tx.send(Err(err.clone()));
            }
        }
        self.ctx.clear_kv_cache();
    }

    fn abort_all(&mut self, err: ProviderError) {
        self.fail_active(err.clone());
        for job in self.queue.drain(..) {
            let _ = job.tx.send(Err(err.clone()));
        }
    }

    fn publish_stats(&self) {
        metrics::gauge!("palisade_engine_active_sequences").set(self.order.len() as f64);
        metrics::gauge!("palisade_engine_queue_depth").set(self.queue.len() as f64);
        self.shared
            .active
            .store(self.order.len(), Ordering::Relaxed);
        self.shared
            .queued
            .store(self.queue.len(), Ordering::Relaxed);
    }

    /// Counts sequences that still have KV cells (should be 0 when idle).
    fn publish_kv_usage(&self) {
        let used = (0..self.limits.parallel)
            .filter(|&s| {
                let seq = i32::try_from(s).unwrap_or(i32::MAX);
                self.ctx.kv_cache_seq_pos_max(seq) >= 0
            })
            .count();
        if used > 0 {
            tracing::warn!(used, "idle engine still holds KV cells");
        }
        self.shared
            .kv_sequences_in_use
            .store(used, Ordering::Relaxed);
    }
}
