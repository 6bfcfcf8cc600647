//! The OTLP sink: exchanges as OpenTelemetry log records, exported to a collector (or any OTLP
//! receiver) over OTLP/gRPC or OTLP/HTTP with protobuf bodies.
//!
//! [`OtlpSinkConfig`] (in [`config`]) is the `sink:` section; [`OtlpSink::connect`] checks it,
//! opens the connection and makes a test export; [`Sink::deliver`] exports a batch. Each exchange
//! becomes one `LogRecord` (see `mapping.rs` and `docs/otlp.md`), all of a batch under one
//! `ResourceLogs` (the agent: `service.name`, `service.version`, the node) and one `ScopeLogs`
//! (`meshtap`).
//!
//! # Why not the OpenTelemetry SDK's exporter
//!
//! The agent checkpoints a batch only after [`Sink::deliver`] returned `Ok`, so `Ok` must mean
//! "the collector accepted these records". The SDK's logs pipeline cannot say that: records go
//! through a batch processor that exports in the background on its own schedule, and an export
//! that fails is reported to the SDK's internal log, never to whoever emitted the record. So this
//! sink builds the `ExportLogsServiceRequest` itself with `opentelemetry-proto`'s types and sends it
//! with the generated `LogsServiceClient::export` (gRPC) or one HTTP POST (HTTP): one call, one
//! answer, per request.
//!
//! # Acknowledgement
//!
//! `deliver` returns `Ok` only when every request of the batch was answered with success and no
//! rejected records. A `partial_success` with `rejected_log_records > 0` is an error carrying the
//! collector's message: the agent retries the whole batch, and the records the collector had
//! accepted arrive again. Duplicates are identical and carry the same `meshtap.id`, so they can be
//! removed downstream, as with every at-least-once sink of the agent.
//!
//! # Request size
//!
//! Collectors refuse messages above a limit (the OpenTelemetry Collector: 4 MiB by default), and a
//! refused batch would be retried forever. A batch is therefore sent as several requests of at most
//! `max_request_bytes` (encoded), in order; a single record larger than that has its bodies cut to
//! fit, with `body_truncated` and a `truncated_reason` saying so.
//!
//! # Outages
//!
//! Every export is bounded by `timeout_ms`, connecting included. While the collector is down or
//! slow, `deliver` fails within that time and the agent retries with backoff (reading pauses once
//! its queue is full: nothing is dropped). The gRPC channel and the HTTP connection are re-opened
//! by the next export after the collector is back.

pub mod config;
pub(crate) mod mapping;
mod transport;

#[cfg(test)]
mod tests;

pub use config::{OtlpProtocol, OtlpSinkConfig, OtlpTlsConfig};

use std::fmt;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use self::mapping::{AgentIdentity, BodyBudget};
use self::transport::Transport;
use super::{BoxFuture, Sink, SinkError};
use crate::record::Exchange;

const NAME: &str = "otlp";

/// Room left for the length prefixes of `ResourceLogs` and `ScopeLogs`, which grow with their
/// content (at most 5 bytes each below 4 GiB).
const ENVELOPE_SLACK: usize = 16;

/// Room for what grows when a cut record's bodies go from 0 bytes to their budget: the digits in
/// the truncation reason and the bodies' length prefixes.
const CUT_SLACK: usize = 64;

/// Exports exchanges as OTLP log records; see the module doc.
pub struct OtlpSink {
    config: OtlpSinkConfig,
    identity: AgentIdentity,
    resource: Resource,
    transport: Transport,
}

impl OtlpSink {
    /// Validates `config`, prepares the connection and makes one empty export to check, within
    /// `timeout_ms`, that the collector is there and accepts OTLP logs (and the headers). The error
    /// names the endpoint. The node name comes from the `NODE_NAME` environment variable.
    pub async fn connect(config: OtlpSinkConfig) -> Result<Self, SinkError> {
        Self::connect_as(config, AgentIdentity::from_env()).await
    }

    /// [`OtlpSink::connect`] with the agent's identity given rather than read from the
    /// environment.
    pub(crate) async fn connect_as(
        config: OtlpSinkConfig,
        identity: AgentIdentity,
    ) -> Result<Self, SinkError> {
        config.validate().map_err(other)?;
        let transport = Transport::new(&config).map_err(other)?;
        let mut sink = OtlpSink {
            resource: mapping::resource(&config, &identity),
            config,
            identity,
            transport,
        };
        sink.export(ExportLogsServiceRequest::default(), 0)
            .await
            .map_err(|detail| {
                other(format!(
                    "startup check of the OTLP collector at {} ({}) failed: {detail}",
                    sink.config.endpoint,
                    sink.config.protocol.as_str()
                ))
            })?;
        tracing::info!(
            endpoint = %sink.config.endpoint,
            protocol = sink.config.protocol.as_str(),
            "OTLP collector reachable."
        );
        Ok(sink)
    }

