//! The `sink:` section of the agent's YAML config, and the sink built from it.
//!
//! ```yaml
//! sink:
//!   type: stdout            # or: file
//!   # for file:
//!   path: /var/lib/meshtap/out/exchanges.ndjson
//!   max_bytes: 104857600
//!   max_files: 5
//! ```
//!
//! [`SinkConfig::validate`] runs with the rest of the config, before any I/O;
//! [`SinkConfig::build`] then opens the sink. Building is async because the file sink may roll its
//! files back to the last checkpoint first (see [`super::file`]).

use std::path::PathBuf;

use serde::Deserialize;

use super::file::{FilePosition, FileSink};
use super::kafka::{KafkaSink, KafkaSinkConfig};
use super::otlp::{OtlpSink, OtlpSinkConfig};
use super::stdout::StdoutSink;
use super::{BoxFuture, Pending, Sink, SinkError};
use crate::record::Exchange;

/// Where the agent delivers exchanges.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// NDJSON on the agent's stdout. The default: it needs no volume, and `kubectl logs` or the
    /// cluster's log shipper picks it up.
    // A struct variant, so that `deny_unknown_fields` rejects file settings given to stdout
    // (serde ignores extra keys next to the tag of a unit variant).
    Stdout {},
    /// NDJSON in a local, size-rotated file.
    File(FileSinkConfig),
    /// A Kafka topic (see docs/kafka.md).
    Kafka(KafkaSinkConfig),
    /// An OpenTelemetry collector, as OTLP log records (see docs/otlp.md).
    Otlp(OtlpSinkConfig),
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::Stdout {}
    }
}

/// The file sink's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSinkConfig {
    /// The current file; rotated files are `<path>.1` (newest) to `<path>.<max_files>` (oldest).
    pub path: PathBuf,
    /// The size in bytes a file may reach before the next record goes to a new one.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub max_files: u32,
}

/// Where the DaemonSet manifest mounts its hostPath volume, so the files outlive the pod.
fn default_path() -> PathBuf {
    PathBuf::from("/var/lib/meshtap/out/exchanges.ndjson")
}

/// 100 MiB: minutes of busy traffic per file, yet small enough to copy off a node or open in `jq`.
const fn default_max_bytes() -> u64 {
    100 << 20
}

/// 5: with the current file, at most ~600 MiB per node at the default `max_bytes`.
const fn default_max_files() -> u32 {
    5
}

/// Below this, a file would hold only a few records (a record with bodies easily takes kilobytes).
const MIN_MAX_BYTES: u64 = 4096;

impl Default for FileSinkConfig {
    fn default() -> Self {
        FileSinkConfig {
            path: default_path(),
            max_bytes: default_max_bytes(),
            max_files: default_max_files(),
        }
    }
}

impl SinkConfig {
    /// The sink's name, as in metrics and [`Sink::name`].
    pub fn name(&self) -> &'static str {
        match self {
            SinkConfig::Stdout {} => "stdout",
            SinkConfig::File(_) => "file",
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Otlp(_) => "otlp",
        }
    }

    /// Checks the settings; the message names the offending field (`sink.max_bytes`, ...).
    pub fn validate(&self) -> Result<(), String> {
        let file = match self {
            SinkConfig::File(file) => file,
            SinkConfig::Kafka(kafka) => return kafka.validate(),
            SinkConfig::Otlp(otlp) => return otlp.validate(),
            SinkConfig::Stdout {} => return Ok(()),
        };
        if file.path.as_os_str().is_empty() {
            return Err("sink.path must not be empty".into());
        }
        if file.path.file_name().is_none() || file.path.as_os_str().to_string_lossy().ends_with('/')
        {
            return Err(format!(
                "sink.path must name a file, got {}",
                file.path.display()
            ));
        }
        if file.max_bytes < MIN_MAX_BYTES {
            return Err(format!(
                "sink.max_bytes must be at least {MIN_MAX_BYTES}, got {}",
                file.max_bytes
            ));
        }
        if file.max_files < 1 {
            return Err("sink.max_files must be at least 1".into());
        }
        Ok(())
    }

    /// Validates, then opens the sink. `resume` is the file sink's position from the last
    /// checkpoint (ignored by stdout): the file sink rolls its files back to it before opening.
    pub async fn build(&self, resume: Option<FilePosition>) -> Result<ConfiguredSink, SinkError> {
        self.validate().map_err(|message| SinkError::Other {
            sink: self.name(),
            message,
        })?;
        Ok(match self {
            SinkConfig::Stdout {} => ConfiguredSink::Stdout(StdoutSink::new()),
            SinkConfig::File(config) => {
                ConfiguredSink::File(FileSink::open_resuming(config.clone(), resume).await?)
            }
            SinkConfig::Kafka(config) => {
                ConfiguredSink::Kafka(KafkaSink::connect(config.clone()).await?)
            }
            SinkConfig::Otlp(config) => {
                ConfiguredSink::Otlp(Box::new(OtlpSink::connect(config.clone()).await?))
            }
        })
    }
}

/// The sink the config asked for: a [`Sink`] that can also report the file sink's position for
/// the checkpoint (a `Box<dyn Sink>` could not).
#[derive(Debug)]
pub enum ConfiguredSink {
    Stdout(StdoutSink),
    File(FileSink),
    Kafka(KafkaSink),
    // Boxed: the gRPC client makes it several times larger than the other sinks.
    Otlp(Box<OtlpSink>),
}

