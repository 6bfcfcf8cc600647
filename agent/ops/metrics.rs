//! The agent's Prometheus metrics, one `meshtap_*` family per question an operator asks: is it
//! reading, is it finding exchanges, what does it skip, is the sink keeping up, how much would a
//! restart re-read. `docs/metrics.md` lists them; a test keeps that table and [`Metrics`] equal.
//!
//! Every method takes plain arguments and is cheap: label values are `&'static str`, so a lookup
//! hashes without allocating, and nothing allocates once a series exists. Known label values are
//! created at zero up front. Share one [`Metrics`] through an `Arc`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// Values of the `reason` label of `meshtap_skipped_total`.
pub mod skip {
    /// A physical line that does not parse in the file's container log format.
    pub const MALFORMED_LINE: &str = "malformed_line";
    /// A line that neither starts nor continues an Envoy message.
    pub const STRAY_LINE: &str = "stray_line";
    /// A v1 message that belongs to no open direction.
    pub const UNATTRIBUTED_V1: &str = "unattributed_v1";
    /// A v2 line that does not parse.
    pub const MALFORMED_V2: &str = "malformed_v2";
    /// A Lua message cut at `max_message_bytes`.
    pub const TRUNCATED_MESSAGE: &str = "truncated_message";
    /// A pending exchange emitted early because `max_pending` was reached.
    pub const EVICTED: &str = "evicted";
    /// A pending exchange emitted early because it did not end in time.
    pub const EXPIRED: &str = "expired";
    /// Log data removed (rotated away, deleted, truncated) before the agent could read it.
    pub const LOST_LOG_DATA: &str = "lost_log_data";
    /// A record larger than Kafka's `max_message_bytes` even with empty bodies, not sent.
    pub const SINK_REJECTED: &str = "sink_rejected";
    /// A captured exchange dropped because the queue to the reader was full (agent capture).
    pub const CAPTURE_QUEUE_FULL: &str = "capture_queue_full";
    /// A tapped exchange dropped because the queue to the reader was full (agent tap).
    pub const TAP_QUEUE_FULL: &str = "tap_queue_full";
    /// All of them, created at zero so dashboards see every series from the start.
    pub const ALL: [&str; 11] = [
        MALFORMED_LINE,
        STRAY_LINE,
        UNATTRIBUTED_V1,
        MALFORMED_V2,
        TRUNCATED_MESSAGE,
        EVICTED,
        EXPIRED,
        LOST_LOG_DATA,
        SINK_REJECTED,
        CAPTURE_QUEUE_FULL,
        TAP_QUEUE_FULL,
    ];
}

/// Values of the `source` label of `meshtap_exchanges_total`: the record's `source` field.
const SOURCES: [&str; 4] = ["lua-v1", "lua-v2", "tap", "capture"];

/// Label sets are arrays of `&'static str` pairs: hashing them for a lookup allocates nothing.
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Delivery time buckets, 1 ms to 10 s: a local write takes milliseconds, a remote broker under
/// load seconds, and anything slower is an outage that `sink_up` shows anyway.
const DELIVERY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn delivery_histogram() -> Histogram {
    Histogram::new(DELIVERY_BUCKETS)
}

fn bool_label(value: bool) -> &'static str {
    if value {
        "true"
    } else {
        "false"
    }
}

