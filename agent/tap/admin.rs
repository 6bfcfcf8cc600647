//! The admin stream: `POST /tap` to an Envoy's admin port, then one JSON trace per tapped stream
//! until meshtap disconnects. The admin port of an Istio sidecar listens on 127.0.0.1 inside the
//! pod's network namespace, so the connection is made from a thread that entered that namespace
//! ([`crate::netns::spawn_in`]); the connected socket stays in the pod's namespace and is then
//! driven by tokio and hyper like any other.
//!
//! Envoy serves one attached admin tap stream at a time: a second client gets
//! "An attached /tap admin stream already exists", reported as [`TapError::AlreadyAttached`].
//! Disconnects (Envoy restarting, the pod's sidecar being replaced) are retried with backoff;
//! dropping the connection detaches the tap, so shutdown needs nothing more.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};

use super::config::TapRequest;
use super::trace::{self, JsonTraceStream, Origin};
use crate::netns::{self, NetnsError};
use crate::record::{Exchange, K8sMeta};
use crate::sink::Backoff;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("{target}: another client holds Envoy's admin tap stream (Envoy answered \"An attached /tap admin stream already exists\"); Envoy serves one at a time: stop the other client (a person running curl .../tap, or another meshtap) and try again")]
    AlreadyAttached { target: String },
    #[error("{target}: no tap filter with config_id {config_id:?} in this Envoy (is the tap EnvoyFilter applied to the workload? see deploy/envoyfilter-tap.yaml): {message}")]
    UnknownConfigId {
        target: String,
        config_id: String,
        message: String,
    },
    #[error("{target}: Envoy refused the tap request ({status}): {message}")]
    Refused {
        target: String,
        status: u16,
        message: String,
    },
    // The causes are part of the message (not `#[source]`), so `{:#}` does not print them twice.
    #[error("{target}: cannot connect to Envoy's admin port: {error}")]
    Connect {
        target: String,
        error: std::io::Error,
    },
    #[error("{target}: {error}")]
    Netns { target: String, error: NetnsError },
    #[error("{target}: HTTP error on the admin connection: {error}")]
    Http { target: String, error: hyper::Error },
    #[error("{target}: the tap stream is not a sequence of JSON traces: {message}")]
    Stream { target: String, message: String },
}

/// Where Envoy's admin listens, and how to reach it.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    /// The admin address as seen from inside `netns` (`127.0.0.1:15000` in an Istio sidecar).
    pub addr: SocketAddr,
    /// The network namespace to connect from; `None` for the caller's own.
    pub netns: Option<PathBuf>,
    /// Who is being tapped, for messages and `log.file`: `ns/pod`, a netns path, or the address.
    pub label: String,
    /// Identity of the pod, when known (`--pod`): goes into every record.
    pub k8s: Option<K8sMeta>,
}

impl AdminTarget {
    /// `log.file` of the records: `envoy-admin://<label>/<addr>`.
    fn log_file(&self) -> String {
        if self.label == self.addr.to_string() {
            format!("envoy-admin://{}", self.addr)
        } else {
            format!("envoy-admin://{}/{}", self.label, self.addr)
        }
    }
}

/// How the session treats failures.
#[derive(Debug, Clone)]
pub struct Retry {
    /// First and longest wait between attempts.
    pub initial: Duration,
    pub max: Duration,
    /// Give up when the very first attempt fails (the CLI: a wrong address should not hang).
    pub fail_first: bool,
    /// Keep retrying while another client holds the stream (the agent) instead of failing (the CLI).
    pub retry_attached: bool,
    /// Even without `retry_attached`, "already exists" is retried this long after starting: Envoy
    /// notices a closed admin stream asynchronously, so a client that just left may still hold it.
    pub attached_grace: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            fail_first: true,
            retry_attached: false,
            attached_grace: Duration::from_secs(2),
        }
    }
}

/// What a session did, for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SessionStats {
    /// Successful attaches (1 plus reconnects).
    pub attached: u64,
    pub traces: u64,
    /// Traces that were not buffered HTTP traces (streamed segments, socket traces), or unreadable.
    pub skipped: u64,
}

/// Traces larger than this are refused (the stream is reset and retried): the buffer limits
/// plus room for headers, with base64 inflating bodies by 4/3.
fn max_trace_bytes(request: &TapRequest) -> usize {
    let bodies =
        u64::from(request.max_buffered_rx_bytes) + u64::from(request.max_buffered_tx_bytes);
    usize::try_from(bodies * 4 / 3 + (4 << 20)).unwrap_or(usize::MAX)
}

/// Connects to `target.addr` from inside `target.netns` (on a dedicated thread that entered it).
async fn connect(target: &AdminTarget) -> Result<tokio::net::TcpStream, TapError> {
    let addr = target.addr;
    let connect_error = |error| TapError::Connect {
        target: target.label.clone(),
        error,
    };
    let std_stream = match &target.netns {
        None => std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)),
        Some(path) => {
            let netns_error = |error| TapError::Netns {
                target: target.label.clone(),
                error,
            };
            let ns = netns::Netns::open(path).map_err(netns_error)?;
            let handle = netns::spawn_in(ns, "meshtap-tap-connect", move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            })
            .map_err(netns_error)?;
            // The thread only connects (bounded by the timeout); joining it off the runtime.
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .expect("join task")
                .map_err(|_| connect_error(std::io::Error::other("the connect thread panicked")))?
                .map_err(netns_error)?
        }
    }
    .map_err(connect_error)?;
    std_stream.set_nonblocking(true).map_err(connect_error)?;
    tokio::net::TcpStream::from_std(std_stream).map_err(connect_error)
}

