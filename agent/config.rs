//! meshtap's YAML configuration: parsed and validated into [`Settings`] before any I/O, so a bad
//! file is one clear message and a non-zero exit. Every field has a default (see
//! `config/meshtap.yaml`, which a test keeps equal to these defaults).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::decode::Format;
use crate::pipeline::Settings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How container log files are read.
    pub logs: LogsConfig,
    /// How exchanges are reassembled.
    pub assembly: AssemblyConfig,
    /// `meshtap run`: what the node agent tails, where it keeps its state, how it paces itself.
    pub agent: AgentConfig,
    /// `meshtap run`: where exchanges are delivered.
    pub sink: crate::sink::SinkConfig,
    /// `meshtap run`: the metrics and health endpoint.
    pub ops: crate::ops::OpsConfig,
    /// `meshtap run`: the agent's own diagnostic log (on stderr).
    pub log: LogConfig,
    /// Which exchanges are delivered, how much of their bodies, and how many (docs/policy.md).
    pub policy: crate::policy::PolicyConfig,
    /// `meshtap run`: enrichment from the Kubernetes API and selection of the pods captured.
    pub kubernetes: crate::k8s::KubernetesConfig,
    /// Body decoding (`content-encoding` gzip, deflate, br); see `docs/redaction.md`.
    pub decoding: crate::content::DecodingConfig,
    /// Redaction of secrets before any sink sees a record; see `docs/redaction.md`.
    pub redaction: crate::redact::RedactionConfig,
    /// `meshtap run`: raw capture of pods whose sidecar logs no exchanges (docs/capture.md).
    pub capture: crate::sources::capture::CaptureConfig,
    /// `meshtap run`: the admin /tap stream of pods whose sidecar logs no exchanges (docs/tap.md).
    pub tap: crate::sources::tap::TapConfig,
}

/// How the agent's own log (stderr) is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level filter (`error`, `warn`, `info`, `debug`, or a tracing directive such as
    /// `meshtap::run=debug`); the `MESHTAP_LOG` (or `RUST_LOG`) environment variable overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            // The agent says what it tails and when it checkpoints; debug is for troubleshooting.
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    /// Detected per file from its first line.
    #[default]
    Auto,
    Cri,
    Docker,
    Raw,
}

