//! The deliver task: batches from the reader go to the sink in order, retried with backoff until
//! the sink acknowledges them (nothing is dropped); each acknowledgement goes back to the reader,
//! which may then write a checkpoint covering that batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{Ack, Batch};
use crate::ops::{Metrics, OpsState};
use crate::sink::{deliver_with_retry, Backoff, ConfiguredSink, Sink};

/// A batch not acknowledged for this long means the backend is down or too slow: the agent says
/// so on /readyz and in `meshtap_sink_up`, even while the sink itself is still waiting (Kafka's
/// producer waits up to `message_timeout_ms` before it reports a failure).
const STALL: Duration = Duration::from_secs(10);

/// First retry after 100 ms, doubling up to 30 s: quick recovery from a blip, no hammering of a
/// backend that is down.
fn backoff() -> Backoff {
    Backoff::try_new(Duration::from_millis(100), Duration::from_secs(30)).expect("valid backoff")
}

pub async fn deliver(
    mut sink: ConfiguredSink,
    mut batches: mpsc::Receiver<Batch>,
    acks: std::sync::mpsc::Sender<Ack>,
    metrics: Arc<Metrics>,
    ops: Arc<OpsState>,
    shutdown: watch::Receiver<bool>,
) {
    let name = sink.name();
    metrics.sink_up(name, true);
    let mut rejected = 0;
    while let Some(batch) = batches.recv().await {
        let started = Instant::now();
        let mut backoff = backoff();
        let result = {
            let delivery = deliver_with_retry(
                &mut sink,
                &batch.exchanges,
                &mut backoff,
                &shutdown,
                |error| {
                    tracing::warn!(sink = name, %error, "Could not deliver a batch; retrying.");
                    metrics.sink_batch(name, false, 0, started.elapsed());
                    metrics.sink_up(name, false);
                    ops.set_not_ready_reason(Some(format!("sink {name} is failing: {error}")));
                },
            );
            tokio::pin!(delivery);
            tokio::select! {
                result = &mut delivery => result,
                _ = tokio::time::sleep(STALL) => {
                    tracing::warn!(sink = name, seconds = STALL.as_secs(), "A batch is still not acknowledged; reading pauses when the queue is full.");
                    metrics.sink_up(name, false);
                    ops.set_not_ready_reason(Some(format!(
                        "sink {name} has not acknowledged a batch for {}s",
                        STALL.as_secs()
                    )));
                    delivery.await
                }
            }
        };
        if result.is_err() {
            tracing::warn!(
                sink = name,
                records = batch.exchanges.len(),
                "Stopped retrying at shutdown; the batch will be read again after a restart."
            );
            break;
        }
        metrics.sink_batch(name, true, batch.exchanges.len() as u64, started.elapsed());
        let now_rejected = sink.rejected();
        metrics.skipped(
            crate::ops::metrics::skip::SINK_REJECTED,
            now_rejected - rejected,
        );
        rejected = now_rejected;
        metrics.sink_up(name, true);
        ops.set_not_ready_reason(None);
        let ack = Ack {
            seq: batch.seq,
            sink_position: sink.position(),
        };
        if acks.send(ack).is_err() {
            break;
        }
    }
}
