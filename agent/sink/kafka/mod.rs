//! The Kafka sink: one message per exchange, produced with librdkafka (the `rdkafka` crate's
//! [`FutureProducer`]). The record mapping, delivery semantics and every setting are in
//! `docs/kafka.md`.
//!
//! - [`config`]: [`KafkaSinkConfig`], the `sink:` section with `type: kafka`.
//! - [`topic`]: the topic template (`meshtap.{namespace}`).
//! - `message`: an exchange as value (the record's JSON), key (its id), headers; oversize
//!   records cut to fit or rejected.
//!
//! # Acknowledgement
//!
//! [`Sink::submit`] enqueues every message of the batch and returns what awaits every delivery
//! report of it, which resolves `Ok` only when the brokers acknowledged all of them (with
//! `acks: all`, every in-sync replica). Up to `batches_in_flight` batches are submitted before
//! the oldest is acknowledged, so encoding, librdkafka's compression and the broker's round trip
//! overlap; the agent acknowledges batches (and checkpoints) in their order all the same.
//! librdkafka retries on its own (across broker outages too) for up to `message_timeout_ms`; only
//! then does a message fail and the batch with it. The agent then
//! delivers the whole batch again, so messages of a partly failed batch can arrive twice. Their
//! key is the exchange id, so consumers drop duplicates by key. A failed batch is retried with a
//! new producer, so that no state wedged inside librdkafka (a fatal idempotence error, a producer
//! id the brokers forgot) outlives the failure; the later batches still in flight on the old
//! producer are then purged with it and sent again in turn. So after a failure, messages of later
//! batches can reach the topic before those of the failed one: order holds between batches only
//! while nothing fails (within a partition, librdkafka's idempotence keeps each batch's order).
//!
//! A full local queue (`QueueFull`) is backpressure: the sink awaits the oldest delivery of the
//! batch, then enqueues again. A record rejected as oversized is counted ([`KafkaSink::rejected`])
//! and logged, and the rest of the batch is delivered: it never stalls the agent.

pub mod config;
mod message;
pub mod topic;

#[cfg(test)]
mod tests;

pub use config::{Acks, Compression, KafkaKey, KafkaSinkConfig, Oversize};
pub use topic::TopicTemplate;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use tracing::warn;

use self::message::{Encoded, Message};
use super::{BoxFuture, Pending, Sink, SinkError};
use crate::record::Exchange;

const NAME: &str = "kafka";

/// While the brokers have not acknowledged a batch, a warning this often says how many messages
/// are still waiting (librdkafka keeps retrying; the batch is not failed before
/// `message_timeout_ms`).
const WAITING_WARNING: Duration = Duration::from_secs(30);

/// Wait before enqueueing again after `QueueFull` when no delivery of this batch is in flight
/// (the queue is full of an abandoned earlier attempt's messages).
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(100);

/// Produces each exchange as one Kafka message. Built with [`KafkaSink::connect`].
pub struct KafkaSink {
    config: KafkaSinkConfig,
    producer: FutureProducer<Context>,
    /// Shared with the batches in flight, which update them when they settle.
    counts: Arc<Counts>,
}

