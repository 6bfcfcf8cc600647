//! How an [`Exchange`] becomes one OTLP `LogRecord`, and the agent's `Resource`. The table in
//! `docs/otlp.md` lists every attribute; names follow OpenTelemetry's semantic conventions (HTTP,
//! URL, server, Kubernetes) where one exists, and `meshtap.*` for the rest.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::config::OtlpSinkConfig;
use crate::record::{Direction, Exchange, Headers};

/// `event_name` of every record: tells meshtap's exchanges apart from other logs in a backend.
pub(crate) const EVENT_NAME: &str = "meshtap.exchange";

/// Pseudo-headers that have attributes of their own (`http.request.method`, `url.path`, ...);
/// any other pseudo-header is kept as `http.<direction>.header.:<name>`.
const MAPPED_PSEUDO_HEADERS: [&str; 5] = [":method", ":path", ":authority", ":scheme", ":status"];

/// What every record of the agent shares: where it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AgentIdentity {
    /// The Kubernetes node (`NODE_NAME`, from the DaemonSet's `fieldRef: spec.nodeName`).
    pub node_name: Option<String>,
}

impl AgentIdentity {
    /// Reads `NODE_NAME`; unset or empty means unknown.
    pub fn from_env() -> Self {
        AgentIdentity {
            node_name: std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()),
        }
    }
}

/// The resource every record is reported under: the agent itself.
pub(crate) fn resource(config: &OtlpSinkConfig, identity: &AgentIdentity) -> Resource {
    let mut attributes = vec![
        kv("service.name", string(&config.service_name)),
        kv("service.version", string(env!("CARGO_PKG_VERSION"))),
    ];
    if let Some(node) = &identity.node_name {
        attributes.push(kv("host.name", string(node)));
        attributes.push(kv("k8s.node.name", string(node)));
    }
    for (key, value) in &config.resource_attributes {
        attributes.retain(|a| &a.key != key);
        attributes.push(kv(key, string(value)));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The instrumentation scope of every record.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "meshtap".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    }
}

/// Now, in nanoseconds since the Unix epoch (the records' `observed_time_unix_nano`).
pub(crate) fn now_unix_nano() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

/// How many body bytes a record may carry, when a request limit forces a cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyBudget {
    /// Body bytes allowed for request and response together.
    pub bytes: usize,
    /// The sink's `max_request_bytes`, named in the truncation reason.
    pub max_request_bytes: usize,
}

/// One exchange as one log record. `budget`, when given, caps the bytes of both bodies together.
pub(crate) fn log_record(
    ex: &Exchange,
    identity: &AgentIdentity,
    observed_unix_nano: u64,
    budget: Option<BodyBudget>,
) -> LogRecord {
    let inexact = !ex.warnings.is_empty() || !ex.complete;
    let (severity, severity_text) = if inexact {
        (SeverityNumber::Warn, "WARN")
    } else {
        (SeverityNumber::Info, "INFO")
    };
    let mut record = LogRecord {
        time_unix_nano: unix_nano(&ex.time).unwrap_or(0),
        observed_time_unix_nano: observed_unix_nano,
        severity_number: severity as i32,
        severity_text: severity_text.to_string(),
        body: Some(AnyValue {
            value: Some(string(summary(ex))),
        }),
        event_name: EVENT_NAME.to_string(),
        ..Default::default()
    };
    if let Some(trace) = ex
        .request
        .as_ref()
        .and_then(|r| r.headers.as_ref())
        .and_then(trace_context)
    {
        record.trace_id = trace.trace_id.to_vec();
        record.span_id = trace.span_id.to_vec();
        record.flags = u32::from(trace.flags);
    }

    let a = &mut record.attributes;
    if let Some(request) = &ex.request {
        if let Some(method) = &request.method {
            a.push(kv("http.request.method", string(method)));
        }
        if let Some(target) = &request.path {
            let (path, query) = split_target(target);
            a.push(kv("url.path", string(path)));
            if let Some(query) = query {
                a.push(kv("url.query", string(query)));
            }
        }
        if let Some(scheme) = first(request.headers.as_ref(), ":scheme") {
            a.push(kv("url.scheme", string(scheme)));
        }
        if let Some(authority) = &request.authority {
            let (host, port) = split_authority(authority);
            a.push(kv("server.address", string(host)));
            if let Some(port) = port {
                a.push(kv("server.port", Value::IntValue(i64::from(port))));
            }
        }
    }
    if let Some(status) = ex.response.as_ref().and_then(|r| r.status) {
        a.push(kv(
            "http.response.status_code",
            Value::IntValue(i64::from(status)),
        ));
    }
    if let Some(k8s) = &ex.k8s {
        a.push(kv("k8s.namespace.name", string(&k8s.namespace)));
        a.push(kv("k8s.pod.name", string(&k8s.pod)));
        a.push(kv("k8s.pod.uid", string(&k8s.pod_uid)));
        a.push(kv("k8s.container.name", string(&k8s.container)));
    }
    if let Some(node) = &identity.node_name {
        a.push(kv("k8s.node.name", string(node)));
    }
    a.push(kv("meshtap.id", string(&ex.id)));
    a.push(kv("meshtap.source", string(ex.source.as_str())));
    a.push(kv("meshtap.complete", Value::BoolValue(ex.complete)));
    a.push(kv("meshtap.warnings", strings(&ex.warnings)));
    a.push(kv("meshtap.log.file", string(&ex.log.file)));
    a.push(kv("meshtap.log.offset", int(ex.log.offset)));
    if let Some(thread) = ex.log.thread {
        a.push(kv("meshtap.log.thread", int(thread)));
    }
    if let Some(stream) = &ex.log.stream {
        a.push(kv("meshtap.log.stream", string(stream)));
    }

    let (request_cap, response_cap) = match budget {
        Some(b) => split_budget(b.bytes, body_len(&ex.request), body_len(&ex.response)),
        None => (usize::MAX, usize::MAX),
    };
    for (name, direction, cap) in [
        ("request", &ex.request, request_cap),
        ("response", &ex.response, response_cap),
    ] {
        if let Some(d) = direction {
            direction_attributes(&mut record.attributes, name, d, cap, budget);
        }
    }
    record
}

