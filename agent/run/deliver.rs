//! The deliver task: batches from the reader go to the sink in order, retried with backoff until
//! the sink acknowledges them (nothing is dropped); each acknowledgement goes back to the reader,
//! which may then write a checkpoint covering that batch.
//!
//! A sink that can overlap batches ([`Sink::max_in_flight`] above 1: Kafka) gets the next batches
//! submitted while earlier ones await their acknowledgement. Acknowledgements still go back
//! strictly in order: a batch is acknowledged only once it and every earlier batch were. When
//! the oldest batch in flight fails, it alone is retried (with backoff) before anything later is
//! acknowledged; the later ones then settle as their sink reports them, and a failed one is
//! retried in its turn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{Ack, Batch};
use crate::ops::{Metrics, OpsState};
use crate::sink::{deliver_with_retry, Backoff, FilePosition, Pending, Sink};

/// A batch not acknowledged for this long means the backend is down or too slow: the agent says
/// so on /readyz and in `meshtap_sink_up`, even while the sink itself is still waiting (Kafka's
/// producer waits up to `message_timeout_ms` before it reports a failure).
const STALL: Duration = Duration::from_secs(10);

/// First retry after 100 ms, doubling up to 30 s: quick recovery from a blip, no hammering of a
/// backend that is down.
fn backoff() -> Backoff {
    Backoff::try_new(Duration::from_millis(100), Duration::from_secs(30)).expect("valid backoff")
}

/// A batch the sink has taken and not yet acknowledged.
struct InFlight {
    batch: Batch,
    submitted: Instant,
    /// Resolves with the sink's verdict; a batch the sink could not even take is a failed one.
    pending: Pending,
    /// The file sink's position once it wrote the batch (taken at submission: a sink that
    /// overlaps batches has no position).
    sink_position: Option<FilePosition>,
    /// The stall was already reported for this batch.
    stalled: bool,
}

/// What the loop waits for next.
enum Event {
    /// A new batch from the reader.
    Batch(Batch),
    /// The reader is done: no more batches.
    Closed,
    /// The oldest batch in flight settled.
    Settled(Result<(), crate::sink::SinkError>),
    /// The oldest batch in flight has waited [`STALL`].
    Stalled,
}

/// The deliver loop and what it reports through.
struct Deliverer<S> {
    sink: S,
    acks: std::sync::mpsc::Sender<Ack>,
    metrics: Arc<Metrics>,
    ops: Arc<OpsState>,
    shutdown: watch::Receiver<bool>,
    name: &'static str,
    rejected: u64,
}

pub async fn deliver<S: Sink>(
    sink: S,
    mut batches: mpsc::Receiver<Batch>,
    acks: std::sync::mpsc::Sender<Ack>,
    metrics: Arc<Metrics>,
    ops: Arc<OpsState>,
    shutdown: watch::Receiver<bool>,
) {
    let name = sink.name();
    metrics.sink_up(name, true);
    let limit = sink.max_in_flight().max(1);
    let mut d = Deliverer {
        sink,
        acks,
        metrics,
        ops,
        shutdown,
        name,
        rejected: 0,
    };
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(limit);
    let mut open = true;
    loop {
        let room = open && in_flight.len() < limit;
        let event = match in_flight.front_mut() {
            None if !open => break,
            None => match batches.recv().await {
                Some(batch) => Event::Batch(batch),
                None => Event::Closed,
            },
            Some(oldest) => {
                let stall_at = tokio::time::Instant::from_std(oldest.submitted + STALL);
                // The oldest batch first: acknowledging frees room and lets the reader checkpoint.
                tokio::select! {
                    biased;
                    result = &mut oldest.pending => Event::Settled(result),
                    batch = batches.recv(), if room => match batch {
                        Some(batch) => Event::Batch(batch),
                        None => Event::Closed,
                    },
                    () = tokio::time::sleep_until(stall_at), if !oldest.stalled => Event::Stalled,
                }
            }
        };
        match event {
            Event::Batch(batch) => {
                let submitted = Instant::now();
                let pending = match d.sink.submit(&batch.exchanges).await {
                    Ok(pending) => pending,
                    Err(error) => Box::pin(std::future::ready(Err(error))) as Pending,
                };
                in_flight.push_back(InFlight {
                    batch,
                    submitted,
                    pending,
                    sink_position: d.sink.checkpoint_position(),
                    stalled: false,
                });
            }
            Event::Closed => open = false,
            Event::Stalled => {
                if let Some(oldest) = in_flight.front_mut() {
                    oldest.stalled = true;
                }
                stalled(&d.metrics, &d.ops, d.name);
            }
            Event::Settled(result) => {
                let mut oldest = in_flight.pop_front().expect("a batch settled");
                if let Err(error) = result {
                    failed(&d.metrics, &d.ops, d.name, &error, oldest.submitted);
                    if !d.retry(&mut oldest).await {
                        break;
                    }
                }
                if !d.acknowledge(oldest) {
                    break;
                }
            }
        }
    }
}

