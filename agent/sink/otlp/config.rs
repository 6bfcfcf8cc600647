//! The OTLP sink's settings: the `sink:` section with `type: otlp`.
//!
//! ```yaml
//! sink:
//!   type: otlp
//!   endpoint: http://otel-collector.observability:4317
//!   protocol: grpc
//!   headers: {}
//!   timeout_ms: 10000
//!   max_request_bytes: 4194304
//!   service_name: meshtap
//!   resource_attributes: {}
//! ```
//!
//! [`OtlpSinkConfig::validate`] checks the shape of every field before any I/O; files named under
//! `tls:` are read when the sink connects.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use serde::Deserialize;

/// The OTLP sink's settings.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSinkConfig {
    /// The collector's OTLP receiver, `http://` or `https://`: host and port for `grpc`
    /// (`http://collector:4317`); for `http_protobuf` a base URL (`http://collector:4318`, to which
    /// `/v1/logs` is appended) or the full logs URL when it has a path. Required: where the collector
    /// runs is specific to each cluster, and a guessed default would look like an outage.
    pub endpoint: String,
    /// `grpc` (OTLP/gRPC) or `http_protobuf` (OTLP/HTTP with protobuf bodies).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers (gRPC metadata) sent with every export, e.g. `authorization: Bearer ...` or a
    /// tenant id. Their values are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Milliseconds allowed for one export, connecting included; past it the batch counts as not
    /// delivered and the agent retries it.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest export request sent, in encoded bytes. A larger batch is sent as several requests;
    /// one record larger than this alone has its bodies cut to fit (flagged `body_truncated`).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// `service.name` of the resource the records are reported under.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// More resource attributes (string values), e.g. `k8s.cluster.name` or
    /// `deployment.environment.name`; they override the ones the agent derives (`host.name`,
    /// `k8s.node.name`), except `service.name`, which is `service_name`.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// TLS settings for an `https://` endpoint (gRPC only). Without them an `https://` endpoint is
    /// verified against the system's trusted roots.
    #[serde(default)]
    pub tls: Option<OtlpTlsConfig>,
}

/// How exports are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention). The default, as in OpenTelemetry's SDKs' original
    /// default and the collector's primary receiver.
    #[default]
    Grpc,
    /// OTLP/HTTP, protobuf-encoded, over HTTP/1.1 (port 4318 by convention), for collectors
    /// reachable only through an HTTP proxy or load balancer. Plain `http://` only.
    #[serde(alias = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The name used in the config and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http_protobuf",
        }
    }
}

/// TLS for an `https://` endpoint. There is deliberately no switch to skip verification: give the
/// collector's CA in `ca_file` instead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpTlsConfig {
    /// PEM file of the CA(s) that sign the collector's certificate; without it, the system's
    /// trusted roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name the collector's certificate must carry, when it is not the endpoint's host (an
    /// endpoint given by IP address, or through a tunnel).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// 10 s: the OpenTelemetry SDKs' default export timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`).
const fn default_timeout_ms() -> u64 {
    10_000
}

/// 4 MiB: the OpenTelemetry Collector's default `max_recv_msg_size_mib` for gRPC, which larger
/// requests would exceed (and be refused, again and again).
const fn default_max_request_bytes() -> usize {
    4 << 20
}

/// The agent's name, as in its metrics and logs.
fn default_service_name() -> String {
    "meshtap".to_string()
}

/// Below this a single exchange with its headers may not fit in a request.
pub(crate) const MIN_MAX_REQUEST_BYTES: usize = 64 << 10;

/// Headers the sink sets itself (or HTTP/2 forbids): configuring them would break the protocol.
const RESERVED_HEADERS: [&str; 7] = [
    "content-type",
    "content-length",
    "content-encoding",
    "host",
    "te",
    "transfer-encoding",
    "connection",
];

impl OtlpSinkConfig {
    /// A config with `endpoint` and every other field at its default.
    pub fn new(endpoint: impl Into<String>) -> Self {
        OtlpSinkConfig {
            endpoint: endpoint.into(),
            protocol: OtlpProtocol::default(),
            headers: BTreeMap::new(),
            timeout_ms: default_timeout_ms(),
            max_request_bytes: default_max_request_bytes(),
            service_name: default_service_name(),
            resource_attributes: BTreeMap::new(),
            tls: None,
        }
    }

