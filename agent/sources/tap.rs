//! Agent mode of the tap source: the capture supervisor ([`super::supervisor::Supervisor`]) attaches
//! to the admin `/tap` stream of selected pods' sidecars instead of reading packets. The sidecar
//! needs Envoy's tap filter with an `admin_config` (see docs/tap.md); its admin port listens on
//! 127.0.0.1 inside the pod, so the agent connects from a thread that entered the pod's network
//! namespace ([`crate::tap::admin`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::ops::Metrics;
use crate::record::{Exchange, K8sMeta};
use crate::tap::admin::{self, AdminTarget, Retry};
use crate::tap::config::{TapRequest, DEFAULT_CONFIG_ID, DEFAULT_MAX_BUFFERED_BYTES};

/// `tap:` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TapConfig {
    /// Attach to the admin /tap of pods whose sidecar logs no exchanges (and the pods below).
    pub enabled: bool,
    /// Envoy's admin port inside the pod (Istio: 15000, on 127.0.0.1).
    pub admin_port: u16,
    /// The tap filter's `admin_config.config_id`.
    pub config_id: String,
    /// Body bytes Envoy buffers per direction before it cuts and flags them.
    pub max_buffered_bytes: u32,
    /// Seconds a pod's sidecar log is tailed without a Lua exchange before it is tapped.
    pub idle_before_tap_seconds: u64,
    /// Pods tapped at once on this node.
    pub max_pods: usize,
    /// Pods (`NAMESPACE/NAME`) always tapped while they run on this node.
    pub pods: Vec<String>,
    /// Tapped exchanges waiting for the reader; more are dropped and counted.
    pub queue_records: usize,
    /// The host's /proc (hostPID), where pods' processes are found.
    pub proc_root: PathBuf,
}

impl Default for TapConfig {
    fn default() -> Self {
        TapConfig {
            enabled: false,
            admin_port: 15000,
            config_id: DEFAULT_CONFIG_ID.to_string(),
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            idle_before_tap_seconds: 60,
            max_pods: 10,
            pods: Vec::new(),
            queue_records: 1024,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

impl TapConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("tap.max_pods", self.max_pods),
            ("tap.queue_records", self.queue_records),
            ("tap.admin_port", usize::from(self.admin_port)),
            ("tap.max_buffered_bytes", self.max_buffered_bytes as usize),
        ] {
            if value == 0 {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        if self.config_id.is_empty() {
            return Err("tap.config_id must not be empty".to_string());
        }
        super::capture::parse_pods("tap.pods", &self.pods).map(|_| ())
    }

    pub(super) fn request(&self) -> TapRequest {
        TapRequest {
            config_id: self.config_id.clone(),
            max_buffered_rx_bytes: self.max_buffered_bytes,
            max_buffered_tx_bytes: self.max_buffered_bytes,
            ..TapRequest::default()
        }
    }
}

/// Streams one pod's tap traces into `out` until `stop` is set.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    netns: PathBuf,
    admin_port: u16,
    request: &TapRequest,
    label: &str,
    k8s: Option<K8sMeta>,
    stop: &Arc<AtomicBool>,
    listening: &AtomicBool,
    out: &SyncSender<Exchange>,
    metrics: &Metrics,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let target = AdminTarget {
        addr: SocketAddr::from(([127, 0, 0, 1], admin_port)),
        netns: Some(netns),
        label: label.to_string(),
        k8s,
    };
    // The agent keeps trying: the sidecar may restart, or another client may hold the stream.
    let retry = Retry {
        fail_first: false,
        retry_attached: true,
        ..Retry::default()
    };
    runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Exchange>(64);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let session = admin::run(&target, request, &retry, tx, stop_rx);
        tokio::pin!(session);
        listening.store(true, Ordering::SeqCst);
        tracing::info!(pod = %label, "Tapping the pod's sidecar: it logs no exchanges.");
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                result = &mut session => {
                    // Traces already received still go out.
                    while let Ok(ex) = rx.try_recv() {
                        forward(out, metrics, ex);
                    }
                    return match result {
                        Ok(stats) => {
                            tracing::info!(pod = %label, traces = stats.traces, "Tap stopped.");
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                }
                Some(ex) = rx.recv() => forward(out, metrics, ex),
                _ = tick.tick() => {
                    if stop.load(Ordering::SeqCst) {
                        let _ = stop_tx.send(true);
                    }
                }
            }
        }
    })
}

fn forward(out: &SyncSender<Exchange>, metrics: &Metrics, ex: Exchange) {
    if let Err(TrySendError::Full(_)) = out.try_send(ex) {
        metrics.skipped(crate::ops::metrics::skip::TAP_QUEUE_FULL, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        assert!(TapConfig::default().validate().is_ok());
        for (bad, field) in [
            (
                TapConfig {
                    pods: vec!["a/b/c".into()],
                    ..TapConfig::default()
                },
                "tap.pods",
            ),
            (
                TapConfig {
                    admin_port: 0,
                    ..TapConfig::default()
                },
                "tap.admin_port",
            ),
            (
                TapConfig {
                    config_id: String::new(),
                    ..TapConfig::default()
                },
                "tap.config_id",
            ),
        ] {
            assert!(bad.validate().unwrap_err().contains(field), "{field}");
        }
    }

    #[test]
    fn the_request_carries_the_config_id_and_limits() {
        let config = TapConfig {
            config_id: "sidecar-tap".into(),
            max_buffered_bytes: 4096,
            ..TapConfig::default()
        };
        let body = config.request().to_json();
        assert_eq!(body["config_id"], "sidecar-tap");
        assert_eq!(
            body["tap_config"]["output_config"]["max_buffered_rx_bytes"],
            4096
        );
        assert_eq!(
            body["tap_config"]["output_config"]["max_buffered_tx_bytes"],
            4096
        );
    }
}
