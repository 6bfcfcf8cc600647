//! Envoy tap traces (`envoy.data.tap.v3.TraceWrapper`) read from JSON or binary protobuf, and
//! turned into exchange records.
//!
//! Only buffered HTTP traces (`http_buffered_trace`: one whole request and response per trace)
//! become records. Streamed segments (`output_config.streaming: true`) and socket traces (the tap
//! transport socket) are reported as unsupported, never silently dropped.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use crate::record::{Direction, Exchange, Headers, K8sMeta, LogPosition, Source};

/// One direction of a buffered trace, whatever format it was read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceMessage {
    /// `(name, value)` in Envoy's order, pseudo-headers included.
    pub headers: Vec<(String, String)>,
    pub trailers: Vec<(String, String)>,
    /// `None` when Envoy saw no body.
    pub body: Option<Vec<u8>>,
    /// Envoy cut the body at `max_buffered_rx_bytes` / `max_buffered_tx_bytes`.
    pub truncated: bool,
    /// When Envoy received the headers (only with the filter's `record_headers_received_time`).
    pub headers_received_time: Option<DateTime<Utc>>,
}

/// `envoy.data.tap.v3.HttpBufferedTrace`: a whole exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferedTrace {
    pub request: Option<TraceMessage>,
    pub response: Option<TraceMessage>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    #[error("not a tap trace: {0}")]
    Invalid(String),
    #[error("{0} traces are not supported (meshtap reads buffered HTTP traces: set output_config.streaming to false)")]
    Unsupported(&'static str),
}

// --- JSON (`JSON_BODY_AS_BYTES` / `JSON_BODY_AS_STRING`), as protobuf's JSON mapping writes it ---

#[derive(Debug, Deserialize)]
pub struct JsonTraceWrapper {
    #[serde(default)]
    http_buffered_trace: Option<JsonBufferedTrace>,
    #[serde(default)]
    http_streamed_trace_segment: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    socket_buffered_trace: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    socket_streamed_trace_segment: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct JsonBufferedTrace {
    #[serde(default)]
    request: Option<JsonMessage>,
    #[serde(default)]
    response: Option<JsonMessage>,
}

#[derive(Debug, Deserialize)]
struct JsonMessage {
    #[serde(default)]
    headers: Vec<JsonHeader>,
    #[serde(default)]
    trailers: Vec<JsonHeader>,
    #[serde(default)]
    body: Option<JsonBody>,
    #[serde(default)]
    headers_received_time: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JsonHeader {
    key: String,
    #[serde(default)]
    value: String,
    /// Base64 bytes; Envoy fills it instead of `value` for values that are not valid UTF-8.
    #[serde(default)]
    raw_value: String,
}

#[derive(Debug, Deserialize)]
struct JsonBody {
    #[serde(default)]
    as_bytes: Option<String>,
    #[serde(default)]
    as_string: Option<String>,
    #[serde(default)]
    truncated: bool,
}

impl JsonTraceWrapper {
    pub fn into_trace(self) -> Result<BufferedTrace, TraceError> {
        if let Some(trace) = self.http_buffered_trace {
            return Ok(BufferedTrace {
                request: trace.request.map(JsonMessage::convert).transpose()?,
                response: trace.response.map(JsonMessage::convert).transpose()?,
            });
        }
        Err(if self.http_streamed_trace_segment.is_some() {
            TraceError::Unsupported("streamed HTTP")
        } else if self.socket_buffered_trace.is_some()
            || self.socket_streamed_trace_segment.is_some()
        {
            TraceError::Unsupported("socket (transport tap)")
        } else {
            TraceError::Invalid("no http_buffered_trace".into())
        })
    }
}

impl JsonMessage {
    fn convert(self) -> Result<TraceMessage, TraceError> {
        let b64 = |what: &str, text: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| TraceError::Invalid(format!("bad base64 in {what}: {e}")))
        };
        let header = |h: JsonHeader| -> Result<(String, String), TraceError> {
            let value = if h.value.is_empty() && !h.raw_value.is_empty() {
                String::from_utf8_lossy(&b64("raw_value", &h.raw_value)?).into_owned()
            } else {
                h.value
            };
            Ok((h.key, value))
        };
        let (body, truncated) = match self.body {
            None => (None, false),
            Some(body) => {
                let bytes = match (body.as_bytes, body.as_string) {
                    (Some(b), _) => b64("body.as_bytes", &b)?,
                    (None, Some(s)) => s.into_bytes(),
                    (None, None) => Vec::new(),
                };
                (Some(bytes), body.truncated)
            }
        };
        let headers_received_time = match self.headers_received_time {
            None => None,
            Some(t) => Some(
                DateTime::parse_from_rfc3339(&t)
                    .map_err(|e| {
                        TraceError::Invalid(format!("bad headers_received_time {t:?}: {e}"))
                    })?
                    .with_timezone(&Utc),
            ),
        };
        Ok(TraceMessage {
            headers: self
                .headers
                .into_iter()
                .map(header)
                .collect::<Result<_, _>>()?,
            trailers: self
                .trailers
                .into_iter()
                .map(header)
                .collect::<Result<_, _>>()?,
            body,
            truncated,
            headers_received_time,
        })
    }
}