    /// Checks the settings, without I/O; the message names the offending field (`sink.endpoint`).
    pub fn validate(&self) -> Result<(), String> {
        let uri = self.endpoint_uri()?;
        let https = uri.scheme_str() == Some("https");
        let has_path = !matches!(uri.path(), "" | "/");
        match self.protocol {
            OtlpProtocol::Grpc if has_path || uri.query().is_some() => {
                return Err(format!(
                    "sink.endpoint for protocol grpc is host and port only, got {:?}",
                    self.endpoint
                ));
            }
            OtlpProtocol::HttpProtobuf if https => {
                return Err(
                    "sink.endpoint: https is supported with protocol grpc only; protocol \
                     http_protobuf speaks plain http"
                        .to_string(),
                );
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if !https {
                return Err(format!(
                    "sink.tls needs an https:// endpoint, got {:?}",
                    self.endpoint
                ));
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err("sink.tls.cert_file and sink.tls.key_file go together".to_string());
            }
            let files = [
                ("ca_file", &tls.ca_file),
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
            ];
            for (name, file) in files {
                if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                    return Err(format!("sink.tls.{name} must not be empty"));
                }
            }
            if tls.server_name.as_deref() == Some("") {
                return Err("sink.tls.server_name must not be empty".to_string());
            }
        }
        for (name, value) in &self.headers {
            check_header(self.protocol, name, value)?;
        }
        if self.timeout_ms == 0 {
            return Err("sink.timeout_ms must be greater than 0".to_string());
        }
        if self.max_request_bytes < MIN_MAX_REQUEST_BYTES {
            return Err(format!(
                "sink.max_request_bytes must be at least {MIN_MAX_REQUEST_BYTES}, got {}",
                self.max_request_bytes
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err("sink.service_name must not be empty".to_string());
        }
        for key in self.resource_attributes.keys() {
            if key.trim().is_empty() {
                return Err("sink.resource_attributes: a key is empty".to_string());
            }
            if key == "service.name" {
                return Err(
                    "sink.resource_attributes must not set service.name; use sink.service_name"
                        .to_string(),
                );
            }
        }
        Ok(())
    }

    /// The endpoint, parsed: `http` or `https`, with a host.
    pub(crate) fn endpoint_uri(&self) -> Result<Uri, String> {
        let uri: Uri = self
            .endpoint
            .parse()
            .map_err(|e| format!("sink.endpoint {:?} is not a URL: {e}", self.endpoint))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "sink.endpoint must be an http:// or https:// URL with a host, got {:?}",
                self.endpoint
            ));
        }
        Ok(uri)
    }
}

/// A header must be valid in HTTP (and gRPC metadata) and not one the sink sets itself.
fn check_header(protocol: OtlpProtocol, name: &str, value: &str) -> Result<(), String> {
    let parsed = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("sink.headers: {name:?} is not a valid header name"))?;
    if RESERVED_HEADERS.contains(&parsed.as_str()) {
        return Err(format!(
            "sink.headers: {name:?} is set by the sink and cannot be configured"
        ));
    }
    if protocol == OtlpProtocol::Grpc {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "sink.headers: gRPC metadata names are lower-case, got {name:?}"
            ));
        }
        if name.starts_with("grpc-") || name.ends_with("-bin") {
            return Err(format!(
                "sink.headers: {name:?} is reserved (grpc-*) or binary (*-bin) gRPC metadata"
            ));
        }
    }
    // Values are not echoed: they are often credentials.
    match HeaderValue::from_str(value) {
        Ok(_)
            if value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "sink.headers: the value of {name:?} must be printable ASCII"
        )),
    }
}