impl Sink for ConfiguredSink {
    fn name(&self) -> &'static str {
        match self {
            ConfiguredSink::Stdout(sink) => sink.name(),
            ConfiguredSink::File(sink) => sink.name(),
            ConfiguredSink::Kafka(sink) => sink.name(),
            ConfiguredSink::Otlp(sink) => sink.name(),
        }
    }

    fn deliver<'a>(&'a mut self, batch: &'a [Exchange]) -> BoxFuture<'a, Result<(), SinkError>> {
        match self {
            ConfiguredSink::Stdout(sink) => sink.deliver(batch),
            ConfiguredSink::File(sink) => sink.deliver(batch),
            ConfiguredSink::Kafka(sink) => sink.deliver(batch),
            ConfiguredSink::Otlp(sink) => sink.deliver(batch),
        }
    }

    fn submit<'a>(
        &'a mut self,
        batch: &'a [Exchange],
    ) -> BoxFuture<'a, Result<Pending, SinkError>> {
        match self {
            ConfiguredSink::Stdout(sink) => sink.submit(batch),
            ConfiguredSink::File(sink) => sink.submit(batch),
            ConfiguredSink::Kafka(sink) => sink.submit(batch),
            ConfiguredSink::Otlp(sink) => sink.submit(batch),
        }
    }

    fn max_in_flight(&self) -> usize {
        match self {
            ConfiguredSink::Stdout(sink) => sink.max_in_flight(),
            ConfiguredSink::File(sink) => sink.max_in_flight(),
            ConfiguredSink::Kafka(sink) => sink.max_in_flight(),
            ConfiguredSink::Otlp(sink) => sink.max_in_flight(),
        }
    }

    fn checkpoint_position(&self) -> Option<FilePosition> {
        match self {
            ConfiguredSink::Stdout(sink) => sink.checkpoint_position(),
            ConfiguredSink::File(sink) => sink.checkpoint_position(),
            ConfiguredSink::Kafka(sink) => sink.checkpoint_position(),
            ConfiguredSink::Otlp(sink) => sink.checkpoint_position(),
        }
    }

    fn rejected_count(&self) -> u64 {
        match self {
            ConfiguredSink::Stdout(sink) => sink.rejected_count(),
            ConfiguredSink::File(sink) => sink.rejected_count(),
            ConfiguredSink::Kafka(sink) => sink.rejected_count(),
            ConfiguredSink::Otlp(sink) => sink.rejected_count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        #[serde(default)]
        sink: SinkConfig,
    }

    fn parse(yaml: &str) -> Result<SinkConfig, String> {
        let w: Wrapper = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        w.sink.validate()?;
        Ok(w.sink)
    }

    #[test]
    fn stdout_is_the_default() {
        assert_eq!(parse("{}").unwrap(), SinkConfig::Stdout {});
        assert_eq!(
            parse("sink:\n  type: stdout\n").unwrap(),
            SinkConfig::Stdout {}
        );
    }

    #[test]
    fn file_fields_default_one_by_one() {
        let c = parse("sink:\n  type: file\n  max_files: 2\n").unwrap();
        assert_eq!(
            c,
            SinkConfig::File(FileSinkConfig {
                max_files: 2,
                ..FileSinkConfig::default()
            })
        );
        let c = parse(
            "sink:\n  type: file\n  path: /out/x.ndjson\n  max_bytes: 104857600\n  max_files: 5\n",
        )
        .unwrap();
        assert_eq!(
            c,
            SinkConfig::File(FileSinkConfig {
                path: "/out/x.ndjson".into(),
                ..FileSinkConfig::default()
            })
        );
    }

    #[test]
    fn the_module_doc_sample_parses_to_the_defaults() {
        let doc = include_str!("config.rs");
        let sample: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//! ").unwrap_or("").to_owned())
            .map(|l| l.replace("type: stdout            # or: file", "type: file") + "\n")
            .collect();
        assert_eq!(
            parse(&sample).unwrap(),
            SinkConfig::File(FileSinkConfig::default())
        );
    }

    #[test]
    fn mistakes_are_clear_errors() {
        for (yaml, expected) in [
            ("sink:\n  type: kafka\n", "kafka"),
            ("sink:\n  type: file\n  max_byte: 5000\n", "max_byte"),
            ("sink:\n  type: stdout\n  path: /x\n", "path"),
            (
                "sink:\n  type: file\n  path: ''\n",
                "sink.path must not be empty",
            ),
            (
                "sink:\n  type: file\n  path: /out/\n",
                "sink.path must name a file",
            ),
            (
                "sink:\n  type: file\n  max_bytes: 100\n",
                "sink.max_bytes must be at least 4096, got 100",
            ),
            (
                "sink:\n  type: file\n  max_files: 0\n",
                "sink.max_files must be at least 1",
            ),
        ] {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(expected), "{yaml:?}: {e}");
        }
    }

    #[tokio::test]
    async fn build_validates_then_opens() {
        let dir = tempfile::tempdir().unwrap();
        let config = SinkConfig::File(FileSinkConfig {
            path: dir.path().join("out/x.ndjson"),
            ..FileSinkConfig::default()
        });
        let sink = config.build(None).await.unwrap();
        assert_eq!(sink.name(), "file");
        assert_eq!(sink.checkpoint_position().unwrap().size, 0);
        assert!(dir.path().join("out/x.ndjson").is_file());

        let bad = SinkConfig::File(FileSinkConfig {
            max_files: 0,
            ..FileSinkConfig::default()
        });
        let e = bad.build(None).await.unwrap_err();
        assert_eq!(e.to_string(), "file: sink.max_files must be at least 1");

        let stdout = SinkConfig::Stdout {}.build(None).await.unwrap();
        assert_eq!(stdout.name(), "stdout");
        assert_eq!(stdout.checkpoint_position(), None);
    }
}