impl FormatName {
    pub fn format(self) -> Option<Format> {
        match self {
            FormatName::Auto => None,
            FormatName::Cri => Some(Format::Cri),
            FormatName::Docker => Some(Format::Docker),
            FormatName::Raw => Some(Format::Raw),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Container log format.
    pub format: FormatName,
    /// Longest physical or joined container line kept, in bytes.
    pub max_line_bytes: usize,
    /// Longest multi-line Envoy message kept, in bytes.
    pub max_message_bytes: usize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        let s = Settings::default();
        LogsConfig {
            format: FormatName::Auto,
            max_line_bytes: s.max_line_bytes,
            max_message_bytes: s.max_message_bytes,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssemblyConfig {
    /// Body bytes kept per direction.
    pub max_body_bytes: usize,
    /// Exchanges awaiting their end per log file.
    pub max_pending: usize,
    /// Seconds after which an exchange that has not ended is emitted, marked incomplete.
    pub expire_after_seconds: u64,
    /// `meshtap run`: exchanges awaiting their end across all streams of the node; past it the
    /// oldest of the busiest stream is emitted, marked incomplete.
    pub max_pending_total: usize,
}

/// Long enough for slow uploads and long polls; short enough that a lost end line shows up soon.
const fn default_expire_after_seconds() -> u64 {
    300
}

impl Default for AssemblyConfig {
    fn default() -> Self {
        let s = Settings::default();
        AssemblyConfig {
            max_body_bytes: s.limits.max_body_bytes,
            max_pending: s.limits.max_pending,
            expire_after_seconds: default_expire_after_seconds(),
            // With 4 MiB bodies the per-direction cap bounds each; this bounds their number.
            max_pending_total: 20_000,
        }
    }
}

/// Where a stream without a checkpoint starts reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// The oldest log file present: what the sidecar logged before the agent started is captured.
    #[default]
    Beginning,
    /// The end of the live file: only what is logged from now on.
    End,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Kubelet's pod log directory, mounted read-only into the DaemonSet.
    pub log_root: PathBuf,
    /// Name of the sidecar container whose logs are read.
    pub container: String,
    /// Where checkpoints are kept (a hostPath, so they survive pod restarts).
    pub state_dir: PathBuf,
    /// Where streams without a checkpoint start.
    pub start_at: StartAt,
    /// Milliseconds between directory scans and file polls when inotify is quiet (it can miss
    /// events on some filesystems and is capped by max_user_watches).
    pub poll_interval_ms: u64,
    /// Milliseconds of quiet after which the Envoy message being joined is taken as whole.
    pub idle_flush_ms: u64,
    /// Milliseconds between checkpoint writes (each waits for the sink to acknowledge).
    pub checkpoint_interval_ms: u64,
    /// Bytes read from one stream before the others get a turn.
    pub read_budget_bytes: usize,
    /// Exchanges per batch handed to the sink.
    pub batch_max_records: usize,
    /// Approximate bytes per batch (bodies plus ~1 KiB a record): with `queue_batches`, this
    /// bounds the memory held for a slow sink.
    pub batch_max_bytes: usize,
    /// Batches queued for the sink; when full, reading pauses (bounded memory under a slow sink).
    pub queue_batches: usize,
    /// Seconds allowed on SIGTERM to deliver what was read and write the last checkpoint.
    pub shutdown_grace_seconds: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            log_root: PathBuf::from("/var/log/pods"),
            container: "istio-proxy".to_string(),
            state_dir: PathBuf::from("/var/lib/meshtap"),
            start_at: StartAt::Beginning,
            poll_interval_ms: 1000,
            idle_flush_ms: 200,
            checkpoint_interval_ms: 1000,
            read_budget_bytes: 1 << 20,
            batch_max_records: 512,
            batch_max_bytes: 1 << 20,
            queue_batches: 8,
            // Kubernetes' default terminationGracePeriodSeconds is 30.
            shutdown_grace_seconds: 20,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        // An empty file (or only comments) means every default.
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(Config::default());
        }
        let config: Config = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let a = &self.agent;
        let positive = [
            ("logs.max_line_bytes", self.logs.max_line_bytes),
            ("logs.max_message_bytes", self.logs.max_message_bytes),
            ("assembly.max_body_bytes", self.assembly.max_body_bytes),
            ("assembly.max_pending", self.assembly.max_pending),
            (
                "assembly.max_pending_total",
                self.assembly.max_pending_total,
            ),
            (
                "assembly.expire_after_seconds",
                self.assembly.expire_after_seconds as usize,
            ),
            ("agent.poll_interval_ms", a.poll_interval_ms as usize),
            ("agent.idle_flush_ms", a.idle_flush_ms as usize),
            (
                "agent.checkpoint_interval_ms",
                a.checkpoint_interval_ms as usize,
            ),
            ("agent.read_budget_bytes", a.read_budget_bytes),
            ("agent.batch_max_records", a.batch_max_records),
            ("agent.batch_max_bytes", a.batch_max_bytes),
            ("agent.queue_batches", a.queue_batches),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        self.sink.validate()?;
        crate::policy::Policy::compile(&self.policy).map_err(|e| e.to_string())?;
        self.kubernetes.validate()?;
        self.decoding.validate()?;
        self.redaction.validate()?;
        self.capture.validate()?;
        self.tap.validate()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| format!("log.level {:?} is not a valid filter: {e}", self.log.level))?;
        if a.container.is_empty() || a.log_root.as_os_str().is_empty() {
            return Err("agent.container and agent.log_root must not be empty".to_string());
        }
        if self.logs.max_line_bytes < 16 << 10 {
            return Err(format!(
                "logs.max_line_bytes must be at least 16384 (a CRI line piece), got {}",
                self.logs.max_line_bytes
            ));
        }
        Ok(())
    }

    /// The pipeline settings this configuration asks for.
    pub fn settings(&self) -> Settings {
        let mut s = Settings {
            format: self.logs.format.format(),
            max_line_bytes: self.logs.max_line_bytes,
            max_message_bytes: self.logs.max_message_bytes,
            ..Settings::default()
        };
        s.limits.max_body_bytes = self.assembly.max_body_bytes;
        s.limits.max_pending = self.assembly.max_pending;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_documents_the_defaults() {
        let shipped = Config::from_yaml(include_str!("../config/meshtap.yaml")).unwrap();
        let defaults = Config::default();
        assert_eq!(shipped.logs.format, defaults.logs.format);
        assert_eq!(shipped.logs.max_line_bytes, defaults.logs.max_line_bytes);
        assert_eq!(
            shipped.logs.max_message_bytes,
            defaults.logs.max_message_bytes
        );
        assert_eq!(
            shipped.assembly.max_body_bytes,
            defaults.assembly.max_body_bytes
        );
        assert_eq!(shipped.assembly.max_pending, defaults.assembly.max_pending);
        assert_eq!(
            shipped.assembly.expire_after_seconds,
            defaults.assembly.expire_after_seconds
        );
        assert_eq!(
            shipped.assembly.max_pending_total,
            defaults.assembly.max_pending_total
        );
        assert_eq!(shipped.log.level, defaults.log.level);
        assert_eq!(shipped.capture, defaults.capture);
        assert_eq!(shipped.tap, defaults.tap);
        assert_eq!(shipped.log.format, defaults.log.format);
        assert_eq!(shipped.ops.enabled, defaults.ops.enabled);
        assert_eq!(shipped.ops.listen, defaults.ops.listen);
        assert_eq!(shipped.sink.name(), defaults.sink.name());
        assert_eq!(shipped.policy, defaults.policy);
        let (sk, dk) = (&shipped.kubernetes, &defaults.kubernetes);
        assert_eq!(
            (sk.enabled, &sk.node_name, &sk.kubeconfig, &sk.labels),
            (dk.enabled, &dk.node_name, &dk.kubeconfig, &dk.labels)
        );
        assert_eq!(
            (sk.deletion_grace_seconds, sk.initial_sync_timeout_seconds),
            (dk.deletion_grace_seconds, dk.initial_sync_timeout_seconds)
        );
        let (ss, ds) = (&sk.select, &dk.select);
        assert_eq!(
            (&ss.namespaces.include, &ss.namespaces.exclude, &ss.labels),
            (&ds.namespaces.include, &ds.namespaces.exclude, &ds.labels)
        );
        assert_eq!(
            (&ss.opt_out_annotation, ss.unknown_pods),
            (&ds.opt_out_annotation, ds.unknown_pods)
        );
        assert_eq!(shipped.decoding, defaults.decoding);
        assert_eq!(shipped.redaction, defaults.redaction);
        let (s, d) = (&shipped.agent, &defaults.agent);
        assert_eq!(
            (&s.log_root, &s.container, &s.state_dir, s.start_at),
            (&d.log_root, &d.container, &d.state_dir, d.start_at)
        );
        assert_eq!(
            (
                s.poll_interval_ms,
                s.idle_flush_ms,
                s.checkpoint_interval_ms
            ),
            (
                d.poll_interval_ms,
                d.idle_flush_ms,
                d.checkpoint_interval_ms
            )
        );
        assert_eq!(
            (
                s.read_budget_bytes,
                s.batch_max_records,
                s.batch_max_bytes,
                s.queue_batches,
                s.shutdown_grace_seconds
            ),
            (
                d.read_budget_bytes,
                d.batch_max_records,
                d.batch_max_bytes,
                d.queue_batches,
                d.shutdown_grace_seconds
            )
        );
    }

    #[test]
    fn example_configs_for_kafka_and_otlp_are_valid() {
        let kafka = Config::from_yaml(include_str!("../config/meshtap-kafka.yaml")).unwrap();
        assert_eq!(kafka.sink.name(), "kafka");
        let otlp = Config::from_yaml(include_str!("../config/meshtap-otlp.yaml")).unwrap();
        assert_eq!(otlp.sink.name(), "otlp");
    }

    #[test]
    fn partial_config_keeps_other_defaults() {
        let c =
            Config::from_yaml("assembly:\n  max_body_bytes: 1024\nlogs:\n  format: cri\n").unwrap();
        let s = c.settings();
        assert_eq!(s.limits.max_body_bytes, 1024);
        assert_eq!(s.format, Some(Format::Cri));
        assert_eq!(s.max_line_bytes, Settings::default().max_line_bytes);
        assert!(Config::from_yaml("# nothing\n").is_ok());
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let e = Config::from_yaml("assembly:\n  max_body_byte: 10\n").unwrap_err();
        assert!(e.contains("max_body_byte"), "{e}");
        let e = Config::from_yaml("logs:\n  format: xml\n").unwrap_err();
        assert!(e.contains("xml"), "{e}");
        let e = Config::from_yaml("assembly:\n  max_pending: 0\n").unwrap_err();
        assert!(
            e.contains("assembly.max_pending must be greater than 0"),
            "{e}"
        );
        let e = Config::from_yaml("logs:\n  max_line_bytes: -1\n").unwrap_err();
        assert!(!e.is_empty());
        let e = Config::from_yaml("log:\n  level: \"[\"\n").unwrap_err();
        assert!(e.contains("log.level"), "{e}");
        let e = Config::from_yaml("sink:\n  type: file\n  max_bytes: 10\n").unwrap_err();
        assert!(e.contains("max_bytes"), "{e}");
        let e = Config::from_yaml("redaction:\n  mode: hash\n").unwrap_err();
        assert!(e.contains("redaction.mode hash needs a key"), "{e}");
        let e = Config::from_yaml("redaction:\n  json_paths: [\"$.[\"]\n").unwrap_err();
        assert!(e.contains("redaction.json_paths"), "{e}");
        let e =
            Config::from_yaml("redaction:\n  custom_patterns:\n  - name: key\n    regex: \"(\"\n")
                .unwrap_err();
        assert!(e.contains("not a valid regex"), "{e}");
        let e = Config::from_yaml("decoding:\n  encodings: [zstd]\n").unwrap_err();
        assert!(e.contains("zstd"), "{e}");
        let e = Config::from_yaml("decoding:\n  max_decoded_bytes: 0\n").unwrap_err();
        assert!(e.contains("decoding.max_decoded_bytes"), "{e}");
        let e = Config::load(Path::new("/nonexistent/meshtap.yaml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/meshtap.yaml"));
    }
}
