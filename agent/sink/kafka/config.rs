//! The Kafka sink's settings: the `sink:` section with `type: kafka`.
//!
//! ```yaml
//! sink:
//!   type: kafka
//!   brokers: kafka-0.kafka:9092,kafka-1.kafka:9092
//!   topic: meshtap-exchanges
//!   key: id
//!   compression: lz4
//!   acks: all
//!   enable_idempotence: true
//!   linger_ms: 5
//!   batch_size: 1000000
//!   batch_num_messages: 10000
//!   message_timeout_ms: 300000
//!   max_message_bytes: 1000000
//!   oversize: truncate
//!   connect_timeout_ms: 10000
//!   batches_in_flight: 4
//!   librdkafka_options: {}
//! ```
//!
//! Only `brokers` is required. Every other field has a default (the values above), with the
//! reason beside its function below. [`KafkaSinkConfig::validate`] checks the settings before any
//! I/O; [`KafkaSinkConfig::client_config`] turns them into librdkafka's properties.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;
use serde::{de, Deserialize, Deserializer};

use super::topic::TopicTemplate;

/// The Kafka sink's settings. `Debug` hides the values of secret-looking `librdkafka_options`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers, `host:port[,host:port...]` (librdkafka's `bootstrap.servers`). Required.
    pub brokers: String,
    /// The topic of each record: a fixed name, or a template with `{namespace}`, `{pod}`,
    /// `{container}` and `{source}` filled from the record (`unknown` when it has no Kubernetes
    /// identity), e.g. `meshtap.{namespace}`.
    #[serde(default = "default_topic")]
    pub topic: TopicTemplate,
    /// The message key: `id` (the exchange id) or `none`.
    #[serde(default = "default_key")]
    pub key: KafkaKey,
    /// Compression of the record batches: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// Broker acknowledgements awaited per message: `all` (-1), `1` (the leader) or `0` (none).
    #[serde(default = "default_acks")]
    pub acks: Acks,
    /// librdkafka's idempotent producer: its internal retries write each message exactly once and
    /// in order per partition. Needs `acks: all`.
    #[serde(default = "default_enable_idempotence")]
    pub enable_idempotence: bool,
    /// Milliseconds librdkafka waits for more messages before sending a batch (`linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Largest record batch in bytes, before compression (`batch.size`).
    #[serde(default = "default_batch_size")]
    pub batch_size: u64,
    /// Most messages in one record batch (`batch.num.messages`).
    #[serde(default = "default_batch_num_messages")]
    pub batch_num_messages: u64,
    /// Milliseconds librdkafka keeps retrying a message (across broker outages) before it reports
    /// it as failed (`message.timeout.ms`); the agent then sends the whole batch again.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Largest message in bytes, value, key and headers included (`message.max.bytes`). Keep it
    /// at or below the broker's and the topics' `max.message.bytes`.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
    /// What to do with a record larger than `max_message_bytes`: `truncate` its bodies until it
    /// fits, or `reject` it (counted and logged, never sent).
    #[serde(default = "default_oversize")]
    pub oversize: Oversize,
    /// Milliseconds the startup check waits for the brokers' metadata before the agent gives up
    /// with an error naming the brokers.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Batches of the agent handed to librdkafka and not yet acknowledged, at most: the next
    /// batches are encoded and sent while earlier ones are on the wire. Acknowledgements (and so
    /// checkpoints) still follow the order of the batches.
    #[serde(default = "default_batches_in_flight")]
    pub batches_in_flight: usize,
    /// Any other librdkafka property, passed as is: TLS (`security.protocol`, `ssl.ca.location`),
    /// SASL (`sasl.mechanism`, `sasl.username`, ...), `client.id`, ... Properties that have a field
    /// above are refused here.
    #[serde(default)]
    pub librdkafka_options: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Option values whose names suggest a secret (`sasl.password`, `ssl.key.pem`, ...).
        struct Redacted<'a>(&'a BTreeMap<String, String>);
        impl fmt::Debug for Redacted<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let secret = |name: &str| {
                    let name = name.to_ascii_lowercase();
                    ["password", "secret", "pem", "token", "jaas", "credential"]
                        .iter()
                        .any(|s| name.contains(s))
                };
                f.debug_map()
                    .entries(self.0.iter().map(|(name, value)| {
                        (name, if secret(name) { "<redacted>" } else { value })
                    }))
                    .finish()
            }
        }
        let KafkaSinkConfig {
            brokers,
            topic,
            key,
            compression,
            acks,
            enable_idempotence,
            linger_ms,
            batch_size,
            batch_num_messages,
            message_timeout_ms,
            max_message_bytes,
            oversize,
            connect_timeout_ms,
            batches_in_flight,
            librdkafka_options,
        } = self;
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", brokers)
            .field("topic", &topic.to_string())
            .field("key", key)
            .field("compression", compression)
            .field("acks", acks)
            .field("enable_idempotence", enable_idempotence)
            .field("linger_ms", linger_ms)
            .field("batch_size", batch_size)
            .field("batch_num_messages", batch_num_messages)
            .field("message_timeout_ms", message_timeout_ms)
            .field("max_message_bytes", max_message_bytes)
            .field("oversize", oversize)
            .field("connect_timeout_ms", connect_timeout_ms)
            .field("batches_in_flight", batches_in_flight)
            .field("librdkafka_options", &Redacted(librdkafka_options))
            .finish()
    }
}