    /// Sends the batch as export requests of at most `max_request_bytes` each, one after the
    /// other, each built just before it is sent (so at most one request's worth of copies is held).
    async fn deliver_batch(&mut self, batch: &[Exchange]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let observed = mapping::now_unix_nano();
        let limit = self.config.max_request_bytes;
        let base = self.request(Vec::new()).encoded_len() + ENVELOPE_SLACK;
        let room = limit.saturating_sub(base);
        let mut records = Vec::new();
        let mut first = 0;
        let mut size = base;
        for (i, exchange) in batch.iter().enumerate() {
            let record = self.fitted_record(exchange, observed, room);
            let len = framed_len(&record);
            if !records.is_empty() && size + len > limit {
                self.send(std::mem::take(&mut records), first, batch.len())
                    .await?;
                first = i;
                size = base;
            }
            size += len;
            records.push(record);
        }
        self.send(records, first, batch.len()).await
    }

    /// Exports `records`, which start at index `first` of a batch of `total`.
    async fn send(
        &mut self,
        records: Vec<LogRecord>,
        first: usize,
        total: usize,
    ) -> Result<(), SinkError> {
        let count = records.len();
        let what = if count == total {
            format!("{count} records")
        } else {
            format!(
                "records {}-{} of a batch of {total}",
                first + 1,
                first + count
            )
        };
        self.export(self.request(records), count)
            .await
            .map_err(|detail| {
                other(format!(
                    "export of {what} to {} failed: {detail}",
                    self.config.endpoint
                ))
            })
    }

    /// The exchange's record, with its bodies cut if it would not fit in `room` bytes otherwise.
    fn fitted_record(&self, exchange: &Exchange, observed: u64, room: usize) -> LogRecord {
        let record = mapping::log_record(exchange, &self.identity, observed, None);
        if framed_len(&record) <= room {
            return record;
        }
        let budget = |bytes| {
            Some(BodyBudget {
                bytes,
                max_request_bytes: self.config.max_request_bytes,
            })
        };
        let bare = mapping::log_record(exchange, &self.identity, observed, budget(0));
        let bytes = room.saturating_sub(framed_len(&bare) + CUT_SLACK);
        let cut = mapping::log_record(exchange, &self.identity, observed, budget(bytes));
        if framed_len(&cut) <= room {
            return cut;
        }
        tracing::warn!(
            id = %exchange.id,
            bytes = framed_len(&bare),
            max_request_bytes = self.config.max_request_bytes,
            "Exchange too large for an OTLP request even without bodies; sending it anyway."
        );
        bare
    }

    /// One request: the agent's resource, the `meshtap` scope, `records`.
    fn request(&self, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(mapping::scope()),
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// Sends one request within `timeout_ms`; `Ok` only when the collector accepted every record.
    async fn export(
        &mut self,
        request: ExportLogsServiceRequest,
        records: usize,
    ) -> Result<(), String> {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let response = match tokio::time::timeout(timeout, self.transport.export(request)).await {
            Ok(response) => response?,
            Err(_) => {
                self.transport.reset();
                return Err(format!("no answer within {} ms", self.config.timeout_ms));
            }
        };
        let Some(partial) = response.partial_success else {
            return Ok(());
        };
        if partial.rejected_log_records > 0 {
            return Err(format!(
                "the collector rejected {} of {records} log records: {}",
                partial.rejected_log_records,
                if partial.error_message.is_empty() {
                    "no reason given"
                } else {
                    &partial.error_message
                }
            ));
        }
        if !partial.error_message.is_empty() {
            tracing::warn!(
                endpoint = %self.config.endpoint,
                message = %partial.error_message,
                "The OTLP collector accepted the records with a warning."
            );
        }
        Ok(())
    }
}

/// Bytes a record takes inside `ScopeLogs`: field tag, length prefix, message.
fn framed_len(record: &LogRecord) -> usize {
    let len = record.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

fn other(message: impl Into<String>) -> SinkError {
    SinkError::Other {
        sink: NAME,
        message: message.into(),
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn deliver<'a>(&'a mut self, batch: &'a [Exchange]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.deliver_batch(batch))
    }
}

impl fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpSink")
            .field("endpoint", &self.config.endpoint)
            .field("protocol", &self.config.protocol)
            .finish_non_exhaustive()
    }
}