/// Every trace in a JSON text of concatenated `TraceWrapper` objects (Envoy's admin stream and
/// `file_per_tap` JSON files), or the first error.
pub fn parse_json_traces(bytes: &[u8]) -> Result<Vec<BufferedTrace>, TraceError> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<JsonTraceWrapper>()
        .map(|wrapper| {
            wrapper
                .map_err(|e| TraceError::Invalid(e.to_string()))?
                .into_trace()
        })
        .collect()
}

/// Splits a byte stream of concatenated JSON traces (Envoy's admin `/tap` response, which
/// neither frames nor newline-separates them) into whole traces, incrementally and bounded.
#[derive(Debug)]
pub struct JsonTraceStream {
    buf: Vec<u8>,
    cap: usize,
}

impl JsonTraceStream {
    /// `cap`: the largest trace accepted, in bytes of JSON.
    pub fn new(cap: usize) -> Self {
        JsonTraceStream {
            buf: Vec::new(),
            cap,
        }
    }

    /// Appends `data`; returns the traces it completed (none while a trace is incomplete), each
    /// one parsed or the reason it is skipped. `Err` when the stream is not JSON objects or a
    /// trace exceeds the cap: the stream cannot continue.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Result<BufferedTrace, TraceError>>, String> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        // Every JSON object ends with `}`: without one in the new bytes nothing was completed
        // (the bytes before them were parsed when they came). This keeps a large trace arriving
        // in many frames from being re-parsed once per frame.
        if memchr::memchr(b'}', data).is_some() {
            let mut values =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<JsonTraceWrapper>();
            let mut consumed = 0;
            loop {
                match values.next() {
                    None => {
                        consumed = values.byte_offset();
                        break;
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(wrapper)) => {
                        consumed = values.byte_offset();
                        out.push(wrapper.into_trace());
                    }
                }
            }
            self.buf.drain(..consumed);
        }
        if self.buf.len() > self.cap {
            return Err(format!("a trace is larger than {} bytes", self.cap));
        }
        Ok(out)
    }
}

// --- binary protobuf (`PROTO_BINARY`, `PROTO_BINARY_LENGTH_DELIMITED`) ---

use envoy_types::pb::envoy::data::tap::v3 as pb;