/// What the batches in flight report back to the sink.
#[derive(Debug, Default)]
struct Counts {
    /// A batch failed: the next one gets a new producer.
    renew: AtomicBool,
    rejected: AtomicU64,
    truncated: AtomicU64,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("brokers", &self.config.brokers)
            .field("topic", &self.config.topic.to_string())
            .field("rejected", &self.rejected())
            .field("truncated", &self.truncated())
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// Validates `config`, creates the producer and checks that the brokers answer: their
    /// metadata must arrive within `connect_timeout_ms`, else the error names the brokers.
    pub async fn connect(config: KafkaSinkConfig) -> Result<Self, SinkError> {
        config.validate().map_err(other)?;
        let producer = create_producer(&config)?;
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let client = producer.clone();
        // A blocking librdkafka call: off the async threads.
        let metadata =
            tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, timeout))
                .await
                .map_err(|e| other(format!("the broker check did not finish: {e}")))?;
        let unreachable = |why: String| {
            other(format!(
                "cannot reach the Kafka brokers {} within {} ms (sink.connect_timeout_ms): {why}",
                config.brokers, config.connect_timeout_ms
            ))
        };
        match metadata {
            Ok(m) if !m.brokers().is_empty() => {}
            Ok(_) => return Err(unreachable("their metadata lists no broker".into())),
            Err(e) => return Err(unreachable(e.to_string())),
        }
        Ok(KafkaSink {
            config,
            producer,
            counts: Arc::default(),
        })
    }

    /// Records not sent because they were larger than `max_message_bytes` (under
    /// `oversize: reject`, or too large even with empty bodies), in the batches delivered since
    /// the sink was built.
    pub fn rejected(&self) -> u64 {
        self.counts.rejected.load(Ordering::Relaxed)
    }

    /// Records sent with bodies cut to fit `max_message_bytes`, in the batches delivered since the
    /// sink was built.
    pub fn truncated(&self) -> u64 {
        self.counts.truncated.load(Ordering::Relaxed)
    }

    /// The settings the sink runs with.
    pub fn config(&self) -> &KafkaSinkConfig {
        &self.config
    }

    /// Encodes and enqueues every message of `batch`; the returned future awaits their delivery
    /// reports (see the module doc).
    async fn submit_batch(&mut self, batch: &[Exchange]) -> Result<Pending, SinkError> {
        if self.counts.renew.swap(false, Ordering::Relaxed) {
            self.renew_producer()?;
        }
        let mut messages = Vec::with_capacity(batch.len());
        // Counted once the batch is delivered, so that a retried batch does not count twice.
        let (mut truncated, mut rejected) = (0, 0);
        for record in batch {
            let encoded = message::encode(record, &self.config)
                .map_err(|e| other(format!("cannot serialize exchange {}: {e}", record.id)))?;
            match encoded {
                Encoded::Whole(message) => messages.push(message),
                Encoded::Truncated { message, size } => {
                    truncated += 1;
                    warn!(
                        sink = NAME,
                        id = %record.id,
                        size,
                        max_message_bytes = self.config.max_message_bytes,
                        "Cut the bodies of an exchange larger than max_message_bytes."
                    );
                    messages.push(message);
                }
                Encoded::Rejected { size, why } => {
                    rejected += 1;
                    warn!(
                        sink = NAME,
                        id = %record.id,
                        size,
                        max_message_bytes = self.config.max_message_bytes,
                        "Did not send an exchange {why}."
                    );
                }
            }
        }
        let mut outcome = Outcome::new(messages.len());
        let mut in_flight = VecDeque::with_capacity(messages.len());
        for message in &mut messages {
            let mut record = to_record(message);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        in_flight.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // Backpressure: wait for room, never spin.
                        record = back;
                        match in_flight.pop_front() {
                            Some(delivery) => {
                                outcome.note(settle(delivery, &self.config.brokers).await)
                            }
                            None => tokio::time::sleep(QUEUE_FULL_PAUSE).await,
                        }
                    }
                    Err((error, _)) => {
                        outcome.fail(error.to_string());
                        break;
                    }
                }
            }
        }
        let brokers = self.config.brokers.clone();
        let counts = self.counts.clone();
        Ok(Box::pin(async move {
            while let Some(delivery) = in_flight.pop_front() {
                outcome.note(settle(delivery, &brokers).await);
            }
            let result = outcome.result(&brokers);
            match result {
                Ok(()) => {
                    counts.truncated.fetch_add(truncated, Ordering::Relaxed);
                    counts.rejected.fetch_add(rejected, Ordering::Relaxed);
                }
                Err(_) => counts.renew.store(true, Ordering::Relaxed),
            }
            result
        }))
    }

    /// Replaces the producer after a failed batch (every delivery report of it has come by then),
    /// so that no state wedged inside librdkafka outlives a failure: a fatal error of the
    /// idempotent producer, or a producer id that a broker which lost its data no longer knows
    /// (librdkafka then bumps the epoch locally and is refused again until `message_timeout_ms`).
    fn renew_producer(&mut self) -> Result<(), SinkError> {
        let fresh = match create_producer(&self.config) {
            Ok(fresh) => fresh,
            Err(error) => {
                self.counts.renew.store(true, Ordering::Relaxed);
                return Err(error);
            }
        };
        let old = std::mem::replace(&mut self.producer, fresh);
        warn!(
            sink = NAME,
            brokers = %self.config.brokers,
            fatal_error = ?old.client().fatal_error(),
            "Retrying with a new Kafka producer after a failed batch."
        );
        // Dropping a producer purges its queue and joins its thread: not on an async thread.
        tokio::task::spawn_blocking(move || drop(old));
        Ok(())
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn deliver<'a>(&'a mut self, batch: &'a [Exchange]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.submit_batch(batch).await?.await })
    }

    fn submit<'a>(
        &'a mut self,
        batch: &'a [Exchange],
    ) -> BoxFuture<'a, Result<Pending, SinkError>> {
        Box::pin(self.submit_batch(batch))
    }

    fn max_in_flight(&self) -> usize {
        self.config.batches_in_flight
    }

    fn rejected_count(&self) -> u64 {
        self.rejected()
    }
}