/// Header values are credentials more often than not: never print them.
impl fmt::Debug for OtlpSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|k| (k.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("OtlpSinkConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &headers)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("service_name", &self.service_name)
            .field("resource_attributes", &self.resource_attributes)
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The shape the lead wires into `SinkConfig`: `#[serde(tag = "type")]`, variant `otlp`.
    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
    enum Sink {
        Otlp(OtlpSinkConfig),
    }

    #[derive(Debug, Deserialize)]
    struct Wrapper {
        sink: Sink,
    }

    /// Parses a YAML document's `sink:` section and validates it.
    pub(crate) fn parse(yaml: &str) -> Result<OtlpSinkConfig, String> {
        let w: Wrapper = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        let Sink::Otlp(config) = w.sink;
        config.validate()?;
        Ok(config)
    }

    #[test]
    fn only_the_endpoint_is_required() {
        let c = parse("sink:\n  type: otlp\n  endpoint: http://127.0.0.1:4317\n").unwrap();
        assert_eq!(c, OtlpSinkConfig::new("http://127.0.0.1:4317"));
        assert_eq!(c.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.timeout_ms, 10_000);
        assert_eq!(c.max_request_bytes, 4 << 20);
        assert_eq!(c.service_name, "meshtap");
        let e = parse("sink:\n  type: otlp\n").unwrap_err();
        assert!(e.contains("endpoint"), "{e}");
    }

    #[test]
    fn the_module_doc_sample_parses_to_the_defaults() {
        let doc = include_str!("config.rs");
        let sample: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//! ").unwrap_or("").to_owned() + "\n")
            .collect();
        assert_eq!(
            parse(&sample).unwrap(),
            OtlpSinkConfig::new("http://otel-collector.observability:4317")
        );
    }

    #[test]
    fn every_field_parses() {
        let c = parse(
            "sink:
  type: otlp
  endpoint: https://collector.example:4317
  protocol: grpc
  headers:
    authorization: Bearer s3cret
    x-scope-orgid: tenant-1
  timeout_ms: 2500
  max_request_bytes: 1048576
  service_name: meshtap-prod
  resource_attributes:
    k8s.cluster.name: prod-eu
  tls:
    ca_file: /etc/meshtap/ca.pem
    cert_file: /etc/meshtap/tls.crt
    key_file: /etc/meshtap/tls.key
    server_name: collector.internal
",
        )
        .unwrap();
        assert_eq!(c.headers["authorization"], "Bearer s3cret");
        assert_eq!(c.timeout_ms, 2500);
        assert_eq!(c.max_request_bytes, 1 << 20);
        assert_eq!(c.resource_attributes["k8s.cluster.name"], "prod-eu");
        let tls = c.tls.as_ref().unwrap();
        assert_eq!(
            tls.key_file.as_deref(),
            Some("/etc/meshtap/tls.key".as_ref())
        );
        assert_eq!(tls.server_name.as_deref(), Some("collector.internal"));
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("authorization"), "{debug}");

        for spelling in ["http_protobuf", "http/protobuf"] {
            let c = parse(&format!(
                "sink: {{type: otlp, endpoint: 'http://c:4318', protocol: '{spelling}'}}"
            ))
            .unwrap();
            assert_eq!(c.protocol, OtlpProtocol::HttpProtobuf);
        }
        let c = parse(
            "sink: {type: otlp, endpoint: 'http://c:4318/otlp/v1/logs', protocol: http_protobuf}",
        );
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn mistakes_are_clear_errors() {
        let base = "sink:\n  type: otlp\n  endpoint: http://c:4317\n";
        for (yaml, expected) in [
            (format!("{base}  endpiont: x\n"), "endpiont"),
            (format!("{base}  protocol: http_json\n"), "http_json"),
            (
                format!("{base}  tls:\n    insecure_skip_verify: true\n"),
                "insecure_skip_verify",
            ),
            (
                "sink: {type: otlp, endpoint: 'c:4317'}".into(),
                "sink.endpoint must be an http:// or https:// URL with a host",
            ),
            (
                "sink: {type: otlp, endpoint: 'not a url'}".into(),
                "sink.endpoint \"not a url\" is not a URL",
            ),
            (
                "sink: {type: otlp, endpoint: 'ftp://c:21'}".into(),
                "sink.endpoint must be an http:// or https:// URL",
            ),
            (
                "sink: {type: otlp, endpoint: 'http://c:4317/v1/logs'}".into(),
                "sink.endpoint for protocol grpc is host and port only",
            ),
            (
                "sink: {type: otlp, endpoint: 'https://c:4318', protocol: http_protobuf}".into(),
                "https is supported with protocol grpc only",
            ),
            (
                format!("{base}  tls: {{ca_file: /ca.pem}}\n"),
                "sink.tls needs an https:// endpoint",
            ),
            (
                "sink: {type: otlp, endpoint: 'https://c:4317', tls: {cert_file: /c.pem}}".into(),
                "sink.tls.cert_file and sink.tls.key_file go together",
            ),
            (
                "sink: {type: otlp, endpoint: 'https://c:4317', tls: {ca_file: ''}}".into(),
                "sink.tls.ca_file must not be empty",
            ),
            (
                format!("{base}  headers: {{'bad header': x}}\n"),
                "\"bad header\" is not a valid header name",
            ),
            (
                format!("{base}  headers: {{Authorization: x}}\n"),
                "gRPC metadata names are lower-case",
            ),
            (
                format!("{base}  headers: {{content-type: x}}\n"),
                "\"content-type\" is set by the sink",
            ),
            (
                format!("{base}  headers: {{grpc-timeout: 1S}}\n"),
                "reserved (grpc-*)",
            ),
            (
                format!("{base}  headers: {{x-key-bin: AAE=}}\n"),
                "binary (*-bin)",
            ),
            (
                format!("{base}  headers: {{authorization: \"line\\nbreak\"}}\n"),
                "the value of \"authorization\" must be printable ASCII",
            ),
            (
                format!("{base}  timeout_ms: 0\n"),
                "sink.timeout_ms must be greater than 0",
            ),
            (
                format!("{base}  max_request_bytes: 1000\n"),
                "sink.max_request_bytes must be at least 65536, got 1000",
            ),
            (
                format!("{base}  service_name: ''\n"),
                "sink.service_name must not be empty",
            ),
            (
                format!("{base}  resource_attributes: {{service.name: x}}\n"),
                "use sink.service_name",
            ),
        ] {
            let e = parse(&yaml).unwrap_err();
            assert!(e.contains(expected), "{yaml:?}: {e}");
        }
        // HTTP header names are case-insensitive: upper case is fine there.
        parse("sink: {type: otlp, endpoint: 'http://c:4318', protocol: http_protobuf, headers: {Authorization: x}}")
            .unwrap();
    }
}