/// `http.<name>.header.*` and `meshtap.<name>.*` for one direction; the body cut to `cap` bytes.
fn direction_attributes(
    a: &mut Vec<KeyValue>,
    name: &str,
    d: &Direction,
    cap: usize,
    budget: Option<BodyBudget>,
) {
    if let Some(headers) = &d.headers {
        for (header, values) in headers {
            if !MAPPED_PSEUDO_HEADERS.contains(&header.as_str()) {
                a.push(kv(format!("http.{name}.header.{header}"), strings(values)));
            }
        }
    }
    if let Some(trailers) = &d.trailers {
        for (trailer, values) in trailers {
            a.push(kv(
                format!("meshtap.{name}.trailer.{trailer}"),
                strings(values),
            ));
        }
    }
    let text = std::str::from_utf8(&d.body).ok();
    let (body, encoding, kept) = match text {
        Some(text) => {
            let kept = floor_char_boundary(text, cap);
            (string(&text[..kept]), "utf8", kept)
        }
        None => {
            let kept = d.body.len().min(cap);
            (Value::BytesValue(d.body[..kept].to_vec()), "base64", kept)
        }
    };
    let mut truncated_reason = d.truncated_reason.clone();
    if kept < d.body.len() {
        let cut = format!(
            "cut to {kept} of {} logged bytes to fit the OTLP sink's max_request_bytes ({})",
            d.body.len(),
            budget.map_or(0, |b| b.max_request_bytes)
        );
        truncated_reason = Some(match truncated_reason {
            Some(reason) => format!("{reason}; then {cut}"),
            None => cut,
        });
    }
    let key = |field: &str| format!("meshtap.{name}.{field}");
    a.push(kv(key("body"), body));
    a.push(kv(key("body_encoding"), string(encoding)));
    a.push(kv(key("body_size"), int(d.body_size)));
    a.push(kv(
        key("body_truncated"),
        Value::BoolValue(d.body_truncated || kept < d.body.len()),
    ));
    if let Some(reason) = truncated_reason {
        a.push(kv(key("truncated_reason"), string(reason)));
    }
    if let Some(time) = &d.start_time {
        a.push(kv(key("start_time"), string(time)));
    }
    if let Some(time) = &d.end_time {
        a.push(kv(key("end_time"), string(time)));
    }
    a.push(kv(key("ended"), Value::BoolValue(d.ended)));
}