/// Reports a failed attempt at a batch submitted at `submitted`.
fn failed(
    metrics: &Metrics,
    ops: &OpsState,
    name: &'static str,
    error: &crate::sink::SinkError,
    submitted: Instant,
) {
    tracing::warn!(sink = name, %error, "Could not deliver a batch; retrying.");
    metrics.sink_batch(name, false, 0, submitted.elapsed());
    metrics.sink_up(name, false);
    ops.set_not_ready_reason(Some(format!("sink {name} is failing: {error}")));
}

/// Reports a batch not acknowledged for [`STALL`].
fn stalled(metrics: &Metrics, ops: &OpsState, name: &'static str) {
    tracing::warn!(
        sink = name,
        seconds = STALL.as_secs(),
        "A batch is still not acknowledged; reading pauses when the queue is full."
    );
    metrics.sink_up(name, false);
    ops.set_not_ready_reason(Some(format!(
        "sink {name} has not acknowledged a batch for {}s",
        STALL.as_secs()
    )));
}

impl<S: Sink> Deliverer<S> {
    /// Delivers the failed batch `oldest` again until the sink acknowledges it (its first failure
    /// was reported); `false` when shutdown stopped the retries (the batch is then read again
    /// after a restart).
    async fn retry(&mut self, oldest: &mut InFlight) -> bool {
        let mut backoff = backoff();
        let mut shutdown = self.shutdown.clone();
        // A failure after the shutdown signal is final; else the first delay, unless it comes.
        let stopped = *shutdown.borrow() || {
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => false,
                // Signalled, or the sender dropped (the agent is going away).
                _ = shutdown.wait_for(|stop| *stop) => true,
            }
        };
        let (name, metrics, ops) = (self.name, &self.metrics, &self.ops);
        let submitted = oldest.submitted;
        let result = if stopped {
            Err(())
        } else {
            let delivery = deliver_with_retry(
                &mut self.sink,
                &oldest.batch.exchanges,
                &mut backoff,
                &self.shutdown,
                |error| failed(metrics, ops, name, error, submitted),
            );
            tokio::pin!(delivery);
            let stall_at = tokio::time::Instant::from_std(submitted + STALL);
            tokio::select! {
                result = &mut delivery => result.map_err(drop),
                () = tokio::time::sleep_until(stall_at), if !oldest.stalled => {
                    oldest.stalled = true;
                    stalled(metrics, ops, name);
                    delivery.await.map_err(drop)
                }
            }
        };
        if result.is_err() {
            tracing::warn!(
                sink = name,
                records = oldest.batch.exchanges.len(),
                "Stopped retrying at shutdown; the batch will be read again after a restart."
            );
            return false;
        }
        oldest.sink_position = self.sink.checkpoint_position();
        true
    }

    /// Reports `done` as delivered to the metrics and the reader; `false` when the reader is gone.
    fn acknowledge(&mut self, done: InFlight) -> bool {
        let name = self.name;
        let records = done.batch.exchanges.len() as u64;
        self.metrics
            .sink_batch(name, true, records, done.submitted.elapsed());
        let now_rejected = self.sink.rejected_count();
        self.metrics.skipped(
            crate::ops::metrics::skip::SINK_REJECTED,
            now_rejected - self.rejected,
        );
        self.rejected = now_rejected;
        self.metrics.sink_up(name, true);
        self.ops.set_not_ready_reason(None);
        let ack = Ack {
            seq: done.batch.seq,
            sink_position: done.sink_position,
            exchanges: done.batch.exchanges,
        };
        self.acks.send(ack).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::oneshot;

    use super::*;
    use crate::record::Exchange;
    use crate::sink::stdout::tests::exchange;
    use crate::sink::{BoxFuture, SinkError};

    /// A sink whose batches settle when the test says so. Every submission and every retried
    /// delivery is logged by the first exchange id of its batch.
    struct Scripted {
        limit: usize,
        /// Each submitted batch's id and the sender that settles it.
        submitted: mpsc::UnboundedSender<(String, oneshot::Sender<Result<(), SinkError>>)>,
        /// Ids of the batches delivered again (after a failure), in order.
        retried: Arc<Mutex<Vec<String>>>,
    }

    fn fail(why: &str) -> SinkError {
        SinkError::Other {
            sink: "scripted",
            message: why.into(),
        }
    }

    impl Sink for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }

        fn deliver<'a>(
            &'a mut self,
            batch: &'a [Exchange],
        ) -> BoxFuture<'a, Result<(), SinkError>> {
            self.retried.lock().unwrap().push(batch[0].id.clone());
            Box::pin(async { Ok(()) })
        }

        fn submit<'a>(
            &'a mut self,
            batch: &'a [Exchange],
        ) -> BoxFuture<'a, Result<Pending, SinkError>> {
            let (tx, rx) = oneshot::channel();
            self.submitted.send((batch[0].id.clone(), tx)).unwrap();
            Box::pin(async move {
                Ok(Box::pin(async move { rx.await.unwrap_or(Err(fail("dropped"))) }) as Pending)
            })
        }

        fn max_in_flight(&self) -> usize {
            self.limit
        }
    }

    struct Harness {
        batches: mpsc::Sender<Batch>,
        submitted: mpsc::UnboundedReceiver<(String, oneshot::Sender<Result<(), SinkError>>)>,
        acks: std::sync::mpsc::Receiver<Ack>,
        retried: Arc<Mutex<Vec<String>>>,
        ops: Arc<OpsState>,
        _shutdown: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(limit: usize) -> Harness {
        let (batch_tx, batch_rx) = mpsc::channel(16);
        let (submitted_tx, submitted_rx) = mpsc::unbounded_channel();
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let retried = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(Metrics::new());
        let ops = Arc::new(OpsState::new(metrics.clone()));
        ops.set_ready(true);
        let sink = Scripted {
            limit,
            submitted: submitted_tx,
            retried: retried.clone(),
        };
        let task = tokio::spawn(deliver(
            sink,
            batch_rx,
            ack_tx,
            metrics,
            ops.clone(),
            shutdown_rx,
        ));
        Harness {
            batches: batch_tx,
            submitted: submitted_rx,
            acks: ack_rx,
            retried,
            ops,
            _shutdown: shutdown_tx,
            task,
        }
    }

    fn batch(seq: u64) -> Batch {
        Batch {
            seq,
            exchanges: vec![exchange(&format!("b{seq}"), "x")],
        }
    }

    impl Harness {
        async fn send(&self, seq: u64) {
            self.batches.send(batch(seq)).await.unwrap();
        }

        /// The next submission: its batch id and what settles it.
        async fn next_submitted(&mut self) -> (String, oneshot::Sender<Result<(), SinkError>>) {
            tokio::time::timeout(Duration::from_secs(5), self.submitted.recv())
                .await
                .expect("a batch is submitted")
                .expect("the sink is alive")
        }

        /// Acknowledged sequence numbers so far, waiting until there are `n` of them.
        async fn acked(&self, n: usize) -> Vec<u64> {
            let mut seqs = Vec::new();
            while seqs.len() < n {
                match self.acks.try_recv() {
                    Ok(ack) => seqs.push(ack.seq),
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            seqs
        }

        fn acked_now(&self) -> Vec<u64> {
            self.acks.try_iter().map(|ack| ack.seq).collect()
        }
    }

    /// Lets the deliver task run until it waits again.
    async fn settle_down() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_overlap_up_to_the_limit_and_are_acknowledged_in_order() {
        let mut h = start(3);
        for seq in 0..5 {
            h.send(seq).await;
        }
        let mut settles = Vec::new();
        for want in ["b0", "b1", "b2"] {
            let (id, settle) = h.next_submitted().await;
            assert_eq!(id, want);
            settles.push(settle);
        }
        settle_down().await;
        assert!(
            h.submitted.try_recv().is_err(),
            "a fourth batch was submitted with 3 in flight"
        );
        // The later ones settle first: nothing is acknowledged before the oldest.
        settles.pop().unwrap().send(Ok(())).unwrap();
        settles.pop().unwrap().send(Ok(())).unwrap();
        settle_down().await;
        assert_eq!(h.acked_now(), Vec::<u64>::new());
        settles.pop().unwrap().send(Ok(())).unwrap();
        assert_eq!(h.acked(3).await, [0, 1, 2]);
        for want in ["b3", "b4"] {
            let (id, settle) = h.next_submitted().await;
            assert_eq!(id, want);
            settle.send(Ok(())).unwrap();
        }
        assert_eq!(h.acked(2).await, [3, 4]);
        assert!(h.retried.lock().unwrap().is_empty());
        drop(h.batches);
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_is_retried_before_later_ones_are_acknowledged() {
        let mut h = start(4);
        for seq in 0..3 {
            h.send(seq).await;
        }
        let (_, s0) = h.next_submitted().await;
        let (_, s1) = h.next_submitted().await;
        let (_, s2) = h.next_submitted().await;
        s1.send(Ok(())).unwrap();
        s2.send(Err(fail("purged with the old producer"))).unwrap();
        s0.send(Err(fail("broker down"))).unwrap();
        // b0 is delivered again (after the backoff), then acknowledged with b1; b2 failed too and
        // is delivered again in its turn.
        assert_eq!(h.acked(3).await, [0, 1, 2]);
        assert_eq!(*h.retried.lock().unwrap(), ["b0", "b2"]);
        assert!(h.ops.ready(), "ready again once the retries succeeded");
        drop(h.batches);
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_batch_makes_the_agent_unready_until_acknowledged() {
        let mut h = start(2);
        h.send(0).await;
        let (_, s0) = h.next_submitted().await;
        tokio::time::sleep(STALL + Duration::from_secs(1)).await;
        assert!(
            !h.ops.ready(),
            "not ready after {STALL:?} without an acknowledgement"
        );
        s0.send(Ok(())).unwrap();
        assert_eq!(h.acked(1).await, [0]);
        assert!(h.ops.ready());
        drop(h.batches);
        h.task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_reader_is_done_the_batches_in_flight_are_still_acknowledged() {
        let mut h = start(4);
        h.send(0).await;
        h.send(1).await;
        let (_, s0) = h.next_submitted().await;
        let (_, s1) = h.next_submitted().await;
        drop(h.batches);
        settle_down().await;
        assert!(
            !h.task.is_finished(),
            "the task waits for the batches in flight"
        );
        s1.send(Ok(())).unwrap();
        s0.send(Ok(())).unwrap();
        (&mut h.task).await.unwrap();
        // Each acknowledgement hands its batch's exchanges back, for the reader to free.
        let acks: Vec<(u64, Vec<String>)> = h
            .acks
            .try_iter()
            .map(|a| (a.seq, a.exchanges.into_iter().map(|e| e.id).collect()))
            .collect();
        assert_eq!(
            acks,
            [(0, vec!["b0".to_string()]), (1, vec!["b1".to_string()])]
        );
    }
}