/// The agent's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    files_tailed: Gauge,
    log_bytes_read: Counter,
    log_lines_read: Counter,
    exchanges: Family<Labels<2>, Counter>,
    exchange_warnings: Counter,
    skipped: Family<Labels<1>, Counter>,
    dropped: Family<Labels<1>, Counter>,
    script_errors: Counter,
    sink_batches: Family<Labels<2>, Counter>,
    sink_records: Family<Labels<1>, Counter>,
    sink_delivery: Family<Labels<1>, Histogram>,
    sink_up: Family<Labels<1>, Gauge>,
    checkpoint_lag: Arc<CheckpointLag>,
    checkpoint_writes: Counter,
    checkpoint_errors: Counter,
    kubernetes_up: Gauge,
    kubernetes_pods: Family<Labels<1>, Gauge>,
    kubernetes_unenriched: Counter,
    capture_enabled: Gauge,
    capture_active: Gauge,
    capture_failures: Counter,
    capture_frames_dropped: Family<Labels<1>, Counter>,
    tap_enabled: Gauge,
    tap_active: Gauge,
    tap_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every family. Counter names are given without `_total`, which the OpenMetrics
    /// encoder appends.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let log_bytes_read = counter(
            "meshtap_log_bytes_read",
            "Bytes read from container log files",
        );
        let log_lines_read = counter(
            "meshtap_log_lines_read",
            "Physical lines read from container log files",
        );
        let exchange_warnings = counter(
            "meshtap_exchange_warnings",
            "Exchange records emitted with at least one warning",
        );
        let script_errors = counter("meshtap_script_errors", "Lua script errors logged by Envoy");
        let checkpoint_writes = counter("meshtap_checkpoint_writes", "Checkpoints written");
        let checkpoint_errors = counter(
            "meshtap_checkpoint_errors",
            "Checkpoints that could not be written",
        );

        let files_tailed = Gauge::default();
        registry.register(
            "meshtap_files_tailed",
            "Container log files being tailed",
            files_tailed.clone(),
        );
        let exchanges = Family::<Labels<2>, Counter>::default();
        registry.register(
            "meshtap_exchanges",
            "Exchange records emitted, by reader and by whether both directions were logged to their end",
            exchanges.clone(),
        );
        let skipped = Family::<Labels<1>, Counter>::default();
        registry.register(
            "meshtap_skipped",
            "Lines, messages or log data dropped, or exchanges cut short, by reason",
            skipped.clone(),
        );
        let dropped = Family::<Labels<1>, Counter>::default();
        registry.register(
            "meshtap_exchanges_dropped",
            "Exchange records not delivered by choice (capture policy, sampling, rate limits), by reason",
            dropped.clone(),
        );
        let sink_batches = Family::<Labels<2>, Counter>::default();
        registry.register(
            "meshtap_sink_batches",
            "Batch delivery attempts, by sink and result (ok or error)",
            sink_batches.clone(),
        );
        let sink_records = Family::<Labels<1>, Counter>::default();
        registry.register(
            "meshtap_sink_records",
            "Exchange records acknowledged by the sink",
            sink_records.clone(),
        );
        let sink_delivery =
            Family::<Labels<1>, Histogram>::new_with_constructor(delivery_histogram as fn() -> _);
        registry.register_with_unit(
            "meshtap_sink_delivery",
            "Time taken to deliver a batch",
            Unit::Seconds,
            sink_delivery.clone(),
        );
        let sink_up = Family::<Labels<1>, Gauge>::default();
        registry.register(
            "meshtap_sink_up",
            "1 while the sink delivers, 0 while it is failing",
            sink_up.clone(),
        );
        let kubernetes_up = Gauge::default();
        registry.register(
            "meshtap_kubernetes_up",
            "1 while the agent's watch of its node's pods is in sync with the Kubernetes API, 0 while it is not in use or failing",
            kubernetes_up.clone(),
        );
        let kubernetes_pods = Family::<Labels<1>, Gauge>::default();
        registry.register(
            "meshtap_kubernetes_pods",
            "Pods of this node held for enrichment, by state (live, or deleted and kept for the grace period)",
            kubernetes_pods.clone(),
        );
        let kubernetes_unenriched = Counter::default();
        registry.register(
            "meshtap_kubernetes_unenriched_exchanges",
            "Exchanges of pods the Kubernetes API had not (yet) told the agent about, delivered with path-only metadata",
            kubernetes_unenriched.clone(),
        );
        let capture_enabled = Gauge::default();
        registry.register(
            "meshtap_capture_enabled",
            "1 when the agent captures pods without Lua logs (capture.enabled and the capabilities it needs), else 0",
            capture_enabled.clone(),
        );
        let capture_active = Gauge::default();
        registry.register(
            "meshtap_capture_active",
            "Pods whose traffic is being captured now",
            capture_active.clone(),
        );
        let capture_failures = Counter::default();
        registry.register(
            "meshtap_capture_failures",
            "Pod captures that could not start or ended by themselves (each logged with the pod)",
            capture_failures.clone(),
        );
        let capture_frames_dropped = Family::<Labels<1>, Counter>::default();
        registry.register(
            "meshtap_capture_frames_dropped",
            "Frames a pod capture lost under load, counted when the capture stops, by where (kernel: the socket buffer was full; queue: the decoder fell behind)",
            capture_frames_dropped.clone(),
        );
        let tap_enabled = Gauge::default();
        registry.register(
            "meshtap_tap_enabled",
            "1 when the agent taps pods without Lua logs through their admin /tap (tap.enabled and the capabilities it needs), else 0",
            tap_enabled.clone(),
        );
        let tap_active = Gauge::default();
        registry.register(
            "meshtap_tap_active",
            "Pods whose sidecar's admin /tap stream is being read now",
            tap_active.clone(),
        );
        let tap_failures = Counter::default();
        registry.register(
            "meshtap_tap_failures",
            "Pod taps that could not start or ended with an error (each logged with the pod)",
            tap_failures.clone(),
        );
        let checkpoint_lag = Arc::new(CheckpointLag::default());
        registry.register_collector(Box::new(Arc::clone(&checkpoint_lag)));

        // Known label values start at zero, so dashboards and `rate()` see every series.
        for source in SOURCES {
            for complete in ["false", "true"] {
                let _created =
                    exchanges.get_or_create(&[("source", source), ("complete", complete)]);
            }
        }
        for reason in skip::ALL {
            let _created = skipped.get_or_create(&[("reason", reason)]);
        }
        for reason in crate::stage::DROP_REASONS {
            let _created = dropped.get_or_create(&[("reason", reason)]);
        }
        for state in ["live", "deleted"] {
            let _created = kubernetes_pods.get_or_create(&[("state", state)]);
        }
        for place in ["kernel", "queue"] {
            let _created = capture_frames_dropped.get_or_create(&[("where", place)]);
        }

        Metrics {
            registry,
            files_tailed,
            log_bytes_read,
            log_lines_read,
            exchanges,
            exchange_warnings,
            skipped,
            dropped,
            script_errors,
            sink_batches,
            sink_records,
            sink_delivery,
            sink_up,
            checkpoint_lag,
            checkpoint_writes,
            checkpoint_errors,
            kubernetes_up,
            kubernetes_pods,
            kubernetes_unenriched,
            capture_enabled,
            capture_active,
            capture_failures,
            capture_frames_dropped,
            tap_enabled,
            tap_active,
            tap_failures,
        }
    }

    /// Sets `meshtap_tap_enabled`: whether the agent's tap supervisor runs.
    pub fn tap_enabled(&self, enabled: bool) {
        self.tap_enabled.set(i64::from(enabled));
    }

    /// Sets how many pods are being tapped.
    pub fn tap_active(&self, pods: usize) {
        self.tap_active.set(i64::try_from(pods).unwrap_or(i64::MAX));
    }

    /// Counts a pod tap that failed.
    pub fn tap_failure(&self) {
        self.tap_failures.inc();
    }

    /// Sets `meshtap_capture_enabled`: whether the agent's capture supervisor runs.
    pub fn capture_enabled(&self, enabled: bool) {
        self.capture_enabled.set(i64::from(enabled));
    }

    /// Sets how many pods are being captured.
    pub fn capture_active(&self, pods: usize) {
        self.capture_active
            .set(i64::try_from(pods).unwrap_or(i64::MAX));
    }

    /// Counts a pod capture that failed or ended by itself.
    pub fn capture_failure(&self) {
        self.capture_failures.inc();
    }

    /// Adds the frames a stopped capture lost: in the kernel, and in its own queue.
    pub fn capture_frames_dropped(&self, kernel: u64, queue: u64) {
        for (place, n) in [("kernel", kernel), ("queue", queue)] {
            self.capture_frames_dropped
                .get_or_create(&[("where", place)])
                .inc_by(n);
        }
    }

    /// Sets `meshtap_kubernetes_up`: whether the pod watch is in sync with the API.
    pub fn kubernetes_up(&self, up: bool) {
        self.kubernetes_up.set(i64::from(up));
    }

    /// Sets how many pods are held for enrichment: live, and deleted but within the grace period.
    pub fn kubernetes_pods(&self, live: usize, deleted: usize) {
        // `deleted` first: a scrape between the two updates may count a pod that was just
        // deleted twice, never zero times (it used to see it neither live nor deleted, which
        // looked like the grace period had already ended).
        for (state, n) in [("deleted", deleted), ("live", live)] {
            self.kubernetes_pods
                .get_or_create(&[("state", state)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts an exchange of a pod the API had not told the agent about.
    pub fn kubernetes_unenriched(&self) {
        self.kubernetes_unenriched.inc();
    }

    /// Sets how many container log files are being tailed.
    pub fn files_tailed(&self, files: i64) {
        self.files_tailed.set(files);
    }

    /// Counts bytes read from container log files.
    pub fn log_bytes(&self, bytes: u64) {
        self.log_bytes_read.inc_by(bytes);
    }

    /// Counts physical lines read from container log files.
    pub fn log_lines(&self, lines: u64) {
        self.log_lines_read.inc_by(lines);
    }

    /// Counts an emitted exchange record; `source` as in the record (`Source::as_str`).
    pub fn exchange(&self, source: &'static str, complete: bool) {
        self.exchanges
            .get_or_create(&[("source", source), ("complete", bool_label(complete))])
            .inc();
    }

    /// Counts emitted exchange records that carry warnings.
    pub fn exchange_warnings(&self, records: u64) {
        self.exchange_warnings.inc_by(records);
    }

    /// Counts `n` things skipped for `reason`, one of [`skip`]'s constants.
    pub fn skipped(&self, reason: &'static str, n: u64) {
        self.skipped.get_or_create(&[("reason", reason)]).inc_by(n);
    }

    /// Counts an exchange a stage chose not to deliver (see [`crate::stage::Verdict::Drop`]).
    pub fn dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts Lua script errors.
    pub fn script_errors(&self, n: u64) {
        self.script_errors.inc_by(n);
    }

    /// Records a batch delivery to `sink` (its [`crate::sink::Sink::name`]) that took `elapsed`:
    /// acknowledged (`ok`, with its `records`) or failed (an attempt; `records` is ignored).
    pub fn sink_batch(&self, sink: &'static str, ok: bool, records: u64, elapsed: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.sink_batches
            .get_or_create(&[("sink", sink), ("result", result)])
            .inc();
        if ok {
            self.sink_records
                .get_or_create(&[("sink", sink)])
                .inc_by(records);
        }
        self.sink_delivery
            .get_or_create(&[("sink", sink)])
            .observe(elapsed.as_secs_f64());
    }

    /// Sets `meshtap_sink_up` for `sink`. The first call for a sink (when it opened) also creates
    /// its other series at zero, so they are exposed before the first batch.
    pub fn sink_up(&self, sink: &'static str, up: bool) {
        let labels = [("sink", sink)];
        if self.sink_records.get(&labels).is_none() {
            for result in ["ok", "error"] {
                let _created = self
                    .sink_batches
                    .get_or_create(&[("sink", sink), ("result", result)]);
            }
            let _created = self.sink_records.get_or_create(&labels);
            let _created = self.sink_delivery.get_or_create(&labels);
        }
        self.sink_up.get_or_create(&labels).set(i64::from(up));
    }

    /// Sets the bytes of `file` (a container log stream) read but not yet covered by a written
    /// checkpoint.
    pub fn set_checkpoint_lag(&self, file: &str, bytes: u64) {
        let mut files = self.checkpoint_lag.lock();
        match files.get_mut(file) {
            Some(lag) => *lag = bytes,
            None => {
                files.insert(file.to_owned(), bytes);
            }
        }
    }

    /// Forgets `file`'s `checkpoint_lag_bytes` series (the stream is no longer tailed).
    pub fn remove_file(&self, file: &str) {
        self.checkpoint_lag.lock().remove(file);
    }

    /// Counts a checkpoint written (`ok`) or one that could not be.
    pub fn checkpoint_written(&self, ok: bool) {
        if ok {
            self.checkpoint_writes.inc();
        } else {
            self.checkpoint_errors.inc();
        }
    }

    /// Every metric in the OpenMetrics text format (served as [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding into a String cannot fail");
        text
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `meshtap_checkpoint_lag_bytes{file}`, kept in a map so updating a known file allocates nothing
/// (a [`Family`] lookup would need an owned `String` label each time).
#[derive(Debug, Default)]
struct CheckpointLag {
    files: Mutex<BTreeMap<String, u64>>,
}

impl CheckpointLag {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        // A map of numbers stays consistent whatever panicked while holding it.
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collector for CheckpointLag {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "meshtap_checkpoint_lag",
            "Bytes of a container log stream read but not yet covered by a written checkpoint.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?;
        for (file, bytes) in self.lock().iter() {
            let labels = [("file", file.as_str())];
            ConstGauge::new(*bytes).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` (labels as written by the encoder), if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn metrics_are_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Metrics>();
    }

    /// Metrics as the agent has them once its sink opened.
    fn started() -> Metrics {
        let m = Metrics::new();
        m.sink_up("stdout", true);
        m
    }

    #[test]
    fn every_family_is_exposed_from_the_start() {
        let text = started().encode();
        for family in [
            "meshtap_files_tailed gauge",
            "meshtap_log_bytes_read counter",
            "meshtap_log_lines_read counter",
            "meshtap_exchanges counter",
            "meshtap_exchange_warnings counter",
            "meshtap_skipped counter",
            "meshtap_script_errors counter",
            "meshtap_sink_batches counter",
            "meshtap_sink_records counter",
            "meshtap_sink_delivery_seconds histogram",
            "meshtap_sink_up gauge",
            "meshtap_checkpoint_lag_bytes gauge",
            "meshtap_checkpoint_writes counter",
            "meshtap_checkpoint_errors counter",
            "meshtap_kubernetes_up gauge",
            "meshtap_kubernetes_pods gauge",
            "meshtap_kubernetes_unenriched_exchanges counter",
            "meshtap_capture_enabled gauge",
            "meshtap_capture_active gauge",
            "meshtap_capture_failures counter",
            "meshtap_capture_frames_dropped counter",
            "meshtap_tap_enabled gauge",
            "meshtap_tap_active gauge",
            "meshtap_tap_failures counter",
        ] {
            assert!(text.contains(&format!("# TYPE {family}\n")), "{family}");
        }
        assert_eq!(
            sample(
                &text,
                r#"meshtap_exchanges_total{source="lua-v2",complete="true"}"#
            ),
            Some(0.0)
        );
        for reason in skip::ALL {
            let series = format!("meshtap_skipped_total{{reason=\"{reason}\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        for series in [
            r#"meshtap_sink_batches_total{sink="stdout",result="error"}"#,
            r#"meshtap_sink_records_total{sink="stdout"}"#,
            r#"meshtap_sink_delivery_seconds_count{sink="stdout"}"#,
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series}");
        }
        assert_eq!(
            sample(&text, r#"meshtap_sink_up{sink="stdout"}"#),
            Some(1.0)
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn source_labels_match_the_record() {
        use crate::record::Source;
        for (source, label) in [Source::LuaV1, Source::LuaV2, Source::Tap, Source::Capture]
            .into_iter()
            .zip(SOURCES)
        {
            assert_eq!(serde_json::to_value(source).unwrap(), label);
        }
    }

    #[test]
    fn methods_move_their_series() {
        let m = Metrics::new();
        m.files_tailed(3);
        m.log_bytes(100);
        m.log_bytes(28);
        m.log_lines(2);
        m.exchange("lua-v1", false);
        m.exchange("lua-v2", false);
        m.exchange_warnings(1);
        m.skipped(skip::EVICTED, 2);
        m.skipped(skip::EVICTED, 0);
        m.script_errors(1);
        m.sink_up("file", true);
        m.sink_batch("file", true, 10, Duration::from_millis(3));
        m.sink_batch("file", false, 10, Duration::from_secs(20));
        m.sink_up("file", false);
        m.checkpoint_written(true);
        m.checkpoint_written(false);
        m.kubernetes_up(true);
        m.kubernetes_pods(7, 2);
        m.kubernetes_unenriched();
        let text = m.encode();
        for (series, value) in [
            ("meshtap_files_tailed", 3.0),
            ("meshtap_log_bytes_read_total", 128.0),
            ("meshtap_log_lines_read_total", 2.0),
            (
                r#"meshtap_exchanges_total{source="lua-v1",complete="false"}"#,
                1.0,
            ),
            (
                r#"meshtap_exchanges_total{source="lua-v2",complete="false"}"#,
                1.0,
            ),
            (
                r#"meshtap_exchanges_total{source="lua-v2",complete="true"}"#,
                0.0,
            ),
            ("meshtap_exchange_warnings_total", 1.0),
            (r#"meshtap_skipped_total{reason="evicted"}"#, 2.0),
            (r#"meshtap_skipped_total{reason="expired"}"#, 0.0),
            ("meshtap_script_errors_total", 1.0),
            (
                r#"meshtap_sink_batches_total{sink="file",result="ok"}"#,
                1.0,
            ),
            (
                r#"meshtap_sink_batches_total{sink="file",result="error"}"#,
                1.0,
            ),
            (r#"meshtap_sink_records_total{sink="file"}"#, 10.0),
            (
                r#"meshtap_sink_delivery_seconds_bucket{le="0.005",sink="file"}"#,
                1.0,
            ),
            (
                r#"meshtap_sink_delivery_seconds_bucket{le="10.0",sink="file"}"#,
                1.0,
            ),
            (r#"meshtap_sink_delivery_seconds_count{sink="file"}"#, 2.0),
            (r#"meshtap_sink_up{sink="file"}"#, 0.0),
            ("meshtap_checkpoint_writes_total", 1.0),
            ("meshtap_checkpoint_errors_total", 1.0),
            ("meshtap_kubernetes_up", 1.0),
            (r#"meshtap_kubernetes_pods{state="live"}"#, 7.0),
            (r#"meshtap_kubernetes_pods{state="deleted"}"#, 2.0),
            ("meshtap_kubernetes_unenriched_exchanges_total", 1.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
    }

    #[test]
    fn checkpoint_lag_is_per_file_and_can_be_removed() {
        let m = Metrics::new();
        m.set_checkpoint_lag("/var/log/pods/a/0.log", 10);
        m.set_checkpoint_lag("/var/log/pods/b/0.log", 5);
        m.set_checkpoint_lag("/var/log/pods/a/0.log", 7);
        let text = m.encode();
        let a = r#"meshtap_checkpoint_lag_bytes{file="/var/log/pods/a/0.log"}"#;
        let b = r#"meshtap_checkpoint_lag_bytes{file="/var/log/pods/b/0.log"}"#;
        assert_eq!(sample(&text, a), Some(7.0));
        assert_eq!(sample(&text, b), Some(5.0));
        m.remove_file("/var/log/pods/a/0.log");
        let text = m.encode();
        assert_eq!(sample(&text, a), None);
        assert_eq!(sample(&text, b), Some(5.0));
    }

    #[test]
    fn docs_list_every_metric() {
        let doc = include_str!("../../docs/metrics.md");
        let documented: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let text = started().encode();
        let mut exposed: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').unwrap();
                if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                }
            })
            .collect();
        exposed.sort();
        let mut documented: Vec<String> = documented.iter().map(|s| s.to_string()).collect();
        documented.sort();
        assert_eq!(documented, exposed, "docs/metrics.md and Metrics differ");
    }
}
