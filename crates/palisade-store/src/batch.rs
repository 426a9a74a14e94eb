//! Group commit: callers queue what they want written and wait for it; one flusher task per
//! queue writes whatever has gathered, batch after batch, until the queue is empty.
//!
//! At most one flusher runs per queue. The caller whose item finds no flusher running starts
//! one; everyone else only queues. (Spawning a task per item that then waited its turn on a lock
//! cost a task and a wake-up per request, and thousands of waiting tasks when many streams
//! opened at once.)

use std::sync::Mutex;

/// A queue of `T` with at most one flusher.
pub(crate) struct Batcher<T> {
    state: Mutex<Gathered<T>>,
    /// The most items one batch holds (what one statement can carry); the rest wait for the
    /// next batch.
    max_batch: usize,
    /// How often a flusher task of a busy queue ([`Batcher::busy`]) steps back behind the
    /// tasks ready to run before it drains, so that those about to queue an item join its
    /// batch ([`Batcher::yielding_when_busy`]; 0: never).
    busy_yields: usize,
}

struct Gathered<T> {
    items: Vec<T>,
    /// A flusher is running (or about to start) and will take what is queued.
    flushing: bool,
    /// The size of the last batch taken: more than one item means callers meet in the queue.
    last_batch: usize,
}

impl<T> Batcher<T> {
    /// An empty queue whose batches hold at most `max_batch` items (at least one).
    pub(crate) fn new(max_batch: usize) -> Self {
        Batcher {
            state: Mutex::new(Gathered {
                items: Vec::new(),
                flushing: false,
                last_batch: 0,
            }),
            max_batch: max_batch.max(1),
            busy_yields: 0,
        }
    }

    /// A flusher task of this queue first yields `times` times while the queue is busy (its
    /// last batch held more than one item). At low load it drains at once.
    pub(crate) fn yielding_when_busy(mut self, times: usize) -> Self {
        self.busy_yields = times;
        self
    }
}

/// The queue's lock was poisoned (a panic while it was held).
#[derive(Debug)]
pub(crate) struct Poisoned;

impl<T> Batcher<T> {
    /// Queues `item`. `Ok(true)` when no flusher is running: the caller must start one, a task
    /// that runs [`Batcher::drain`].
    pub(crate) fn push(&self, item: T) -> Result<bool, Poisoned> {
        let mut g = self.state.lock().map_err(|_| Poisoned)?;
        g.items.push(item);
        Ok(!std::mem::replace(&mut g.flushing, true))
    }

    /// The last batch held more than one item: callers are meeting in the queue, and a flusher
    /// that waits a moment gathers more of them into its commit.
    pub(crate) fn busy(&self) -> bool {
        self.state.lock().map(|g| g.last_batch > 1).unwrap_or(false)
    }

    /// The flusher: hands what has gathered to `flush`, batch after batch, until the queue runs
    /// dry. Run by the task that [`Batcher::push`] told to start one. While the queue is busy
    /// it first yields as often as [`Batcher::yielding_when_busy`] says, so the callers ready
    /// to run queue their items first and share its batch.
    pub(crate) async fn drain<F, Fut>(&self, mut flush: F)
    where
        F: FnMut(Vec<T>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        if self.busy_yields > 0 && self.busy() {
            for _ in 0..self.busy_yields {
                tokio::task::yield_now().await;
            }
        }
        let mut turn = self.turn();
        while let Some(batch) = turn.next_batch() {
            flush(batch).await;
        }
    }

    /// [`Batcher::drain`] with a `flush` that never waits: the caller that [`Batcher::push`]
    /// told to start a flusher writes everything itself, right away (no task, no wake-up).
    pub(crate) fn drain_now(&self, mut flush: impl FnMut(Vec<T>)) {
        let mut turn = self.turn();
        while let Some(batch) = turn.next_batch() {
            flush(batch);
        }
    }

    /// The flusher's turn: its batches, and the end of its turn when the queue runs dry.
    fn turn(&self) -> Turn<'_, T> {
        Turn {
            batcher: self,
            active: true,
        }
    }
}

/// A running flusher's hold on its queue. If the flusher stops before the queue ran dry (its
/// task cancelled, say at shutdown), dropping the turn lets the next item start a new one.
struct Turn<'a, T> {
    batcher: &'a Batcher<T>,
    active: bool,
}

impl<T> Turn<'_, T> {
    /// What was queued since the last batch, oldest first and at most `max_batch` items;
    /// `None` when nothing is, which ends the turn (in the same step, so an item queued just
    /// after starts a new flusher).
    fn next_batch(&mut self) -> Option<Vec<T>> {
        let max = self.batcher.max_batch;
        let mut g = self.batcher.state.lock().ok()?;
        if g.items.is_empty() {
            g.flushing = false;
            self.active = false;
            return None;
        }
        if g.items.len() <= max {
            g.last_batch = g.items.len();
            return Some(std::mem::take(&mut g.items));
        }
        g.last_batch = max;
        Some(g.items.drain(..max).collect())
    }
}

