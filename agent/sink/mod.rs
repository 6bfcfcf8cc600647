//! Stage 7 (agent): where exchanges are delivered. Every sink implements [`Sink`]; a sink's
//! `deliver` returns only once the batch is as durable as that backend allows (stdout: written;
//! file: flushed; Kafka/OTLP, later: acknowledged by the broker/collector). The agent advances its
//! checkpoints only after `deliver` returned `Ok`, so what a sink acknowledges is never re-read,
//! and what it did not is never lost.

pub mod config;
pub mod file;
pub mod kafka;
pub mod otlp;
pub mod stdout;

pub use config::{ConfiguredSink, FileSinkConfig, SinkConfig};
pub use file::{FilePosition, FileSink};
pub use stdout::StdoutSink;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;

use crate::output::ndjson::NdjsonWriter;
use crate::record::Exchange;

/// A boxed future, so sinks can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a batch was not delivered. The agent retries with backoff; nothing is dropped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink}: {message}")]
    Io {
        sink: &'static str,
        message: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{sink}: {message}")]
    Other { sink: &'static str, message: String },
}

/// A batch the sink has taken: resolves when the backend acknowledged all of it (or failed).
pub type Pending = BoxFuture<'static, Result<(), SinkError>>;

/// A destination for exchange records.
pub trait Sink: Send {
    /// Short name for logs and metrics (`stdout`, `file`, `kafka`, `otlp`).
    fn name(&self) -> &'static str;

    /// Delivers a batch in order; returns when the backend acknowledged all of it.
    fn deliver<'a>(&'a mut self, batch: &'a [Exchange]) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Hands a batch to the backend and returns as soon as the sink has taken it, with what
    /// resolves once the backend acknowledged it, so that the next batch can be encoded and sent
    /// while this one is on the wire. The default delivers the batch before returning (nothing
    /// overlaps). Batches submitted one after the other are sent in that order.
    fn submit<'a>(
        &'a mut self,
        batch: &'a [Exchange],
    ) -> BoxFuture<'a, Result<Pending, SinkError>> {
        Box::pin(async move {
            self.deliver(batch).await?;
            Ok(Box::pin(std::future::ready(Ok(()))) as Pending)
        })
    }

    /// How many submitted batches may await their acknowledgement at once: 1 unless the sink's
    /// `submit` returns before the batch is acknowledged.
    fn max_in_flight(&self) -> usize {
        1
    }

    /// Where the sink stands, to store with each checkpoint (the file sink's position; `None`
    /// for the others).
    fn checkpoint_position(&self) -> Option<FilePosition> {
        None
    }

    /// Records refused for good so far (Kafka's oversize records), for metrics.
    fn rejected_count(&self) -> u64 {
        0
    }
}

/// Appends `record` to `buf` as one NDJSON line: a single `serde_json` serialization and `\n`.
fn encode_line(sink: &'static str, record: &Exchange, buf: &mut Vec<u8>) -> Result<(), SinkError> {
    NdjsonWriter::new(buf)
        .write(record)
        .map_err(|source| SinkError::Io {
            sink,
            message: format!("cannot serialize exchange {}", record.id),
            source,
        })
}

/// Exponential backoff between delivery attempts: `initial`, doubled after every failure, capped at
/// `max`, back to `initial` after a success. No jitter: one agent per node retries one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

/// Why a [`Backoff`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBackoff {
    #[error("the initial backoff must be greater than zero")]
    ZeroInitial,
    #[error("the maximum backoff ({max:?}) must be at least the initial backoff ({initial:?})")]
    MaxBelowInitial { initial: Duration, max: Duration },
}

impl Backoff {
    /// A backoff starting at `initial` and never exceeding `max`.
    pub fn try_new(initial: Duration, max: Duration) -> Result<Self, InvalidBackoff> {
        if initial.is_zero() {
            return Err(InvalidBackoff::ZeroInitial);
        }
        if max < initial {
            return Err(InvalidBackoff::MaxBelowInitial { initial, max });
        }
        Ok(Backoff {
            initial,
            max,
            next: initial,
        })
    }