/// Awaits one delivery report (`Err` with the reason when the message was not delivered),
/// warning every [`WAITING_WARNING`] while it does not come.
async fn settle(delivery: DeliveryFuture, brokers: &str) -> Result<(), String> {
    tokio::pin!(delivery);
    loop {
        match tokio::time::timeout(WAITING_WARNING, &mut delivery).await {
            Ok(Ok(Ok(_))) => return Ok(()),
            Ok(Ok(Err((error, _)))) => return Err(error.to_string()),
            Ok(Err(_)) => return Err("the producer was closed".into()),
            Err(_) => warn!(
                sink = NAME,
                brokers,
                "The Kafka brokers have not acknowledged a batch yet; librdkafka keeps retrying \
                 until message_timeout_ms."
            ),
        }
    }
}

/// The record to send for `message`, whose headers move into it (librdkafka takes them over).
fn to_record<'m>(message: &'m mut Message<'_>) -> FutureRecord<'m, str, [u8]> {
    let mut record = FutureRecord::to(&message.topic).payload(message.value.as_slice());
    if let Some(headers) = message.headers.take() {
        record = record.headers(headers);
    }
    match message.key {
        Some(key) => record.key(key),
        None => record,
    }
}

/// How the messages of one batch fared.
struct Outcome {
    messages: usize,
    failed: usize,
    first_error: Option<String>,
}

impl Outcome {
    fn new(messages: usize) -> Self {
        Outcome {
            messages,
            failed: 0,
            first_error: None,
        }
    }

    fn fail(&mut self, error: String) {
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }

    fn note(&mut self, report: Result<(), String>) {
        if let Err(error) = report {
            self.fail(error);
        }
    }

    fn result(self, brokers: &str) -> Result<(), SinkError> {
        match self.first_error {
            None => Ok(()),
            Some(error) => Err(other(format!(
                "{} of {} messages were not acknowledged by the brokers {brokers} (first error: \
                 {error})",
                self.failed, self.messages
            ))),
        }
    }
}

/// The producer's callbacks: librdkafka's client-level errors (a broker down, refused
/// connections, DNS failures), which it retries by itself, become warnings naming the brokers. Each
/// kind of error is logged at most every [`WAITING_WARNING`], with the count of repeats since.
struct Context {
    brokers: String,
    logged: Mutex<Vec<LoggedError>>,
}

/// When a kind of client error was last logged, and how many followed unlogged.
struct LoggedError {
    code: Option<RDKafkaErrorCode>,
    at: Instant,
    repeats: u64,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        let repeats = match logged.iter_mut().find(|l| l.code == code) {
            Some(last) if last.at.elapsed() < WAITING_WARNING => {
                last.repeats += 1;
                return;
            }
            Some(last) => {
                let repeats = last.repeats;
                (last.at, last.repeats) = (Instant::now(), 0);
                repeats
            }
            None => {
                logged.push(LoggedError {
                    code,
                    at: Instant::now(),
                    repeats: 0,
                });
                0
            }
        };
        drop(logged);
        warn!(
            sink = NAME,
            brokers = %self.brokers,
            %error,
            reason,
            repeats,
            "Kafka client error; librdkafka keeps retrying."
        );
    }
}

fn create_producer(config: &KafkaSinkConfig) -> Result<FutureProducer<Context>, SinkError> {
    let context = Context {
        brokers: config.brokers.clone(),
        logged: Mutex::new(Vec::new()),
    };
    config
        .client_config()
        .create_with_context(context)
        .map_err(|e| other(format!("cannot create the Kafka producer: {e}")))
}

fn other(message: impl Into<String>) -> SinkError {
    SinkError::Other {
        sink: NAME,
        message: message.into(),
    }
}