/// Why one attached session ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Shutdown,
    /// The receiver of the records is gone (the CLI has its `--count`).
    ReceiverGone,
    /// Envoy closed the stream (restart, drain).
    Disconnected,
}

/// Streams traces from `target` into `tx` until `shutdown` is set or `tx`'s receiver is dropped,
/// reconnecting after disconnects as `retry` says.
pub async fn run(
    target: &AdminTarget,
    request: &TapRequest,
    retry: &Retry,
    tx: mpsc::Sender<Exchange>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SessionStats, TapError> {
    let mut stats = SessionStats::default();
    let mut backoff = Backoff::try_new(retry.initial, retry.max).expect("valid tap backoff");
    let started = std::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return Ok(stats);
        }
        let outcome = session(target, request, &tx, &mut shutdown, &mut stats).await;
        match outcome {
            Ok(End::Shutdown | End::ReceiverGone) => return Ok(stats),
            Ok(End::Disconnected) => {
                backoff.reset();
                tracing::warn!(target = %target.label, "Envoy closed the tap stream; reconnecting.");
            }
            Err(e @ TapError::AlreadyAttached { .. })
                if !retry.retry_attached && started.elapsed() >= retry.attached_grace =>
            {
                return Err(e)
            }
            Err(e @ TapError::AlreadyAttached { .. }) => tracing::info!(error = %e, "Retrying."),
            Err(e @ TapError::UnknownConfigId { .. }) if stats.attached == 0 => return Err(e),
            Err(e) if retry.fail_first && stats.attached == 0 => return Err(e),
            Err(e) => tracing::warn!(error = %e, "Tap stream failed; retrying."),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Ok(stats),
        }
    }
}

async fn session(
    target: &AdminTarget,
    request: &TapRequest,
    tx: &mpsc::Sender<Exchange>,
    shutdown: &mut watch::Receiver<bool>,
    stats: &mut SessionStats,
) -> Result<End, TapError> {
    let label = || target.label.clone();
    let http = |error| TapError::Http {
        target: label(),
        error,
    };
    let stream = connect(target).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // Dropping the connection task (when this function returns) closes the socket: Envoy detaches.
    let connection = tokio::spawn(connection);
    let _abort = AbortOnDrop(connection);
    let body = serde_json::to_vec(&request.to_json()).expect("tap request serializes");
    let post = hyper::Request::post("/tap")
        .header(hyper::header::HOST, target.addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid request");
    let response = sender.send_request(post).await.map_err(http)?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let mut message = Vec::new();
        while message.len() < 4096 {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        message.extend_from_slice(&data);
                    }
                }
                _ => break,
            }
        }
        let message = String::from_utf8_lossy(&message).trim().to_string();
        return Err(if message.contains("admin stream already exists") {
            TapError::AlreadyAttached { target: label() }
        } else if message.contains("Unknown config id") {
            TapError::UnknownConfigId {
                target: label(),
                config_id: request.config_id.clone(),
                message,
            }
        } else {
            TapError::Refused {
                target: label(),
                status: status.as_u16(),
                message,
            }
        });
    }
    stats.attached += 1;
    let connected_at = chrono::Utc::now();
    tracing::info!(target = %target.label, addr = %target.addr, config_id = %request.config_id, "Attached to Envoy's admin tap stream.");
    let session_key = format!(
        "{}|{}",
        target
            .k8s
            .as_ref()
            .map_or(target.label.as_str(), |k| k.pod_uid.as_str()),
        connected_at.timestamp_nanos_opt().unwrap_or_default()
    );
    let log_file = target.log_file();
    let mut traces = JsonTraceStream::new(max_trace_bytes(request));
    let mut ordinal = 0u64;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(End::Shutdown),
            () = tx.closed() => return Ok(End::ReceiverGone),
        };
        let data = match frame {
            None => return Ok(End::Disconnected),
            Some(Err(e)) => return Err(http(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers: none expected
            },
        };
        let complete = traces.push(&data).map_err(|message| TapError::Stream {
            target: label(),
            message,
        })?;
        for trace in complete {
            match trace {
                Ok(trace) => {
                    let origin = Origin {
                        file: log_file.clone(),
                        ordinal,
                        id: trace::trace_id(&[session_key.as_bytes(), &ordinal.to_le_bytes()]),
                        k8s: target.k8s.clone(),
                        received: chrono::Utc::now(),
                    };
                    ordinal += 1;
                    stats.traces += 1;
                    if tx.send(trace::to_exchange(trace, origin)).await.is_err() {
                        return Ok(End::ReceiverGone);
                    }
                }
                Err(e) => {
                    stats.skipped += 1;
                    tracing::warn!(target = %target.label, error = %e, "Skipped a tap message.");
                }
            }
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
