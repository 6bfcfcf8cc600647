//! `capture:` in the agent config: the raw-capture fallback run by the node agent for pods whose
//! sidecar logs no exchanges. The [`super::supervisor::Supervisor`] starts and stops the captures.

use std::path::PathBuf;

use serde::Deserialize;

use crate::netns::Target;

/// `capture:` in the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Capture pods whose sidecar logs no exchanges (needs deploy/overlays/capture).
    pub enabled: bool,
    /// The application's TCP ports (either end of a connection); empty captures all TCP,
    /// the sidecar's own 150xx ports included.
    pub ports: Vec<u16>,
    /// Interfaces inside the pod; the hop between sidecar and application crosses `lo` in
    /// plaintext, even with mTLS.
    pub interfaces: Vec<String>,
    /// Seconds a pod's sidecar log is tailed without a Lua exchange before its traffic is
    /// captured.
    pub idle_before_capture_seconds: u64,
    /// Pods captured at once on this node.
    pub max_pods: usize,
    /// Body bytes kept per direction.
    pub max_body_bytes: usize,
    /// Pods (`NAMESPACE/NAME`) always captured while they run on this node, Lua logs or not.
    pub pods: Vec<String>,
    /// Captured records waiting for the reader; more are dropped and counted.
    pub queue_records: usize,
    /// The host's /proc (the DaemonSet needs hostPID), where pods' processes are found.
    pub proc_root: PathBuf,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            enabled: false,
            ports: vec![80, 3000, 5000, 8000, 8080, 9080],
            interfaces: vec!["lo".to_string()],
            idle_before_capture_seconds: 60,
            max_pods: 10,
            max_body_bytes: crate::pipeline::Settings::default().limits.max_body_bytes,
            pods: Vec::new(),
            queue_records: 1024,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

impl CaptureConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("capture.max_pods", self.max_pods),
            ("capture.max_body_bytes", self.max_body_bytes),
            ("capture.queue_records", self.queue_records),
        ] {
            if value == 0 {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        if self.interfaces.is_empty() || self.interfaces.iter().any(String::is_empty) {
            return Err("capture.interfaces must name at least one interface".to_string());
        }
        self.explicit_pods().map(|_| ())
    }

    /// `pods` as (namespace, name).
    pub(super) fn explicit_pods(&self) -> Result<Vec<(String, String)>, String> {
        parse_pods("capture.pods", &self.pods)
    }
}

/// `NAMESPACE/NAME` entries of the config field `field`, as (namespace, name).
pub(super) fn parse_pods(field: &str, pods: &[String]) -> Result<Vec<(String, String)>, String> {
    pods.iter()
        .map(|p| match p.parse::<Target>() {
            Ok(Target::Pod { namespace, name }) => Ok((namespace, name)),
            _ => Err(format!("{field}: expected NAMESPACE/NAME, got {p:?}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        assert!(CaptureConfig::default().validate().is_ok());
        let bad = CaptureConfig {
            pods: vec!["no-namespace".into()],
            ..CaptureConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("no-namespace"));
        let bad = CaptureConfig {
            max_pods: 0,
            ..CaptureConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("capture.max_pods"));
        let bad = CaptureConfig {
            interfaces: vec![],
            ..CaptureConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