impl<T> Drop for Turn<'_, T> {
    fn drop(&mut self) {
        if self.active {
            if let Ok(mut g) = self.batcher.state.lock() {
                g.flushing = false;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn one_flusher_takes_everything_gathered() {
        let b = Batcher::new(100);
        assert!(
            b.push(1).is_ok_and(|start| start),
            "the first item starts a flusher"
        );
        assert!(
            b.push(2).is_ok_and(|start| !start),
            "the second finds it running"
        );
        let mut turn = b.turn();
        assert_eq!(turn.next_batch(), Some(vec![1, 2]));
        assert!(
            b.push(3).is_ok_and(|start| !start),
            "still running: it takes 3 next"
        );
        assert_eq!(turn.next_batch(), Some(vec![3]));
        assert_eq!(turn.next_batch(), None, "dry: the turn ends");
        drop(turn);
        assert!(
            b.push(4).is_ok_and(|start| start),
            "the next item starts a new flusher"
        );
    }

    #[test]
    fn a_flusher_stopped_midway_lets_the_next_item_start_another() {
        let b = Batcher::new(100);
        assert!(b.push(1).is_ok_and(|start| start));
        let mut turn = b.turn();
        assert_eq!(turn.next_batch(), Some(vec![1]));
        assert!(b.push(2).is_ok_and(|start| !start));
        // Cancelled before it looked again: item 2 waits for the next push's flusher.
        drop(turn);
        assert!(b.push(3).is_ok_and(|start| start));
        assert_eq!(b.turn().next_batch(), Some(vec![2, 3]));
    }

    #[test]
    fn the_queue_is_busy_while_batches_gather_more_than_one_item() {
        let b = Batcher::new(100);
        assert!(!b.busy(), "nothing written yet");
        assert!(b.push(1).is_ok());
        assert_eq!(b.turn().next_batch(), Some(vec![1]));
        assert!(!b.busy(), "one caller a batch: low load");
        assert!(b.push(2).is_ok());
        assert!(b.push(3).is_ok());
        let mut turn = b.turn();
        assert_eq!(turn.next_batch(), Some(vec![2, 3]));
        assert!(b.busy(), "two callers met in the queue");
        assert_eq!(turn.next_batch(), None);
        assert!(b.busy(), "an empty queue keeps the last batch's size");
        drop(turn);
        assert!(b.push(4).is_ok());
        assert_eq!(b.turn().next_batch(), Some(vec![4]));
        assert!(!b.busy(), "alone again");
        let small = Batcher::new(2);
        for i in 1..=3 {
            assert!(small.push(i).is_ok());
        }
        assert_eq!(small.turn().next_batch(), Some(vec![1, 2]));
        assert!(small.busy(), "a full batch");
    }

    /// A flusher task of a busy queue lets the tasks ready to run queue their items first; a
    /// queue that does not yield takes only what was there.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_queues_flusher_waits_for_the_tasks_ready_to_run() {
        for (yields, want) in [(1, vec![vec![3, 4]]), (0, vec![vec![3]])] {
            let b = std::sync::Arc::new(Batcher::new(100).yielding_when_busy(yields));
            assert!(b.push(1).is_ok() && b.push(2).is_ok());
            assert_eq!(b.turn().next_batch(), Some(vec![1, 2]));
            assert!(b.busy());
            assert!(b.push(3).is_ok_and(|start| start));
            let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
            let (q, s) = (b.clone(), seen.clone());
            let flusher = tokio::spawn(async move {
                q.drain(|batch| {
                    if let Ok(mut s) = s.lock() {
                        s.push(batch);
                    }
                    async {}
                })
                .await
            });
            // Ready to run behind the flusher (this runtime runs tasks in the order woken).
            let q = b.clone();
            let late = tokio::spawn(async move { q.push(4).is_ok_and(|start| start) });
            flusher.await.unwrap();
            let started_another = late.await.unwrap();
            assert_eq!(*seen.lock().unwrap(), want, "{yields} yields");
            assert_eq!(started_another, yields == 0, "{yields} yields");
        }
    }

    #[test]
    fn batches_hold_at_most_max_items_oldest_first() {
        let b = Batcher::new(2);
        for i in 1..=5 {
            assert!(b.push(i).is_ok());
        }
        let mut turn = b.turn();
        assert_eq!(turn.next_batch(), Some(vec![1, 2]));
        assert_eq!(turn.next_batch(), Some(vec![3, 4]));
        assert_eq!(turn.next_batch(), Some(vec![5]));
        assert_eq!(turn.next_batch(), None);
    }
}