/// The record's body: `METHOD PATH STATUS`, `-` for what was not logged (`- - 200` for the
/// seed's body-only filter, `GET /x -` for an exchange without response).
pub(crate) fn summary(ex: &Exchange) -> String {
    let request = ex.request.as_ref();
    let method = request.and_then(|r| r.method.as_deref()).unwrap_or("-");
    let path = request.and_then(|r| r.path.as_deref()).unwrap_or("-");
    let status = ex
        .response
        .as_ref()
        .and_then(|r| r.status)
        .map_or_else(|| "-".to_string(), |s| s.to_string());
    format!("{method} {path} {status}")
}

/// A W3C trace context: the ids a log record is correlated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// The request's trace context: its `traceparent` header (W3C), else Zipkin's B3 headers, which
/// Istio propagates by default (`b3` single header, or `x-b3-traceid` and `x-b3-spanid`).
pub(crate) fn trace_context(headers: &Headers) -> Option<TraceContext> {
    let only = |name: &str| match headers.get(name).map(Vec::as_slice) {
        Some([value]) => Some(value.as_str()),
        _ => None, // absent, or repeated: ambiguous, so ignored (W3C: invalid)
    };
    if headers.contains_key("traceparent") {
        return only("traceparent").and_then(parse_traceparent);
    }
    if let Some(b3) = only("b3") {
        let mut parts = b3.split('-');
        let (trace, span) = (parts.next()?, parts.next()?);
        return b3_context(trace, span, parts.next());
    }
    b3_context(
        only("x-b3-traceid")?,
        only("x-b3-spanid")?,
        only("x-b3-sampled"),
    )
}

/// Parses a W3C `traceparent`: `<version>-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
/// Version `00` is exactly that; later versions may append `-...`; `ff` and all-zero ids are
/// invalid (W3C Trace Context, "traceparent Header").
pub(crate) fn parse_traceparent(value: &str) -> Option<TraceContext> {
    let value = value.trim();
    let b = value.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = lower_hex::<1>(&value[..2])?[0];
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = lower_hex::<16>(&value[3..35])?;
    let span_id = lower_hex::<8>(&value[36..52])?;
    let flags = lower_hex::<1>(&value[53..55])?[0];
    nonzero(TraceContext {
        trace_id,
        span_id,
        flags,
    })
}

/// B3: a 64-bit trace id is the low half of a 128-bit one (left-padded with zeros); sampled is
/// `1`, `true` or `d` (debug).
fn b3_context(trace: &str, span: &str, sampled: Option<&str>) -> Option<TraceContext> {
    let mut trace_id = [0u8; 16];
    match trace.len() {
        32 => trace_id = lower_hex::<16>(trace)?,
        16 => trace_id[8..].copy_from_slice(&lower_hex::<8>(trace)?),
        _ => return None,
    }
    let span_id = lower_hex::<8>(span)?;
    let flags = u8::from(matches!(sampled, Some("1" | "true" | "d")));
    nonzero(TraceContext {
        trace_id,
        span_id,
        flags,
    })
}

fn nonzero(trace: TraceContext) -> Option<TraceContext> {
    let zero = trace.trace_id == [0; 16] || trace.span_id == [0; 8];
    (!zero).then_some(trace)
}

/// Exactly `2 * N` lower-case hex digits (W3C does not allow upper case).
fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

/// `/a/b?x=1` is path `/a/b` and query `x=1`; a fragment (never sent in HTTP) stays in the path.
fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// `host:port`, `[v6]:port`, `host` or `[v6]` to host (without brackets) and port.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    // userinfo@ is not allowed in HTTP/2's :authority, but strip it if a client sent it.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// RFC 3339 to nanoseconds since the Unix epoch; `None` when unreadable or before 1970.
fn unix_nano(time: &str) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    u64::try_from(t.timestamp_nanos_opt()?).ok()
}

/// Splits `total` body bytes between request and response: each gets half, and what one does not
/// need goes to the other.
fn split_budget(total: usize, request: usize, response: usize) -> (usize, usize) {
    let request_cap = request.min(total / 2);
    let response_cap = response.min(total - request_cap);
    let request_cap = request.min(total - response_cap);
    (request_cap, response_cap)
}

fn body_len(direction: &Option<Direction>) -> usize {
    direction.as_ref().map_or(0, |d| d.body.len())
}