/// One topic for every record: the simplest to consume; per-namespace topics are opt-in.
fn default_topic() -> TopicTemplate {
    "meshtap-exchanges".parse().expect("a legal topic")
}

/// The exchange id: a retried record carries the key of its first copy, so consumers (or a
/// compacted topic) can drop duplicates by key, and one exchange always lands on one partition.
fn default_key() -> KafkaKey {
    KafkaKey::Id
}

/// lz4: the cheapest codec on the node's CPU, and JSON with headers compresses well with it.
/// zstd compresses better but is not in this build of librdkafka (rdkafka's `zstd` feature).
fn default_compression() -> Compression {
    Compression::Lz4
}

/// `all`: a record counts as delivered only once every in-sync replica has it, so a broker
/// failure after the acknowledgement loses nothing (the agent has checkpointed past it by then).
fn default_acks() -> Acks {
    Acks::All
}

/// On: librdkafka's own retries then never duplicate or reorder a message.
const fn default_enable_idempotence() -> bool {
    true
}

/// librdkafka's default since 1.9: fuller batches for a few milliseconds of latency.
const fn default_linger_ms() -> u64 {
    5
}

/// librdkafka's default (1 MB).
const fn default_batch_size() -> u64 {
    1_000_000
}

/// librdkafka's default.
const fn default_batch_num_messages() -> u64 {
    10_000
}

/// librdkafka's default (5 minutes): a broker outage shorter than this is ridden out inside
/// librdkafka, without sending anything twice.
const fn default_message_timeout_ms() -> u64 {
    300_000
}

/// librdkafka's `message.max.bytes` default, just below the brokers' default limit (1048588).
const fn default_max_message_bytes() -> u64 {
    1_000_000
}

/// Truncate: the exchange still arrives, with its metadata and headers, flagged `body_truncated`.
fn default_oversize() -> Oversize {
    Oversize::Truncate
}

/// 10 s: long enough for DNS and a TLS handshake to a distant cluster, short enough for a crash
/// loop to show the misconfiguration quickly.
const fn default_connect_timeout_ms() -> u64 {
    10_000
}

/// 4: enough to keep encoding, librdkafka's compression and the broker's round trip busy at
/// once (1 leaves each batch's path serial, see docs/benchmarks.md), while a slow broker holds
/// at most 4 more batches in memory than the agent's queue.
const fn default_batches_in_flight() -> usize {
    4
}

/// Most batches in flight: beyond this, memory grows without a gain.
const MAX_BATCHES_IN_FLIGHT: usize = 64;

/// librdkafka's bounds for `message.max.bytes`.
const MAX_MESSAGE_BYTES: std::ops::RangeInclusive<u64> = 1000..=1_000_000_000;

/// librdkafka properties that a field above sets, and that field.
const OWN_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "brokers"),
    ("metadata.broker.list", "brokers"),
    ("acks", "acks"),
    ("request.required.acks", "acks"),
    ("enable.idempotence", "enable_idempotence"),
    ("compression.type", "compression"),
    ("compression.codec", "compression"),
    ("linger.ms", "linger_ms"),
    ("queue.buffering.max.ms", "linger_ms"),
    ("batch.size", "batch_size"),
    ("batch.num.messages", "batch_num_messages"),
    ("message.timeout.ms", "message_timeout_ms"),
    ("delivery.timeout.ms", "message_timeout_ms"),
    ("message.max.bytes", "max_message_bytes"),
];

/// The message key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaKey {
    /// The exchange id.
    Id,
    /// No key: messages are spread over partitions by librdkafka's partitioner.
    None,
}

/// Record batch compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Acknowledgements the producer waits for. Written `all`, `-1`, `1` or `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Every in-sync replica (`all`, `-1`).
    All,
    /// The partition leader only (`1`).
    Leader,
    /// None: fire and forget (`0`); delivery then proves nothing.
    None,
}

impl Acks {
    /// librdkafka's value for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }

    fn from_text(text: &str) -> Option<Self> {
        match text {
            "all" | "-1" => Some(Acks::All),
            "1" => Some(Acks::Leader),
            "0" => Some(Acks::None),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Acks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        const EXPECTED: &str = "all, -1, 1 or 0";
        impl de::Visitor<'_> for Visitor {
            type Value = Acks;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Acks, E> {
                Acks::from_text(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Acks, E> {
                Acks::from_text(&v.to_string())
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Acks, E> {
                Acks::from_text(&v.to_string())
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// What happens to a record larger than `max_message_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Oversize {
    /// Cut the bodies, largest first, until the record fits; they are flagged `body_truncated`.
    Truncate,
    /// Do not send the record: it is counted and logged.
    Reject,
}

impl KafkaSinkConfig {
    /// A config with every default and these brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaSinkConfig {
            brokers: brokers.into(),
            topic: default_topic(),
            key: default_key(),
            compression: default_compression(),
            acks: default_acks(),
            enable_idempotence: default_enable_idempotence(),
            linger_ms: default_linger_ms(),
            batch_size: default_batch_size(),
            batch_num_messages: default_batch_num_messages(),
            message_timeout_ms: default_message_timeout_ms(),
            max_message_bytes: default_max_message_bytes(),
            oversize: default_oversize(),
            connect_timeout_ms: default_connect_timeout_ms(),
            batches_in_flight: default_batches_in_flight(),
            librdkafka_options: BTreeMap::new(),
        }
    }

    /// Checks the settings; the message names the offending field (`sink.acks`, ...). Ranges of
    /// plain librdkafka properties are left to librdkafka, which names them when the sink is built.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.split(',').all(|b| b.trim().is_empty()) {
            return Err("sink.brokers must name at least one host:port".into());
        }
        if self.enable_idempotence && self.acks != Acks::All {
            return Err(format!(
                "sink.enable_idempotence needs sink.acks: all (got {}); \
                 set enable_idempotence: false to use acks {0}",
                self.acks.as_str()
            ));
        }
        if !MAX_MESSAGE_BYTES.contains(&self.max_message_bytes) {
            return Err(format!(
                "sink.max_message_bytes must be between {} and {}, got {}",
                MAX_MESSAGE_BYTES.start(),
                MAX_MESSAGE_BYTES.end(),
                self.max_message_bytes
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err("sink.connect_timeout_ms must be greater than 0".into());
        }
        if !(1..=MAX_BATCHES_IN_FLIGHT).contains(&self.batches_in_flight) {
            return Err(format!(
                "sink.batches_in_flight must be between 1 and {MAX_BATCHES_IN_FLIGHT}, got {}",
                self.batches_in_flight
            ));
        }
        for name in self.librdkafka_options.keys() {
            let lower = name.trim().to_ascii_lowercase();
            if let Some((_, field)) = OWN_PROPERTIES.iter().find(|(p, _)| *p == lower) {
                return Err(format!(
                    "sink.librdkafka_options.{name} is set by meshtap; use sink.{field} instead"
                ));
            }
            if lower.is_empty() {
                return Err("sink.librdkafka_options has an empty property name".into());
            }
        }
        Ok(())
    }

    /// librdkafka's properties for the producer: `librdkafka_options`, then the fields above.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        // Names this agent in the brokers' logs and quotas, unless the options name it otherwise.
        config.set("client.id", "meshtap");
        for (name, value) in &self.librdkafka_options {
            config.set(name, value);
        }
        config
            .set("bootstrap.servers", &self.brokers)
            .set("acks", self.acks.as_str())
            .set("enable.idempotence", self.enable_idempotence.to_string())
            .set("compression.type", self.compression.as_str())
            .set("linger.ms", self.linger_ms.to_string())
            .set("batch.size", self.batch_size.to_string())
            .set("batch.num.messages", self.batch_num_messages.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("message.max.bytes", self.max_message_bytes.to_string());
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<KafkaSinkConfig, String> {
        let config: KafkaSinkConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn only_brokers_is_required() {
        assert_eq!(
            parse("brokers: k:9092\n").unwrap(),
            KafkaSinkConfig::new("k:9092")
        );
        let e = parse("topic: t\n").unwrap_err();
        assert!(e.contains("brokers"), "{e}");
    }

    #[test]
    fn the_module_doc_sample_is_the_defaults() {
        let doc = include_str!("config.rs");
        let sample: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .skip(2) // `sink:` and `type: kafka`: the lead's SinkConfig reads those
            .map(|l| l.strip_prefix("//!   ").unwrap_or("").to_owned() + "\n")
            .collect();
        assert_eq!(
            parse(&sample).unwrap(),
            KafkaSinkConfig::new("kafka-0.kafka:9092,kafka-1.kafka:9092")
        );
    }

    #[test]
    fn the_example_agent_config_ships_to_kafka() {
        let yaml = include_str!("../../../config/meshtap-kafka.yaml");
        // The rest of the file is the agent's; only `sink:` is read here, without its `type`.
        let mut agent: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        let sink = agent["sink"].as_object_mut().expect("a sink section");
        assert_eq!(sink.remove("type"), Some("kafka".into()));
        let config: KafkaSinkConfig = serde_json::from_value(sink.clone().into()).unwrap();
        config.validate().unwrap();
        assert_eq!(config.topic.to_string(), "meshtap.{namespace}");
    }

    #[test]
    fn acks_are_read_as_text_or_numbers() {
        for (yaml, acks) in [
            ("all", Acks::All),
            ("-1", Acks::All),
            ("'-1'", Acks::All),
            ("1", Acks::Leader),
            ("'1'", Acks::Leader),
            ("0", Acks::None),
        ] {
            let c = parse(&format!(
                "brokers: k:1\nacks: {yaml}\nenable_idempotence: false\n"
            ))
            .unwrap();
            assert_eq!(c.acks, acks, "{yaml}");
        }
        let e = parse("brokers: k:1\nacks: 2\n").unwrap_err();
        assert!(e.contains("all, -1, 1 or 0"), "{e}");
    }

    #[test]
    fn mistakes_are_clear_errors() {
        for (yaml, expected) in [
            ("brokers: k:1\nbroker: x\n", "unknown field `broker`"),
            ("brokers: ' , '\n", "sink.brokers must name at least one"),
            (
                "brokers: k:1\ntopic: 'mesh.{namespce}'\n",
                "unknown placeholder {namespce}",
            ),
            (
                "brokers: k:1\nacks: 1\n",
                "sink.enable_idempotence needs sink.acks: all (got 1)",
            ),
            ("brokers: k:1\ncompression: brotli\n", "brotli"),
            ("brokers: k:1\noversize: drop\n", "drop"),
            ("brokers: k:1\nkey: pod\n", "pod"),
            (
                "brokers: k:1\nmax_message_bytes: 10\n",
                "sink.max_message_bytes must be between 1000 and 1000000000, got 10",
            ),
            (
                "brokers: k:1\nconnect_timeout_ms: 0\n",
                "sink.connect_timeout_ms must be greater than 0",
            ),
            (
                "brokers: k:1\nbatches_in_flight: 0\n",
                "sink.batches_in_flight must be between 1 and 64, got 0",
            ),
            (
                "brokers: k:1\nlibrdkafka_options:\n  bootstrap.servers: other:9092\n",
                "sink.librdkafka_options.bootstrap.servers is set by meshtap; use sink.brokers instead",
            ),
            (
                "brokers: k:1\nlibrdkafka_options:\n  Compression.Codec: gzip\n",
                "use sink.compression instead",
            ),
            (
                "brokers: k:1\nlibrdkafka_options:\n  message.max.bytes: '5000'\n",
                "use sink.max_message_bytes instead",
            ),
        ] {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(expected), "{yaml:?}: {e}");
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut c = KafkaSinkConfig::new("a:1");
        for (name, value) in [
            ("sasl.password", "hunter2"),
            ("ssl.key.pem", "-----BEGIN"),
            ("sasl.oauthbearer.client.secret", "s3cret"),
            ("sasl.username", "meshtap"),
        ] {
            c.librdkafka_options.insert(name.into(), value.into());
        }
        let debug = format!("{c:?}");
        for secret in ["hunter2", "BEGIN", "s3cret"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains(r#""sasl.username": "meshtap""#), "{debug}");
        assert!(
            debug.contains(r#""sasl.password": "<redacted>""#),
            "{debug}"
        );
    }

    #[test]
    fn options_and_fields_become_librdkafka_properties() {
        let mut c = KafkaSinkConfig::new("a:1,b:2");
        c.librdkafka_options
            .insert("security.protocol".into(), "sasl_plaintext".into());
        c.librdkafka_options
            .insert("client.id".into(), "node-7".into());
        let p = c.client_config();
        assert_eq!(p.get("bootstrap.servers"), Some("a:1,b:2"));
        assert_eq!(p.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(p.get("client.id"), Some("node-7"));
        assert_eq!(p.get("acks"), Some("all"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        assert_eq!(p.get("compression.type"), Some("lz4"));
        assert_eq!(p.get("message.max.bytes"), Some("1000000"));
        assert_eq!(p.get("message.timeout.ms"), Some("300000"));
        assert_eq!(
            KafkaSinkConfig::new("a:1").client_config().get("client.id"),
            Some("meshtap")
        );
    }
}