fn from_proto_message(m: pb::http_buffered_trace::Message) -> TraceMessage {
    let header = |h: envoy_types::pb::envoy::config::core::v3::HeaderValue| {
        let value = if h.value.is_empty() && !h.raw_value.is_empty() {
            String::from_utf8_lossy(&h.raw_value).into_owned()
        } else {
            h.value
        };
        (h.key, value)
    };
    let (body, truncated) = match m.body {
        None => (None, false),
        Some(body) => {
            let bytes = match body.body_type {
                Some(pb::body::BodyType::AsBytes(b)) => b,
                Some(pb::body::BodyType::AsString(s)) => s.into_bytes(),
                None => Vec::new(),
            };
            (Some(bytes), body.truncated)
        }
    };
    TraceMessage {
        headers: m.headers.into_iter().map(header).collect(),
        trailers: m.trailers.into_iter().map(header).collect(),
        body,
        truncated,
        headers_received_time: m
            .headers_received_time
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))),
    }
}

fn from_proto(wrapper: pb::TraceWrapper) -> Result<BufferedTrace, TraceError> {
    match wrapper.trace {
        Some(pb::trace_wrapper::Trace::HttpBufferedTrace(t)) => Ok(BufferedTrace {
            request: t.request.map(from_proto_message),
            response: t.response.map(from_proto_message),
        }),
        Some(pb::trace_wrapper::Trace::HttpStreamedTraceSegment(_)) => {
            Err(TraceError::Unsupported("streamed HTTP"))
        }
        Some(_) => Err(TraceError::Unsupported("socket (transport tap)")),
        None => Err(TraceError::Invalid("empty TraceWrapper".into())),
    }
}

/// The trace in a `PROTO_BINARY` file (one `TraceWrapper`).
pub fn parse_proto_trace(bytes: &[u8]) -> Result<BufferedTrace, TraceError> {
    use prost::Message as _;
    let wrapper =
        pb::TraceWrapper::decode(bytes).map_err(|e| TraceError::Invalid(e.to_string()))?;
    from_proto(wrapper)
}

/// The traces in a `PROTO_BINARY_LENGTH_DELIMITED` file.
pub fn parse_proto_delimited_traces(mut bytes: &[u8]) -> Result<Vec<BufferedTrace>, TraceError> {
    use prost::Message as _;
    let mut traces = Vec::new();
    while !bytes.is_empty() {
        let wrapper = pb::TraceWrapper::decode_length_delimited(&mut bytes)
            .map_err(|e| TraceError::Invalid(e.to_string()))?;
        traces.push(from_proto(wrapper)?);
    }
    Ok(traces)
}

// --- records ---

/// Where a trace came from, for the record's `id`, `log`, `k8s` and `time`.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `log.file`: the admin address (`envoy-admin://ADDR` with the pod or namespace) or the tap
    /// file's path.
    pub file: String,
    /// `log.offset`: the trace's ordinal in its admin session or file (0 for the first).
    pub ordinal: u64,
    /// The deterministic id (see [`trace_id`]).
    pub id: String,
    pub k8s: Option<K8sMeta>,
    /// When meshtap received the trace: the record's time when Envoy recorded none.
    pub received: DateTime<Utc>,
}

/// A 32-hex-digit id from the parts that identify a trace.
pub fn trace_id(parts: &[&[u8]]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    format!("{:032x}", hasher.digest128())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn headers_map(list: &[(String, String)]) -> Headers {
    let mut map = Headers::new();
    for (name, value) in list {
        map.entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.clone());
    }
    map
}

fn direction(m: TraceMessage, limit_name: &str) -> Direction {
    let body = m.body.unwrap_or_default();
    let mut d = Direction {
        headers: Some(headers_map(&m.headers)),
        trailers: (!m.trailers.is_empty()).then(|| headers_map(&m.trailers)),
        body_size: body.len() as u64,
        body,
        start_time: m.headers_received_time.map(rfc3339),
        ended: true,
        ..Default::default()
    };
    if m.truncated {
        d.truncate(format!(
            "Envoy's tap filter buffered only the first {} bytes ({limit_name}); the body was longer and its full size is unknown",
            d.body_size
        ));
    }
    d.lift_pseudo_headers();
    d
}