/// The largest `n <= max` at which `text` can be cut.
fn floor_char_boundary(text: &str, max: usize) -> usize {
    if max >= text.len() {
        return text.len();
    }
    (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

fn first<'a>(headers: Option<&'a Headers>, name: &str) -> Option<&'a str> {
    headers?.get(name)?.first().map(String::as_str)
}

fn kv(key: impl Into<String>, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn string(s: impl Into<String>) -> Value {
    Value::StringValue(s.into())
}

fn int(n: u64) -> Value {
    Value::IntValue(i64::try_from(n).unwrap_or(i64::MAX))
}

fn strings(values: &[String]) -> Value {
    Value::ArrayValue(ArrayValue {
        values: values
            .iter()
            .map(|v| AnyValue {
                value: Some(string(v)),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_as_w3c_specifies() {
        let tp =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            tp.trace_id,
            [
                0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80,
                0x31, 0x9c
            ]
        );
        assert_eq!(tp.span_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
        assert_eq!(tp.flags, 1);
        // A later version may append fields.
        let future = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-extra";
        assert_eq!(parse_traceparent(future).unwrap().flags, 0);
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.entry(k.to_string()).or_default().push(v.to_string());
        }
        h
    }

    #[test]
    fn b3_is_the_fallback_and_repeated_headers_are_ignored() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let w3c = parse_traceparent(tp).unwrap();
        assert_eq!(trace_context(&headers(&[("traceparent", tp)])), Some(w3c));
        // Repeated traceparent: invalid, and B3 is not consulted then.
        assert_eq!(
            trace_context(&headers(&[
                ("traceparent", tp),
                ("traceparent", tp),
                ("b3", "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1"),
            ])),
            None
        );
        let multi = trace_context(&headers(&[
            ("x-b3-traceid", "8448eb211c80319c"),
            ("x-b3-spanid", "b7ad6b7169203331"),
            ("x-b3-sampled", "1"),
        ]))
        .unwrap();
        assert_eq!(multi.trace_id[..8], [0; 8]);
        assert_eq!(
            multi.trace_id[8..],
            [0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c]
        );
        assert_eq!(multi.flags, 1);
        let single = trace_context(&headers(&[(
            "b3",
            "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",
        )]))
        .unwrap();
        assert_eq!(single.trace_id, w3c.trace_id);
        assert_eq!(single.flags, 0);
        assert_eq!(
            trace_context(&headers(&[("b3", "0")])),
            None,
            "deny sampling only"
        );
        assert_eq!(
            trace_context(&headers(&[("x-b3-traceid", "8448eb211c80319c")])),
            None
        );
    }

    #[test]
    fn targets_and_authorities_split() {
        assert_eq!(split_target("/a/b?x=1&y"), ("/a/b", Some("x=1&y")));
        assert_eq!(split_target("/a?"), ("/a", Some("")));
        assert_eq!(split_target("/a"), ("/a", None));
        assert_eq!(
            split_authority("productpage:9080"),
            ("productpage", Some(9080))
        );
        assert_eq!(split_authority("example.com"), ("example.com", None));
        assert_eq!(split_authority("[::1]:8443"), ("::1", Some(8443)));
        assert_eq!(split_authority("[::1]"), ("::1", None));
        assert_eq!(split_authority("u:p@h:1"), ("h", Some(1)));
        assert_eq!(split_authority("h:notaport"), ("h:notaport", None));
        assert_eq!(split_authority("::1"), ("::1", None));
    }

    #[test]
    fn times_and_budgets() {
        assert_eq!(
            unix_nano("2026-11-25T08:58:36.571Z"),
            Some(1_795_597_116_571_000_000)
        );
        assert_eq!(
            unix_nano("2026-11-25T09:58:36.571+01:00"),
            Some(1_795_597_116_571_000_000)
        );
        assert_eq!(unix_nano("yesterday"), None);
        assert_eq!(unix_nano("1969-12-31T23:59:59Z"), None);
        assert_eq!(split_budget(100, 10, 500), (10, 90));
        assert_eq!(split_budget(100, 500, 10), (90, 10));
        assert_eq!(split_budget(100, 500, 500), (50, 50));
        assert_eq!(split_budget(100, 30, 30), (30, 30));
        assert_eq!(split_budget(0, 30, 30), (0, 0));
        assert_eq!(floor_char_boundary("aé", 2), 1);
        assert_eq!(floor_char_boundary("aé", 3), 3);
        assert_eq!(floor_char_boundary("aé", 9), 3);
    }
}