    /// The delay to wait now; the following one is twice as long, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts again from the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Delivers `batch`, retrying with `backoff` until the sink acknowledges it. Every failure is
/// passed to `on_error` (for logs and metrics) before waiting.
///
/// Returns `Err` (the last failure) only when delivery is failing and `shutdown` is `true`, or its
/// sender is gone: then the batch is left unacknowledged, so its checkpoint does not advance and the
/// agent reads it again after a restart. A batch is still attempted once after shutdown was
/// signalled, so a healthy sink drains.
pub async fn deliver_with_retry(
    sink: &mut dyn Sink,
    batch: &[Exchange],
    backoff: &mut Backoff,
    shutdown: &watch::Receiver<bool>,
    mut on_error: impl FnMut(&SinkError),
) -> Result<(), SinkError> {
    let mut shutdown = shutdown.clone();
    loop {
        let error = match sink.deliver(batch).await {
            Ok(()) => {
                backoff.reset();
                return Ok(());
            }
            Err(error) => error,
        };
        on_error(&error);
        if *shutdown.borrow() {
            return Err(error);
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            // Signalled, or the sender dropped (the agent is going away): stop retrying.
            _ = shutdown.wait_for(|stop| *stop) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Instant;

    use super::*;

    /// Fails with the queued errors, then succeeds; records when each attempt happened.
    struct FlakySink {
        failures: VecDeque<&'static str>,
        attempts: Vec<Instant>,
        delivered: usize,
    }

    impl FlakySink {
        fn new(failures: &[&'static str]) -> Self {
            FlakySink {
                failures: failures.iter().copied().collect(),
                attempts: Vec::new(),
                delivered: 0,
            }
        }
    }

    impl Sink for FlakySink {
        fn name(&self) -> &'static str {
            "flaky"
        }

        fn deliver<'a>(
            &'a mut self,
            batch: &'a [Exchange],
        ) -> BoxFuture<'a, Result<(), SinkError>> {
            Box::pin(async move {
                self.attempts.push(Instant::now());
                match self.failures.pop_front() {
                    Some(message) => Err(SinkError::Other {
                        sink: "flaky",
                        message: message.into(),
                    }),
                    None => {
                        self.delivered += batch.len();
                        Ok(())
                    }
                }
            })
        }
    }

    /// Always fails, telling the test (once) that it did.
    struct DownSink(Option<tokio::sync::oneshot::Sender<()>>);

    impl Sink for DownSink {
        fn name(&self) -> &'static str {
            "down"
        }

        fn deliver<'a>(&'a mut self, _: &'a [Exchange]) -> BoxFuture<'a, Result<(), SinkError>> {
            if let Some(failed) = self.0.take() {
                let _ = failed.send(());
            }
            Box::pin(async {
                Err(SinkError::Other {
                    sink: "down",
                    message: "unreachable".into(),
                })
            })
        }
    }

    const LONG: Duration = Duration::from_secs(3600);
    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::try_new(ms(100), ms(350)).unwrap();
        let delays: Vec<_> = (0..4).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(350), ms(350)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        let mut huge = Backoff::try_new(Duration::MAX, Duration::MAX).unwrap();
        assert_eq!(huge.next_delay(), Duration::MAX);
        assert_eq!(huge.next_delay(), Duration::MAX);
    }

    #[test]
    fn invalid_backoffs_are_refused() {
        assert_eq!(
            Backoff::try_new(Duration::ZERO, LONG),
            Err(InvalidBackoff::ZeroInitial)
        );
        let e = Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the maximum backoff (1s) must be at least the initial backoff (2s)"
        );
    }

    #[tokio::test]
    async fn retries_with_growing_delays_until_delivered() {
        let ms = Duration::from_millis;
        let mut sink = FlakySink::new(&["one", "two", "three"]);
        let mut backoff = Backoff::try_new(ms(5), ms(15)).unwrap();
        let (_tx, rx) = watch::channel(false);
        let mut seen = Vec::new();
        let batch = [];
        deliver_with_retry(&mut sink, &batch, &mut backoff, &rx, |e| {
            seen.push(e.to_string())
        })
        .await
        .unwrap();
        assert_eq!(seen, ["flaky: one", "flaky: two", "flaky: three"]);
        let gaps: Vec<_> = sink.attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 3);
        for (gap, min) in gaps.iter().zip([ms(5), ms(10), ms(15)]) {
            assert!(*gap >= min, "waited {gap:?}, expected at least {min:?}");
        }
        assert_eq!(backoff, Backoff::try_new(ms(5), ms(15)).unwrap(), "reset");
    }

    #[tokio::test]
    async fn shutdown_while_failing_returns_the_last_error() {
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut sink = DownSink(Some(failed_tx));
            let mut backoff = Backoff::try_new(LONG, LONG).unwrap();
            let mut errors = 0;
            let result =
                deliver_with_retry(&mut sink, &[], &mut backoff, &stop_rx, |_| errors += 1).await;
            (result, errors)
        });
        failed_rx.await.unwrap();
        stop_tx.send(true).unwrap();
        let (result, errors) = tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("retry loop stopped on shutdown")
            .unwrap();
        assert_eq!(result.unwrap_err().to_string(), "down: unreachable");
        assert_eq!(errors, 1);
    }

    #[tokio::test]
    async fn a_dropped_shutdown_sender_counts_as_shutdown() {
        let (stop_tx, stop_rx) = watch::channel(false);
        drop(stop_tx);
        let mut backoff = Backoff::try_new(LONG, LONG).unwrap();
        let mut sink = DownSink(None);
        let retry = deliver_with_retry(&mut sink, &[], &mut backoff, &stop_rx, |_| {});
        let result = tokio::time::timeout(TIMEOUT, retry).await.expect("no wait");
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn after_shutdown_a_batch_is_still_attempted_once() {
        let (_stop_tx, stop_rx) = watch::channel(true);
        let mut backoff = Backoff::try_new(LONG, LONG).unwrap();
        let mut sink = FlakySink::new(&[]);
        deliver_with_retry(&mut sink, &[], &mut backoff, &stop_rx, |_| {})
            .await
            .unwrap();
        let mut sink = FlakySink::new(&["full"]);
        let result = deliver_with_retry(&mut sink, &[], &mut backoff, &stop_rx, |_| {}).await;
        assert!(result.is_err());
        assert_eq!(sink.attempts.len(), 1);
    }
}