/// The record for one buffered trace.
pub fn to_exchange(trace: BufferedTrace, origin: Origin) -> Exchange {
    let time = trace
        .request
        .as_ref()
        .and_then(|r| r.headers_received_time)
        .unwrap_or(origin.received);
    let request = trace.request.map(|m| direction(m, "max_buffered_rx_bytes"));
    let response = trace
        .response
        .map(|m| direction(m, "max_buffered_tx_bytes"));
    let mut exchange = Exchange {
        id: origin.id,
        source: Source::Tap,
        time: rfc3339(time),
        k8s: origin.k8s,
        log: LogPosition {
            file: origin.file,
            offset: origin.ordinal,
            thread: None,
            stream: None,
        },
        complete: request.is_some() && response.is_some(),
        request,
        response,
        warnings: Vec::new(),
        redacted: Vec::new(),
    };
    if exchange.request.is_none() {
        exchange.warn("Envoy's trace has no request");
    }
    if exchange.response.is_none() {
        exchange.warn("Envoy's trace has no response (the stream was reset before one was sent)");
    }
    exchange
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like Envoy 1.40's `JSON_BODY_AS_BYTES` output (pretty-printed, concatenated).
    const TWO_TRACES: &str = r#"{
 "http_buffered_trace": {
  "request": {
   "headers": [
    {"key": ":authority", "value": "shop:9080", "raw_value": ""},
    {"key": ":path", "value": "/cart?x=1", "raw_value": ""},
    {"key": ":method", "value": "POST", "raw_value": ""},
    {"key": "set-thing", "value": "a", "raw_value": ""},
    {"key": "Set-Thing", "value": "b", "raw_value": ""},
    {"key": "x-raw", "value": "", "raw_value": "/w=="}
   ],
   "body": {"as_bytes": "AP9h", "truncated": false},
   "trailers": [],
   "headers_received_time": "2026-11-25T11:55:08.123456Z"
  },
  "response": {
   "headers": [{"key": ":status", "value": "200", "raw_value": ""}],
   "body": {"as_bytes": "aGVsbG8=", "truncated": true},
   "trailers": [{"key": "grpc-status", "value": "0", "raw_value": ""}]
  }
 }
}
{"http_buffered_trace": {"request": {"headers": [{"key": ":method", "value": "GET"}]}}}"#;

    #[test]
    fn concatenated_json_traces_become_records() {
        let traces = parse_json_traces(TWO_TRACES.as_bytes()).unwrap();
        assert_eq!(traces.len(), 2);
        let received = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let origin = |ordinal| Origin {
            file: "f".into(),
            ordinal,
            id: "i".into(),
            k8s: None,
            received,
        };
        let e = to_exchange(traces[0].clone(), origin(0));
        assert_eq!(e.source, Source::Tap);
        assert_eq!(e.time, "2026-11-25T11:55:08.123456Z");
        let rq = e.request.as_ref().unwrap();
        assert_eq!(rq.method.as_deref(), Some("POST"));
        assert_eq!(rq.path.as_deref(), Some("/cart?x=1"));
        assert_eq!(rq.authority.as_deref(), Some("shop:9080"));
        assert_eq!(rq.body, [0, 0xff, b'a']);
        assert_eq!(rq.body_size, 3);
        assert!(!rq.body_truncated);
        let h = rq.headers.as_ref().unwrap();
        assert_eq!(h["set-thing"], ["a", "b"]);
        assert_eq!(h["x-raw"], ["\u{fffd}"]);
        let rs = e.response.as_ref().unwrap();
        assert_eq!(rs.status, Some(200));
        assert!(rs.body_truncated);
        assert!(rs
            .truncated_reason
            .as_ref()
            .unwrap()
            .contains("max_buffered_tx_bytes"));
        assert_eq!(rs.trailers.as_ref().unwrap()["grpc-status"], ["0"]);
        assert!(e.complete && e.warnings.is_empty());

        let e = to_exchange(traces[1].clone(), origin(1));
        assert_eq!(
            e.time, "2027-01-15T08:00:00.000000Z",
            "receive time without Envoy's"
        );
        assert!(!e.complete);
        assert_eq!(e.log.offset, 1);
        assert_eq!(e.warnings.len(), 1);
        assert_eq!(e.request.unwrap().body_size, 0);
    }

    #[test]
    fn bad_and_unsupported_traces_are_errors() {
        assert!(matches!(
            parse_json_traces(b"{\"http_streamed_trace_segment\": {\"trace_id\": \"1\"}}"),
            Err(TraceError::Unsupported(_))
        ));
        assert!(matches!(
            parse_json_traces(b"{\"http_buffered_trace\": {"),
            Err(TraceError::Invalid(_))
        ));
        assert!(matches!(
            parse_json_traces(
                b"{\"http_buffered_trace\": {\"request\": {\"body\": {\"as_bytes\": \"!!\"}}}}"
            ),
            Err(TraceError::Invalid(_))
        ));
        assert!(matches!(
            parse_json_traces(b"[1]"),
            Err(TraceError::Invalid(_))
        ));
        assert!(parse_proto_trace(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn proto_traces_read_like_json_ones() {
        use prost::Message as _;
        let wrapper = pb::TraceWrapper {
            trace: Some(pb::trace_wrapper::Trace::HttpBufferedTrace(
                pb::HttpBufferedTrace {
                    request: Some(pb::http_buffered_trace::Message {
                        headers: vec![envoy_types::pb::envoy::config::core::v3::HeaderValue {
                            key: ":method".into(),
                            value: "PUT".into(),
                            ..Default::default()
                        }],
                        body: Some(pb::Body {
                            truncated: true,
                            body_type: Some(pb::body::BodyType::AsBytes(vec![0, 1, 2])),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let trace = parse_proto_trace(&wrapper.encode_to_vec()).unwrap();
        let rq = trace.request.unwrap();
        assert_eq!(rq.headers, [(":method".to_string(), "PUT".to_string())]);
        assert_eq!(rq.body.as_deref(), Some(&[0u8, 1, 2][..]));
        assert!(rq.truncated);
        let mut two = wrapper.encode_length_delimited_to_vec();
        two.extend(wrapper.encode_length_delimited_to_vec());
        assert_eq!(parse_proto_delimited_traces(&two).unwrap().len(), 2);
    }

    #[test]
    fn a_stream_of_traces_is_split_whatever_the_frames() {
        let mut stream = TWO_TRACES.as_bytes().to_vec();
        stream.extend_from_slice(b"\n  ");
        for frame_size in [1, 7, 64, stream.len()] {
            let mut split = JsonTraceStream::new(1 << 20);
            let mut traces = Vec::new();
            for frame in stream.chunks(frame_size) {
                traces.extend(split.push(frame).unwrap());
            }
            assert_eq!(traces.len(), 2, "frames of {frame_size}");
            assert!(traces.iter().all(Result::is_ok));
            assert!(split.buf.iter().all(u8::is_ascii_whitespace));
        }
        let mut split = JsonTraceStream::new(1 << 20);
        let skipped = split
            .push(b"{\"http_streamed_trace_segment\": {}}{\"http_buffered_trace\": {}}")
            .unwrap();
        assert!(matches!(skipped[0], Err(TraceError::Unsupported(_))));
        assert!(skipped[1].is_ok());
        assert!(JsonTraceStream::new(1 << 20).push(b"<html>}").is_err());
        let mut small = JsonTraceStream::new(10);
        assert!(small
            .push(b"{\"http_buffered_trace\": {\"request\"")
            .is_err());
    }

    #[test]
    fn ids_depend_on_every_part() {
        let a = trace_id(&[b"ab", b"c"]);
        assert_eq!(a.len(), 32);
        assert_ne!(a, trace_id(&[b"a", b"bc"]));
        assert_eq!(a, trace_id(&[b"ab", b"c"]));
    }
}
